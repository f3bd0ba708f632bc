package credentials

import "time"

// Test hooks, visible to this package's external tests only.

// WithClock makes a SessionCache read time from now.
func WithClock(now func() time.Time) SessionCacheOption {
	return sessionCacheOptionFunc(func(o *sessionCacheOptions) { o.now = now })
}

// WithTickChannel makes a rotator's or reloader's background loop tick
// whenever the test sends on ch, instead of on a timer.
func WithTickChannel(ch chan time.Time) ReloadOption {
	return reloadOptionFunc(func(o *reloadOptions) {
		o.newTicker = func(time.Duration) ticker { return chanTicker(ch) }
	})
}

type chanTicker chan time.Time

func (c chanTicker) C() <-chan time.Time { return c }
func (chanTicker) Stop()                 {}

// TicketKeys returns the rotator's current keys and their generation.
func TicketKeys(r *TicketKeyRotator) (keys [][32]byte, gen uint64) {
	ks := r.current()
	return ks.keys, ks.gen
}

// ParseTicketKeys exposes the key file parser.
func ParseTicketKeys(data []byte) ([][32]byte, error) { return parseTicketKeys(data) }
