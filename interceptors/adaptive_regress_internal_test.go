package interceptors

import (
	"testing"
	"time"
)

// TestGradientSteadyOverloadHoldsItsBaseline: the bench's overload (4
// slots, 2 ms work, 16 closed-loop callers with 5 ms deadlines) held for
// 50 s instead of 1. The limit settles a little above the slots, where
// the windows' mean is above the baseline but within the dead band; a
// baseline that followed those windows up (1/256 a window) rose 2 ms to
// 13 ms in 48 s, the concurrency "served" (calls in their handler,
// queued ones included) rose with it and held the limit up: 6 at 5 s,
// 24 at 40 s, and the goodput fell from 99% to 0% after 30 s.
func TestGradientSteadyOverloadHoldsItsBaseline(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	for seed := range uint64(3) {
		sc := simScenario{slots: slots, methods: []simMethod{{work: uniform(work)}}, cfg: adaptiveCfg(),
			groups: []simGroup{{n: 1, dl: 5 * time.Millisecond, think: 50 * time.Microsecond},
				{n: 15, dl: 5 * time.Millisecond, think: 50 * time.Microsecond, from: 300 * time.Millisecond}},
			d: 50 * time.Second, measure: 40 * time.Second, seed: seed}
		r := simRun(sc)
		if got := r.goodput / capacity; got < 0.9 || r.maxLimit > 2*slots {
			t.Errorf("seed %d: 40 to 50 s into a 4x overload, goodput %.0f%% of capacity and the limit %d to %d; want at least 90%% and at most %d",
				seed, 100*got, r.minLimit, r.maxLimit, 2*slots)
		}
	}
}
