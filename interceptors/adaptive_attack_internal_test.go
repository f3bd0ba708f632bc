package interceptors

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// simModes runs sc with the adaptive limit, a fixed limit of fixed and no
// limit, and returns the three results.
func simModes(sc simScenario, fixed int) (ad, fx, none simResult) {
	sc.fixed = 0
	ad = simRun(sc)
	sc.fixed = fixed
	fx = simRun(sc)
	sc.fixed = -1
	none = simRun(sc)
	return
}

func simLine(name string, capacity float64, r simResult) string {
	return fmt.Sprintf("%-9s goodput %5.1f%% ok %6d shed %6d late %6d moves %4d limit %d..%d last %d probes %d",
		name, 100*r.goodput/capacity, r.ok, r.shed, r.late, r.moves, r.minLimit, r.maxLimit, r.lastLimit, r.probes)
}

func adaptiveCfg() ShedderConfig {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	return cfg
}

// TestAttackSimSteadyOverload: 4 slots, 2 ms work, closed-loop callers
// with 5 ms deadlines at 2x, 4x, 10x, after 300 ms of one caller.
func TestAttackSimSteadyOverload(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	for _, x := range []int{2, 4, 10} {
		for _, dl := range []time.Duration{5 * time.Millisecond, 2500 * time.Microsecond} {
			for _, honour := range []bool{false, true} {
				sc := simScenario{slots: slots, methods: []simMethod{{work: uniform(work)}},
					groups: []simGroup{{n: 1, dl: dl, honour: honour, think: 50 * time.Microsecond},
						{n: x*slots - 1, dl: dl, honour: honour, think: 50 * time.Microsecond, from: 300 * time.Millisecond}},
					cfg: adaptiveCfg(), d: 5300 * time.Millisecond, measure: 1300 * time.Millisecond, seed: 1}
				ad, fx, none := simModes(sc, slots)
				t.Logf("%dx dl %v honour %v\n  %s\n  %s\n  %s", x, dl, honour, simLine("adaptive", capacity, ad),
					simLine("fixed", capacity, fx), simLine("none", capacity, none))
			}
		}
	}
	_ = rand.New
}

// TestAttackSimNotOverloaded: loads a server serves in time without any
// limit; the adaptive limit must not shed them.
func TestAttackSimNotOverloaded(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	fastSlow := []simMethod{{work: uniform(work)}, {work: uniform(20 * time.Millisecond)}}
	hitMiss := []simMethod{{work: func(r *rand.Rand, _ time.Duration) time.Duration {
		if r.Float64() < 0.1 {
			return 15 * time.Millisecond
		}
		return 100 * time.Microsecond
	}}}
	for _, tc := range []struct {
		name string
		sc   simScenario
	}{
		{"3 callers", simScenario{methods: []simMethod{{work: uniform(work)}},
			groups: []simGroup{{n: 3, dl: 5 * time.Millisecond, think: 50 * time.Microsecond}}}},
		{"bursts 1.5x 5ms/50ms", simScenario{methods: []simMethod{{work: uniform(work)}},
			groups: []simGroup{{n: 1, dl: 50 * time.Millisecond, think: time.Millisecond}},
			bursts: []simBurst{{rate: 1.5 * capacity, dl: 50 * time.Millisecond, period: 50 * time.Millisecond, len: 5 * time.Millisecond, phase: 300 * time.Millisecond}}}},
		{"slow-method bursts", simScenario{methods: fastSlow,
			groups: []simGroup{{n: 2, dl: 50 * time.Millisecond, think: time.Millisecond}},
			bursts: []simBurst{{rate: 400, method: 1, dl: 100 * time.Millisecond, period: 200 * time.Millisecond, len: 10 * time.Millisecond, phase: 300 * time.Millisecond}}}},
		{"cache hit/miss 3 callers", simScenario{methods: hitMiss,
			groups: []simGroup{{n: 3, dl: 50 * time.Millisecond, think: 200 * time.Microsecond}}}},
		{"cache hit/miss 1 caller", simScenario{methods: hitMiss,
			groups: []simGroup{{n: 1, dl: 50 * time.Millisecond, think: 200 * time.Microsecond}}}},
		{"callers come and go", simScenario{methods: []simMethod{{work: uniform(work)}},
			groups: []simGroup{{n: 1, dl: 20 * time.Millisecond, think: 50 * time.Microsecond},
				{n: 3, dl: 20 * time.Millisecond, think: 50 * time.Microsecond, from: time.Second, to: 2 * time.Second},
				{n: 3, dl: 20 * time.Millisecond, think: 50 * time.Microsecond, from: 3 * time.Second, to: 4 * time.Second}}}},
		{"dependency wait 30 callers", simScenario{methods: []simMethod{{work: uniform(10 * time.Millisecond), wait: true}},
			groups: []simGroup{{n: 30, dl: 50 * time.Millisecond, think: 50 * time.Microsecond}}}},
	} {
		sc := tc.sc
		sc.slots, sc.cfg, sc.d, sc.measure, sc.seed = slots, adaptiveCfg(), 10*time.Second, 300*time.Millisecond, 1
		ad, fx, none := simModes(sc, 100)
		t.Logf("%s\n  %s\n  %s\n  %s", tc.name, simLine("adaptive", capacity, ad), simLine("fixed100", capacity, fx), simLine("none", capacity, none))
	}
}

