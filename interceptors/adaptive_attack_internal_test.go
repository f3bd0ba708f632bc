package interceptors

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// simModes runs sc with the adaptive limit, a fixed limit of fixed and no
// limit, on the same seeded calls.
func simModes(sc simScenario, fixed int) (ad, fx, none simResult) {
	sc.fixed = 0
	ad = simRun(sc)
	sc.fixed = fixed
	fx = simRun(sc)
	sc.fixed = -1
	none = simRun(sc)
	return ad, fx, none
}

func simLine(name string, capacity float64, r simResult) string {
	lim := fmt.Sprintf("limit %d..%d, %d moves", r.minLimit, r.maxLimit, r.moves)
	if r.maxLimit > 1<<40 {
		lim = "no limit"
	}
	return fmt.Sprintf("%-8s goodput %5.1f%% (ok %d, shed %d, late %d), %s", name, 100*r.goodput/capacity, r.ok, r.shed, r.late, lim)
}

func adaptiveCfg() ShedderConfig {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	return cfg
}

// TestGradientAgainstFixedAndNone runs the adaptive limit, a fixed limit
// sized right (the 4 slots; 100 where nothing overloads) and no limit on
// the same simulated calls: 4 slots, 2 ms of work unless said, callers
// closed-loop (50 µs between calls, 1 ms back-off after a failure).
//   - Under a steady 2x, 4x or 10x overload (5 ms deadlines), it keeps at
//     least 95% of capacity, as much as the fixed limit, moving between 5
//     and 6, and without a limit the goodput is 0 from 4x on.
//   - Not overloaded (3 callers; a slow method's bursts beside a fast one;
//     a cache's method, one miss of 15 ms in ten hits of 100 µs; callers
//     that come and go; 30 callers waiting 10 ms on a dependency), it
//     sheds nothing and serves what no limit serves.
//   - Bursts of 1.5x capacity for 5 ms every 50 ms, with 50 ms deadlines,
//     which no limit serves in time, are the gradient's price: the queue
//     each burst builds doubles the latency, and it sheds about 7% of
//     the calls (it cannot know the deadlines are long).
//   - Beside 16 honest callers at 4x, 16 more with 1 ms deadlines, none,
//     or flooding a method that fails in 10 µs, it keeps as much as the
//     fixed limit; started into a 10x overload, or 62 s into a 4x one (a
//     probe at 60 s), too.
//
// go test -run TestGradientAgainstFixedAndNone -v ./interceptors/ prints
// every side's numbers.
func TestGradientAgainstFixedAndNone(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	one := []simMethod{{work: uniform(work)}}
	closed := func(n int, dl time.Duration, from time.Duration) simGroup {
		return simGroup{n: n, dl: dl, think: 50 * time.Microsecond, from: from}
	}
	quiet := closed(1, 5*time.Millisecond, 0)
	honest := closed(16, 5*time.Millisecond, 300*time.Millisecond)
	hitMiss := simMethod{work: func(r *rand.Rand, _ time.Duration) time.Duration {
		if r.Float64() < 0.1 {
			return 15 * time.Millisecond
		}
		return 100 * time.Microsecond
	}}
	type want struct {
		goodput  float64 // at least, share of capacity
		vsFixed  float64 // at least the fixed limit's goodput minus this share of capacity
		vsNone   float64 // at least this share of no limit's OK calls
		noShed   bool
		maxLimit int64 // 0: any
	}
	for _, tc := range []struct {
		name  string
		sc    simScenario
		fixed int
		want  want
	}{
		{"2x", simScenario{methods: one, groups: []simGroup{quiet, closed(7, 5*time.Millisecond, 300*time.Millisecond)}}, slots, want{goodput: 0.95, vsFixed: 0.01, maxLimit: 8}},
		{"4x", simScenario{methods: one, groups: []simGroup{quiet, closed(15, 5*time.Millisecond, 300*time.Millisecond)}}, slots, want{goodput: 0.95, vsFixed: 0.01, maxLimit: 8}},
		{"10x", simScenario{methods: one, groups: []simGroup{quiet, closed(39, 5*time.Millisecond, 300*time.Millisecond)}}, slots, want{goodput: 0.95, vsFixed: 0.01, maxLimit: 8}},
		{"3 callers", simScenario{methods: one, groups: []simGroup{closed(3, 5*time.Millisecond, 0)}}, 100, want{vsNone: 0.999, noShed: true}},
		{"slow-method bursts", simScenario{methods: []simMethod{{work: uniform(work)}, {work: uniform(20 * time.Millisecond)}},
			groups: []simGroup{{n: 2, dl: 50 * time.Millisecond, think: time.Millisecond}},
			bursts: []simBurst{{rate: 400, method: 1, dl: 100 * time.Millisecond, period: 200 * time.Millisecond, len: 10 * time.Millisecond, phase: 300 * time.Millisecond}}}, 100, want{vsNone: 0.999, noShed: true}},
		{"cache hits and misses", simScenario{methods: []simMethod{hitMiss}, groups: []simGroup{{n: 3, dl: 50 * time.Millisecond, think: 200 * time.Microsecond}}}, 100, want{vsNone: 0.999, noShed: true}},
		{"callers come and go", simScenario{methods: one, groups: []simGroup{closed(1, 20*time.Millisecond, 0),
			{n: 3, dl: 20 * time.Millisecond, think: 50 * time.Microsecond, from: time.Second, to: 2 * time.Second},
			{n: 3, dl: 20 * time.Millisecond, think: 50 * time.Microsecond, from: 3 * time.Second, to: 4 * time.Second}}}, 100, want{vsNone: 0.999, noShed: true}},
		{"30 callers on a dependency", simScenario{methods: []simMethod{{work: uniform(10 * time.Millisecond), wait: true}},
			groups: []simGroup{closed(30, 50*time.Millisecond, 0)}}, 100, want{vsNone: 0.999, noShed: true}},
		{"bursts 1.5x for 5 ms every 50 ms", simScenario{methods: one, groups: []simGroup{{n: 1, dl: 50 * time.Millisecond, think: time.Millisecond}},
			bursts: []simBurst{{rate: 1.5 * capacity, dl: 50 * time.Millisecond, period: 50 * time.Millisecond, len: 5 * time.Millisecond, phase: 300 * time.Millisecond}}}, 100, want{vsNone: 0.9}},
		{"4x and 1 ms deadlines", simScenario{methods: one, groups: []simGroup{quiet, honest,
			{n: 16, dl: time.Millisecond, honour: true, think: 50 * time.Microsecond, backoff: 50 * time.Microsecond, from: 300 * time.Millisecond}}, d: 2 * time.Second}, slots, want{vsFixed: 0}},
		{"4x and no deadlines", simScenario{methods: one, groups: []simGroup{quiet, honest, closed(16, 0, 300*time.Millisecond)}}, slots, want{goodput: 0.95, vsFixed: 0.01}},
		{"4x and a failing method flooded", simScenario{methods: []simMethod{{work: uniform(work)}, {work: uniform(10 * time.Microsecond), fails: true}},
			groups: []simGroup{quiet, honest, {n: 16, method: func(*rand.Rand) int { return 1 }, dl: 5 * time.Millisecond, think: 10 * time.Microsecond, backoff: 10 * time.Microsecond, from: 300 * time.Millisecond}}, d: 2 * time.Second},
			slots, want{vsFixed: 0.01}},
		{"started into 10x", simScenario{methods: one, groups: []simGroup{closed(40, 5*time.Millisecond, 0)}}, slots, want{goodput: 0.95, vsFixed: 0.01}},
		{"4x for 62 s, a probe at 60 s", simScenario{methods: one, groups: []simGroup{quiet, honest}, d: 62 * time.Second}, slots, want{goodput: 0.95, vsFixed: 0.01}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := tc.sc
			sc.slots, sc.cfg, sc.measure, sc.seed = slots, adaptiveCfg(), 300*time.Millisecond, 1
			sc.d = cmp0(sc.d, 5*time.Second)
			ad, fx, none := simModes(sc, tc.fixed)
			t.Logf("\n  %s\n  %s\n  %s", simLine("adaptive", capacity, ad), simLine(fmt.Sprintf("fixed %d", tc.fixed), capacity, fx), simLine("none", capacity, none))
			w := tc.want
			if g := ad.goodput / capacity; g < w.goodput || g < fx.goodput/capacity-w.vsFixed && tc.fixed == slots {
				t.Errorf("goodput %.1f%% of capacity; want at least %.0f%% and the fixed limit's %.1f%% less %.0f%%", 100*g, 100*w.goodput, 100*fx.goodput/capacity, 100*w.vsFixed)
			}
			if float64(ad.ok) < w.vsNone*float64(none.ok) {
				t.Errorf("%d calls OK; want at least %.0f%% of the %d without a limit", ad.ok, 100*w.vsNone, none.ok)
			}
			if w.noShed && ad.shed > 0 {
				t.Errorf("%d calls shed; want none", ad.shed)
			}
			if w.maxLimit > 0 && ad.lastLimit > w.maxLimit {
				t.Errorf("the limit ends at %d; want at most %d", ad.lastLimit, w.maxLimit)
			}
		})
	}
}
