package clientconn

// NoJitter makes WithMaxConnectionAge exact, so tests can count rotations.
func NoJitter() Option { return optionFunc(func(o *options) { o.noJitter = true }) }

// TenantCredsForTest returns how many tenants' WithTLS credentials f keeps.
func TenantCredsForTest(f *Factory) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.tenants)
}
