package interceptors

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGradientConcurrentSamplers: goroutines sample the adaptive limit
// at once (several methods, calls cut short and not, in flight from 1 to
// 60), on a shared virtual clock that crosses many windows and a probe
// interval, while others give up stale probes, so that windows close,
// early closes fire and probes start and end under the race detector.
// Every limit returned stays within MinLimit and MaxLimit, and no
// method's window count goes negative.
func TestGradientConcurrentSamplers(t *testing.T) {
	cfg := adaptiveCfg()
	g := newGradient(cfg)
	sts := []*serviceTime{{}, {}, {}}
	var clock atomic.Int64
	var bad, moves, probes atomic.Int64
	const workers, each = 8, 4000
	step := int64(probeInterval) * 2 / (workers * each) // the run spans two probe intervals
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				now := clock.Add(step)
				st := sts[(w+i)%len(sts)]
				n := int64(1 + (i*7+w)%60)
				took := time.Duration(1+i%5) * time.Millisecond * time.Duration(1+n/8)
				l, moved := g.sample(st, took, i%9 == 0, now, n)
				if moved {
					moves.Add(1)
					if g.probing.Load() {
						probes.Add(1)
					}
				}
				if moved && (l < int64(cfg.MinLimit) || l > int64(cfg.MaxLimit)) {
					bad.Add(1)
				}
				if i%50 == 0 {
					if l, moved := g.abandonStaleProbe(now); moved && (l < int64(cfg.MinLimit) || l > int64(cfg.MaxLimit)) {
						bad.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	// How often the limit moved, and how many of those moves started a
	// probe, depends on how the goroutines interleave (a window's closer
	// takes a TryLock): the test's assertions are the invariants below, and
	// the counts only say what this run exercised.
	t.Logf("the limit moved %d times, %d of them into a probe", moves.Load(), probes.Load())
	if moves.Load() == 0 {
		t.Errorf("the limit never moved: the run closed no window")
	}
	if n := bad.Load(); n > 0 {
		t.Errorf("%d limits outside %d to %d", n, cfg.MinLimit, cfg.MaxLimit)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.limit < float64(cfg.MinLimit) || g.limit > float64(cfg.MaxLimit) || math.IsNaN(g.limit) || math.IsNaN(g.served) {
		t.Errorf("limit %v, served %v; want a number within %d to %d", g.limit, g.served, cfg.MinLimit, cfg.MaxLimit)
	}
	for i, st := range sts {
		if st.gN.Load() < 0 || st.gSum.Load() < 0 || st.gSq.Load() < 0 || math.IsNaN(st.gVar) {
			t.Errorf("method %d: window n %d, sum %d, squares %d, variance %v; want none negative", i, st.gN.Load(), st.gSum.Load(), st.gSq.Load(), st.gVar)
		}
	}
}
