package interceptors

import (
	"fmt"
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
				l, moved := sampleNow(g, st, took, i%9 == 0, now, n)
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

// TestGradientNeverLeavesItsBounds: a window whose calls began before it
// (long calls ending in a short window) makes Little's law overstate the
// calls in service, 400 here with one in flight. That figure must not
// become the concurrency the limit never shrinks below: a shrink then set
// the limit to it, above the limit it shrank from and above MaxLimit
// (TestGradientConcurrentSamplers found 4,524 with MaxLimit 1000).
func TestGradientNeverLeavesItsBounds(t *testing.T) {
	cfg := adaptiveCfg()
	cfg.Limit, cfg.MaxLimit = 10, 20
	g := newGradient(cfg)
	st := &serviceTime{}
	win := int64(cfg.Window)
	now := int64(0)
	limit := int64(cfg.Limit)
	check := func(what string) {
		t.Helper()
		if limit < int64(cfg.MinLimit) || limit > int64(cfg.MaxLimit) {
			t.Fatalf("%s: limit %d; want %d to %d", what, limit, cfg.MinLimit, cfg.MaxLimit)
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.served > float64(cfg.MaxLimit) {
			t.Fatalf("%s: served %v; want at most MaxLimit %d", what, g.served, cfg.MaxLimit)
		}
	}
	for w := range 5 { // 1 s calls, one in flight, ending 10 to a 25 ms window
		now += win
		for range cfg.MinSamples {
			if l, moved := sampleNow(g, st, time.Second, false, now, 1); moved {
				limit = l
			}
		}
		check(fmt.Sprintf("window %d of 1 s calls", w))
	}
	for w := range 20 { // then they queue: 3 s each
		now += win
		for range cfg.MinSamples {
			if l, moved := sampleNow(g, st, 3*time.Second, false, now, min(limit, 15)); moved {
				limit = l
			}
		}
		check(fmt.Sprintf("queueing window %d", w))
	}
}
