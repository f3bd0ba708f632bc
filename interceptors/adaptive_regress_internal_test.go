package interceptors

import (
	"math/rand/v2"
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
	for seed := range uint64(2) {
		sc := simScenario{slots: slots, methods: []simMethod{{work: uniform(work)}}, cfg: adaptiveCfg(),
			groups: []simGroup{{n: 1, dl: 5 * time.Millisecond, think: 50 * time.Microsecond},
				{n: 15, dl: 5 * time.Millisecond, think: 50 * time.Microsecond, from: 300 * time.Millisecond}},
			d: 45 * time.Second, measure: 35 * time.Second, seed: seed}
		r := simRun(sc)
		if got := r.goodput / capacity; got < 0.9 || r.maxLimit > 2*slots {
			t.Errorf("seed %d: 35 to 45 s into a 4x overload, goodput %.0f%% of capacity and the limit %d to %d; want at least 90%% and at most %d",
				seed, 100*got, r.minLimit, r.maxLimit, 2*slots)
		}
	}
}

// TestGradientStartedIntoAnOverloadWithDeadlines: a Shedder started into
// the bench's 10x overload (a deploy at peak): 40 callers with 5 ms
// deadlines from the first instant, on 4 slots of 2 ms work. The first 8
// calls end in time; every later one waited past its deadline and is cut
// short, and a cut call is used only if it took at least its method's
// baseline, of which there was none yet: no window ever closed, the limit
// stayed at its start of 100 and the goodput at 0%, with handlers that
// return when their context ends or not.
func TestGradientStartedIntoAnOverloadWithDeadlines(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	for _, honour := range []bool{false, true} {
		sc := simScenario{slots: slots, methods: []simMethod{{work: uniform(work)}}, cfg: adaptiveCfg(),
			groups: []simGroup{{n: 40, dl: 5 * time.Millisecond, honour: honour, think: 50 * time.Microsecond}},
			d:      2 * time.Second, measure: 500 * time.Millisecond, seed: 1}
		if r := simRun(sc); r.goodput/capacity < 0.9 {
			t.Errorf("handlers return at their context's end: %v: 0.5 to 2 s after the start, goodput %.0f%% of capacity, the limit %d to %d; want at least 90%%",
				honour, 100*r.goodput/capacity, r.minLimit, r.maxLimit)
		}
	}
}

// TestGradientCutCallsStartOneProbeAtMost: calls cut short before any
// baseline start the probe once, before the first window closes; after
// it, a client that cuts every call of a method never measured (no
// baseline) cannot start one.
func TestGradientCutCallsStartOneProbeAtMost(t *testing.T) {
	cfg := adaptiveCfg()
	win := int64(cfg.Window)
	for _, tc := range []struct {
		name      string
		measured  bool // a window closed first
		wantProbe bool
	}{
		{"before any window", false, true},
		{"after a window", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGradient(cfg)
			st, other := &serviceTime{}, &serviceTime{}
			now := int64(0)
			if tc.measured {
				for range cfg.MinSamples {
					now += win / int64(cfg.MinSamples)
					sampleNow(g, st, time.Millisecond, false, now, 1)
				}
				now += win
				sampleNow(g, st, time.Millisecond, false, now, 1)
			}
			probed := false
			for range 10 * cfg.MinSamples {
				now += win / 10
				if _, moved := sampleNow(g, other, 5*time.Millisecond, true, now, 2); moved && g.probing.Load() {
					probed = true
				}
			}
			if probed != tc.wantProbe {
				t.Errorf("cut calls of a method with no baseline started a probe: %v, want %v", probed, tc.wantProbe)
			}
		})
	}
}