// TestAttackSimHostileAndProbe: hostile callers beside honest ones at 4x,
// and the probe.
func TestAttackSimHostileAndProbe(t *testing.T) {
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	honest := simGroup{n: 16, dl: 5 * time.Millisecond, think: 50 * time.Microsecond, from: 300 * time.Millisecond}
	quiet := simGroup{n: 1, dl: 5 * time.Millisecond, think: 50 * time.Microsecond}
	one := []simMethod{{work: uniform(work)}}
	failing := []simMethod{{work: uniform(work)}, {work: uniform(10 * time.Microsecond), fails: true}}
	for _, tc := range []struct {
		name string
		sc   simScenario
		d    time.Duration
	}{
		{"baseline 4x", simScenario{methods: one, groups: []simGroup{quiet, honest}}, 0},
		{"+16 callers 1ms deadlines", simScenario{methods: one, groups: []simGroup{quiet, honest,
			{n: 16, dl: time.Millisecond, honour: true, think: 50 * time.Microsecond, backoff: 50 * time.Microsecond, from: 300 * time.Millisecond}}}, 0},
		{"+16 callers cancel at 1.05x", simScenario{methods: one, groups: []simGroup{quiet, honest,
			{n: 16, cancelAfter: 2100 * time.Microsecond, honour: true, think: 50 * time.Microsecond, backoff: 50 * time.Microsecond, from: 300 * time.Millisecond}}}, 0},
		{"+16 callers no deadline", simScenario{methods: one, groups: []simGroup{quiet, honest,
			{n: 16, think: 50 * time.Microsecond, from: 300 * time.Millisecond}}}, 0},
		{"+16 callers flood failing method", simScenario{methods: failing, groups: []simGroup{quiet, honest,
			{n: 16, method: func(*rand.Rand) int { return 1 }, dl: 5 * time.Millisecond, think: 10 * time.Microsecond, backoff: 10 * time.Microsecond, from: 300 * time.Millisecond}}}, 0},
		{"started into 10x", simScenario{methods: one, groups: []simGroup{{n: 40, dl: 5 * time.Millisecond, think: 50 * time.Microsecond}}}, 0},
		{"4x for 70s (a probe)", simScenario{methods: one, groups: []simGroup{quiet, honest}}, 70 * time.Second},
	} {
		sc := tc.sc
		sc.slots, sc.cfg, sc.d, sc.measure, sc.seed = slots, adaptiveCfg(), cmp0(tc.d, 5*time.Second), 300*time.Millisecond, 1
		ad, fx, none := simModes(sc, slots)
		t.Logf("%s (ok by method %v)\n  %s\n  %s\n  %s", tc.name, ad.okByMethod, simLine("adaptive", capacity, ad), simLine("fixed4", capacity, fx), simLine("none", capacity, none))
	}
}
