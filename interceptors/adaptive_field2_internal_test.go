package interceptors

import (
	"math/rand/v2"
	"testing"
	"time"
)

// bimodal is a method whose calls take 1 ms, one in ten 20 ms (mean
// 2.9 ms), on a server where they never queue (they wait on a
// dependency).
var bimodal = simMethod{wait: true, work: func(r *rand.Rand, _ time.Duration) time.Duration {
	if r.Float64() < 0.1 {
		return 20 * time.Millisecond
	}
	return time.Millisecond
}}

// TestGradientProbeKeepsANoisyMethodsBaseline drives the adaptive limit
// window by window (no clock): a first window of 8 callers of the
// bimodal method, whose baseline it sets to their 2.9 ms mean; a probe
// (it ran above the probe's concurrency) whose 25 calls happen to be all
// fast (a draw of one in 14 at 25 calls); then windows of the same 8
// callers. The probe set the baseline to 1 ms, its mean, down whatever its
// noise, where every other window moves it down only by what is beyond two
// standard errors: every later window then looked 2.9× queued, the
// baseline could not rise above the probe's concurrency, and the limit
// fell to 8 × 0.5 and stayed there on a server that never queued.
func TestGradientProbeKeepsANoisyMethodsBaseline(t *testing.T) {
	cfg := adaptiveCfg()
	g := newGradient(cfg)
	st := &serviceTime{}
	win := int64(cfg.Window)
	now := int64(0)
	limit := int64(cfg.Limit)
	sample := func(took time.Duration, n int64) {
		if l, moved := sampleNow(g, st, took, false, now, n); moved {
			limit = l
		}
	}
	window := func(n int64) { // 70 calls of 8 in flight, one in ten slow, spread evenly
		now += win
		for i := range 70 {
			took := time.Millisecond
			if i%10 == 5 {
				took = 20 * time.Millisecond
			}
			sample(took, min(n, limit))
		}
	}
	window(8)
	if !g.probing.Load() {
		t.Fatalf("no probe after a first window above the probe's concurrency")
	}
	now += 2 * win
	for range 25 { // the probe's window: all fast
		sample(time.Millisecond, 3)
	}
	if g.probing.Load() {
		t.Fatalf("the probe's window did not close")
	}
	if b := time.Duration(st.gBase.Load()); b < 2*time.Millisecond {
		t.Errorf("after a probe of 25 fast calls the baseline is %v; want its 2.9 ms mean kept (the probe's draw is within the method's noise)", b)
	}
	lowest := limit
	for range 40 {
		window(8)
		lowest = min(lowest, limit)
	}
	if lowest < 8 {
		t.Errorf("8 callers of a method that never queues: the limit fell to %d; want at least 8", lowest)
	}
}

// TestGradientBimodalMethodIdleServer runs the bimodal method on a server
// that never queues in virtual time, 2 to 32 closed-loop callers, 16 seeds
// each: plain grpc-go sheds nothing, and after the first 300 ms nor may the
// adaptive limit. A window counts the calls that end in it, and a short one
// that began with the calls (the first window, the one after a probe) or
// that counted only the calls admitted in it (a probe's) saw few of the
// 20 ms calls: its mean was low, and a baseline can only be lowered from
// there, or raised in windows at the probe's concurrency. Of 192 such runs
// (32 seeds), 27 shed after 300 ms, the worst 70% of its calls, the limit
// held under the callers until the next probe, 60 s on. The probe now
// measures a cohort (the calls admitted in it, each to its end), follows
// every first window, and the window after it lowers no baseline: none
// shed. The start's price: the probe holds 3 calls in flight for a Window
// and its cohort's longest call (42 to 58 ms, where it was a Window and
// the MinSamples-th call's end), which sheds 10-32% of the requests of
// the first 300 ms above 3 callers (a shed caller asks again 1 ms on),
// none at up to 3.
func TestGradientBimodalMethodIdleServer(t *testing.T) {
	for _, callers := range []int{2, 3, 4, 8, 16, 32} {
		worstStart, longest := 0.0, time.Duration(0)
		for seed := range uint64(16) {
			sc := simScenario{slots: 1000, methods: []simMethod{bimodal}, cfg: adaptiveCfg(),
				groups: []simGroup{{n: callers, think: 100 * time.Microsecond}},
				d:      3 * time.Second, measure: 300 * time.Millisecond, seed: seed}
			r := simRun(sc)
			if r.shed > 0 {
				t.Errorf("%d callers, seed %d: after 300 ms, %d of %d calls shed, the limit %d to %d; want none shed (a server that never queues)",
					callers, seed, r.shed, r.sent, r.minLimit, r.maxLimit)
			}
			start := float64(r.shedBefore) / float64(r.sentBefore)
			if callers <= probeConcurrency && r.shedBefore > 0 {
				t.Errorf("%d callers, seed %d: %d of %d requests shed in the first 300 ms; want none at %d callers or fewer (the probe's concurrency)",
					callers, seed, r.shedBefore, r.sentBefore, probeConcurrency)
			}
			if most := 3 * sc.cfg.Window; r.probing > most {
				t.Errorf("%d callers, seed %d: probing for %v; want at most %v (a Window and the cohort's longest call, 20 ms)", callers, seed, r.probing, most)
			}
			worstStart, longest = max(worstStart, start), max(longest, r.probing)
		}
		t.Logf("%d callers: none shed after 300 ms; in the first 300 ms at worst %.1f%% of the requests (a shed caller asks again 1 ms on), probing %v", callers, 100*worstStart, longest)
	}
}

// TestDeadlineProbesBackOffWhileTheyFail: of the requests the deadline
// shed would refuse, one in ten goes through as a probe while probes
// succeed (a quick kind of request beside a slow one), and ever fewer
// while they fail (a flood of hopeless deadlines): each failed probe
// doubles the refusals before the next, up to maxDeadlineProbeGap.
func TestDeadlineProbesBackOffWhileTheyFail(t *testing.T) {
	for _, tc := range []struct {
		name    string
		succeed bool
		want    int
	}{{"probes that succeed", true, 100}, {"probes that fail", false, 7}} { // failing: at 10, 20, 40, ..., 640
		st := &serviceTime{}
		st.low.Store(int64(100 * time.Millisecond))
		probes := 0
		for range 1000 {
			if st.deadlineProbe() {
				probes++
				if tc.succeed {
					st.proved(100 * time.Millisecond) // as slow as the estimate: it stays
				} else {
					st.probeFailed()
				}
			}
		}
		if probes != tc.want {
			t.Errorf("%s: %d probes in 1000 refusals, want %d", tc.name, probes, tc.want)
		}
	}
}
