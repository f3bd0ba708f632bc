package clientconn

// NoJitter makes WithMaxConnectionAge exact, so tests can count rotations.
func NoJitter() Option { return optionFunc(func(o *options) { o.noJitter = true }) }

// TenantCredsForTest returns how many tenants' WithTLS credentials f keeps.
func TenantCredsForTest(f *Factory) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tenants)
}

// PolicyStateForTest returns how many service-config documents and
// (document, tenant) policy states f keeps.
func PolicyStateForTest(f *Factory) (configs, policies int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.configs), len(f.policies)
}
