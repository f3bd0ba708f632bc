package interceptors

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSlotsNoLostWakeup: many requests acquire and release a small limit
// at once, with waits far longer than the test; every one gets a slot (a
// lost wakeup would leave one waiting its whole 10 s, past the test's
// bound), no more than the limit ever hold one, and nothing is left
// queued or held (in two rounds).
func TestSlotsNoLostWakeup(t *testing.T) {
	for round := range 2 {
		var s slots
		s.limit.Store(3)
		var held, peak atomic.Int64
		var wg sync.WaitGroup
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 200 {
					if res := s.acquire(ctx, s.limit.Load(), 64, func() time.Duration { return 10 * time.Second }); res != waitGranted {
						t.Errorf("round %d: acquire = %d, want granted", round, res)
						return
					}
					n := held.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					held.Add(-1)
					s.free()
					s.dispatchIfWaiting()
				}
			}()
		}
		wg.Wait()
		cancel()
		if p := peak.Load(); p > 3 {
			t.Errorf("round %d: %d held a slot at once, limit 3", round, p)
		}
		if n, q := s.inflight.Load(), s.queued(); n != 0 || q != 0 || s.waiters.Load() != 0 {
			t.Errorf("round %d: after: %d in flight, %d queued, %d waiters, want none", round, n, q, s.waiters.Load())
		}
	}
}