// TestGradientHighVarianceMethodIsNotQueueing: a method behind a cache
// answers hits in 100 µs and misses (one in ten) in 15 ms, on 4 slots,
// with 1 or 3 closed-loop callers: it never queues. A window whose calls
// were all hits (one in 14 at 25 calls) set the method's baseline to a
// hit's time, every later window with its usual misses looked 10x
// queued, and the limit fell to 1: with 3 callers half their calls were
// shed (7,272 OK in 10 s where plain grpc-go served 15,615).
func TestGradientHighVarianceMethodIsNotQueueing(t *testing.T) {
	hitMiss := simMethod{work: func(r *rand.Rand, _ time.Duration) time.Duration {
		if r.Float64() < 0.1 {
			return 15 * time.Millisecond
		}
		return 100 * time.Microsecond
	}}
	for _, callers := range []int{1, 3} {
		for seed := range uint64(3) {
			sc := simScenario{slots: 4, methods: []simMethod{hitMiss}, cfg: adaptiveCfg(),
				groups: []simGroup{{n: callers, dl: 50 * time.Millisecond, think: 200 * time.Microsecond}},
				d:      10 * time.Second, measure: 300 * time.Millisecond, seed: seed}
			r := simRun(sc)
			if r.shed > 0 || r.minLimit < int64(callers) {
				t.Errorf("%d callers, seed %d: %d of %d calls shed, the limit %d to %d; want none shed and the limit at least %d",
					callers, seed, r.shed, r.sent, r.minLimit, r.maxLimit, callers)
			}
		}
	}
}

// TestGradientCutCallsSayOnlySlow: a call cut short by its caller is a
// lower bound of its time, and was used as its time once it took its
// method's baseline: under the bench's 4x overload, callers whose
// deadlines are 1.3x the work (2.6 ms on 2 ms), with handlers that return
// when their context ends, had every queued call measured at 2.6 ms,
// within the dead band: the limit never left 100 and no call was served
// in time (a fixed limit of 4 serves 98%). And callers that cancel every
// call 1.05x the work after it began, beside honest ones, held the limit
// at 17 to 21 on 4 slots. A cut call is used only when it took longer
// than the tolerance allows, and then as a clearly queued one: the limit
// settles at 5 to 6 in both. With deadlines that tight the goodput is
// 75%, not a fixed limit's 98%: the tolerance (25%) lets a queue of a
// call or two form, which such deadlines do not survive.
func TestGradientCutCallsSayOnlySlow(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	honest := simGroup{n: 15, dl: 5 * time.Millisecond, think: 50 * time.Microsecond, from: 300 * time.Millisecond}
	for _, tc := range []struct {
		name        string
		groups      []simGroup
		wantGoodput float64
	}{
		{"deadlines 1.3x the work", []simGroup{{n: 1, dl: 2600 * time.Microsecond, honour: true, think: 50 * time.Microsecond},
			{n: 15, dl: 2600 * time.Microsecond, honour: true, think: 50 * time.Microsecond, from: 300 * time.Millisecond}}, 0.7},
		{"cancels at 1.05x the work", []simGroup{{n: 1, dl: 5 * time.Millisecond, think: 50 * time.Microsecond}, honest,
			{n: 16, cancelAfter: 2100 * time.Microsecond, honour: true, think: 50 * time.Microsecond, backoff: 50 * time.Microsecond, from: 300 * time.Millisecond}}, 0},
	} {
		for seed := range uint64(2) {
			sc := simScenario{slots: slots, methods: []simMethod{{work: uniform(work)}}, cfg: adaptiveCfg(), groups: tc.groups,
				d: 5 * time.Second, measure: 2 * time.Second, seed: seed}
			r := simRun(sc)
			if r.goodput/capacity < tc.wantGoodput || r.maxLimit > 2*slots {
				t.Errorf("%s, seed %d: goodput %.0f%% of capacity, the limit %d to %d; want at least %.0f%% and at most %d",
					tc.name, seed, 100*r.goodput/capacity, r.minLimit, r.maxLimit, 100*tc.wantGoodput, 2*slots)
			}
		}
	}
}
