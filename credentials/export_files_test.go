package credentials

// Test hooks for the file readers, visible to this package's external
// tests only.

// WithBeforeOpen calls fn on the reading goroutine before each file is
// opened; a test blocks in it to stand for a hung mount.
func WithBeforeOpen(fn func(path string)) ReloadOption {
	return reloadOptionFunc(func(o *reloadOptions) { o.fileHooks.beforeOpen = fn })
}

// WithSettle replaces the settle wait between the two readings of a
// changed file by fn, so a test can change the file in between, or not
// wait at all.
func WithSettle(fn func(quit <-chan struct{}) error) ReloadOption {
	return reloadOptionFunc(func(o *reloadOptions) { o.fileHooks.settle = fn })
}

// NoSettle skips the settle wait (both readings are still taken).
func NoSettle() ReloadOption {
	return WithSettle(func(<-chan struct{}) error { return nil })
}
