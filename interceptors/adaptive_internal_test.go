package interceptors

import (
	"context"
	"google.golang.org/grpc/stats"
	"math"
	"testing"
	"time"
)

// TestGradientStarvationFloor drives the adaptive limit window by window
// with made-up service times (no clock, no timing): a 4-slot server whose
// work takes 2 ms, queueing beyond 4 in flight. An overload of 40 callers
// shrinks the limit to about the slots, and a burst admitted at once (40
// in flight while the first calls still end at the baseline) must not
// lift it (the concurrency served is the calls in service, not the peak
// in flight); then the work itself slows to
// 4 ms with no more calls in flight (the CPU is taken): the limit must
// stay at the concurrency the server served at baseline latency, and come
// down only slowly if the slowness lasts (a server that really lost
// capacity).
func TestGradientStarvationFloor(t *testing.T) {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	win := int64(cfg.Window)
	for _, tc := range []struct {
		name             string
		slowWindows      int
		wantMin, wantMax int64
	}{
		{"a short starvation keeps the served concurrency", 40, 4, 8},
		{"a lasting one is followed down", 600, 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGradient(cfg)
			st := &serviceTime{}
			now := int64(0)
			limit := int64(cfg.Limit)
			// window is one window of n calls in flight on 4 slots whose
			// work takes work: each call takes work × max(1, n/4), and
			// min(n, 4)/work calls end per unit of time.
			window := func(work time.Duration, n int64) {
				now += win
				took := time.Duration(float64(work) * math.Max(1, float64(n)/4))
				calls := max(int(float64(min(n, 4))*float64(win)/float64(work)), cfg.MinSamples)
				for range calls {
					if l, moved := sampleNow(g, st, took, false, now, n); moved {
						limit = l
					}
				}
			}
			window(2*time.Millisecond, 1) // unloaded: the baseline
			for range 40 {                // the overload: 40 callers
				window(2*time.Millisecond, min(limit, 40))
			}
			// A burst admitted at once: a window with 40 in flight whose
			// calls, the first to get a slot, end at the baseline (the
			// first sample closes the window before).
			for range 2 {
				now += win
				for range 50 {
					if l, moved := sampleNow(g, st, 2*time.Millisecond, false, now, 40); moved {
						limit = l
					}
				}
			}
			for range 40 {
				window(2*time.Millisecond, min(limit, 40))
			}
			if limit < 4 || limit > 8 {
				t.Fatalf("after the overload and a burst the limit is %d; want 4 to 8 (4 slots)", limit)
			}
			for range tc.slowWindows { // the work slows, in flight does not grow
				window(4*time.Millisecond, min(limit, 40))
			}
			if limit < tc.wantMin || limit > tc.wantMax {
				t.Errorf("after %d slow windows the limit is %d; want %d to %d", tc.slowWindows, limit, tc.wantMin, tc.wantMax)
			}
		})
	}
}

// lateCtx is a context whose deadline has passed but whose timer has not
// fired yet, as on a starved CPU.
type lateCtx struct {
	context.Context
	dl time.Time
}

func (c lateCtx) Deadline() (time.Time, bool) { return c.dl, true }

// TestDoneUnaryIgnoresCallsPastTheirDeadline: a call that ended after its
// deadline (its context not yet done) does not measure the service time,
// so an overload's late calls cannot raise the estimate above the
// deadlines callers send and get their calls shed after it.
func TestDoneUnaryIgnoresCallsPastTheirDeadline(t *testing.T) {
	end := time.Now()
	for _, tc := range []struct {
		name        string
		ctx         context.Context
		wantSamples int64
	}{
		{"no deadline", context.Background(), 1},
		{"ended before its deadline", lateCtx{context.Background(), end.Add(time.Millisecond)}, 1},
		{"ended at its deadline", lateCtx{context.Background(), end}, 0},
		{"ended after its deadline, timer not fired", lateCtx{context.Background(), end.Add(-time.Millisecond)}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewShedder()
			if err != nil {
				t.Fatal(err)
			}
			st := s.serviceTime("/pkg.S/M")
			s.slots.inflight.Add(1)
			s.doneUnary(tc.ctx, st, nil, 7*time.Millisecond, 0, end, false, 0)
			if got := st.samples.Load(); got != tc.wantSamples {
				t.Errorf("samples = %d, want %d", got, tc.wantSamples)
			}
			if _, n := s.InFlight(); n != 0 {
				t.Errorf("in flight = %d after the call, want 0", n)
			}
		})
	}
}

// TestGradientMixedMethods: the adaptive limit is one for all methods, and
// their service times differ by far more than any queueing. A server with
// a fast method (100 µs) and a slow one (20 ms), never queueing (each call
// takes its own time whatever else runs), serves windows of only fast
// calls, then windows with a few slow calls among them. The mix changed,
// not the server: the limit must not shrink. A real overload of the same
// mix (every call 4× slower, 40 in flight) must still shrink it.
func TestGradientMixedMethods(t *testing.T) {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	win := int64(cfg.Window)
	g := newGradient(cfg)
	now := int64(0)
	limit := int64(cfg.Limit)
	const fast, slow = 100 * time.Microsecond, 20 * time.Millisecond
	fastM, slowM := &serviceTime{}, &serviceTime{}
	// window is one window of nFast fast and nSlow slow calls, each slowed
	// by factor, n in flight.
	window := func(nFast, nSlow int, factor float64, n int64) {
		now += win
		for i := range nFast + nSlow {
			st, took := fastM, fast
			if nSlow > 0 && i%((nFast+nSlow)/nSlow) == 0 {
				st, took = slowM, slow
			}
			if l, moved := sampleNow(g, st, time.Duration(float64(took)*factor), false, now, min(n, limit)); moved {
				limit = l
			}
		}
	}
	for range 5 {
		window(200, 0, 1, 1)
	}
	for range 200 { // 10 slow calls of 20 ms in 25 ms windows: 8 in flight
		window(200, 10, 1, 9)
	}
	if limit < int64(cfg.Limit) {
		t.Fatalf("after 200 windows of the same server with a few slow calls among the fast ones, the limit is %d; want it kept at %d (nothing queued)", limit, cfg.Limit)
	}
	for range 40 { // the same mix, overloaded: every call 4× slower, 40 in flight
		window(200, 10, 4, 40)
	}
	if limit >= 40 {
		t.Errorf("after 40 overloaded windows of the same mix the limit is %d; want below the 40 in flight", limit)
	}
}

// TestGradientConverges drives the adaptive limit of a 4-slot server
// (2 ms of work, queueing beyond 4 in flight) with made-up windows, as
// TestGradientStarvationFloor does: from a starting limit far too low
// or far too high it must settle near the slots, and after the work got
// 10× slower for a while it must come back to the slots within a
// bounded number of windows once the work is fast again.
func TestGradientConverges(t *testing.T) {
	for _, tc := range []struct {
		name    string
		start   int
		callers int64
		slow    int  // windows of 10× slower work before the fast ones
		idle    bool // the first window has one call in flight
	}{
		{"from 1", 1, 8, 0, false},
		{"from 1000", 1000, 40, 0, true},
		{"from 1000 under overload", 1000, 40, 0, false},
		{"after 10x slower work", 100, 40, 200, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultShedderConfig()
			cfg.Adaptive, cfg.Limit, cfg.MaxLimit = true, tc.start, 1000
			win := int64(cfg.Window)
			g := newGradient(cfg)
			st := &serviceTime{}
			now, limit := int64(0), int64(cfg.Limit)
			callers := int64(1)
			window := func(work time.Duration) {
				now += win
				n := min(limit, callers)
				took := time.Duration(float64(work) * math.Max(1, float64(n)/4))
				calls := max(int(float64(min(n, 4))*float64(win)/float64(work)), cfg.MinSamples)
				for range calls {
					if l, moved := sampleNow(g, st, took, false, now, n); moved {
						limit = l
					}
				}
			}
			if !tc.idle {
				callers = tc.callers
			}
			window(2 * time.Millisecond)
			callers = tc.callers
			for i := 0; i < 16 && g.probing.Load(); i++ {
				// The probe that follows the first window, at the fast
				// work: the slower work comes after it. A probe while the
				// work is 10x slower sets the baseline there (as it must,
				// for a backend slower for good), and the windows after it
				// bring it down only to what they see queued: the limit sat
				// at 11 with a baseline of 4 ms until the next probe.
				window(2 * time.Millisecond)
			}
			if g.probing.Load() {
				t.Fatal("the probe after the first window did not end in 16 windows")
			}
			for range tc.slow {
				window(20 * time.Millisecond)
			}
			settled := -1
			for i := range 200 {
				window(2 * time.Millisecond)
				if limit >= 4 && limit <= 10 && settled < 0 {
					settled = i
				}
			}
			if settled < 0 || limit < 4 || limit > 10 {
				t.Fatalf("after 200 windows of fast work the limit is %d (first within 4 to 10 after %d windows); want it settled at 4 to 10 (4 slots)", limit, settled)
			}
			t.Logf("within 4 to 10 after %d windows; limit %d", settled+1, limit)
		})
	}
}

// TestGradientFollowsASlowerBackend: a server whose calls wait on a
// dependency (no queueing at any concurrency) at 2,500 calls/s: 5 in
// flight at 2 ms. The dependency gets 10× slower for good, so the same
// calls need 50 in flight. The gradient takes the first slow windows for
// queueing and shrinks the limit, as it should not know better; but
// within a probe interval it must have re-measured the work and let the
// limit grow back to what the calls need, instead of holding a tenth of
// it for minutes while its baseline follows 1/4096 a window.
func TestGradientFollowsASlowerBackend(t *testing.T) {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	win := int64(cfg.Window)
	g := newGradient(cfg)
	st := &serviceTime{}
	now, limit := int64(0), int64(cfg.Limit)
	const rate = 2500.0 // calls per second offered
	window := func(work time.Duration) int64 {
		now += win
		n := min(limit, int64(rate*work.Seconds()))
		for range max(int(float64(n)*float64(win)/float64(work)), cfg.MinSamples) {
			if l, moved := sampleNow(g, st, work, false, now, n); moved {
				limit = l
			}
		}
		return n
	}
	for range 40 {
		window(2 * time.Millisecond)
	}
	lowest, back := limit, -1
	windows := int(probeInterval/win) + 100
	for i := range windows {
		n := window(20 * time.Millisecond)
		lowest = min(lowest, limit)
		if n < 50 {
			back = -1
		} else if back < 0 {
			back = i + 1
		}
	}
	if back < 0 || lowest >= 50 {
		t.Fatalf("after %d windows of a 10× slower backend the limit is %d (lowest %d); want it shrunk, then back to the 50 in flight the calls need", windows, limit, lowest)
	}
	t.Logf("the limit shrank to %d, and let all 50 calls in for good from window %d of the slower backend", lowest, back)
}

// TestGradientAbandonsAProbeLongCallsBlock: a probe lowers the limit to 3
// and measures only calls admitted under it; with 50 long calls (10 s)
// admitted before it, none is admitted until they end, so the probe shed
// every request for their whole length. It gives up after 8 windows,
// whether the next event is a shed at its limit or an old call ending:
// the limit is back, and the next probe comes a probe interval later.
func TestGradientAbandonsAProbeLongCallsBlock(t *testing.T) {
	for _, via := range []string{"shed at the probe's limit", "an old call ending"} {
		t.Run(via, func(t *testing.T) {
			g, st, win, before := probingAfterFirstWindow(t)
			end := func(now int64) (int64, bool) {
				if via == "an old call ending" {
					return sampleNow(g, st, 10*time.Second, false, now, 49)
				}
				return g.abandonStaleProbe(now)
			}
			if _, moved := end(win + 7*win); moved {
				t.Fatal("the probe was given up before 8 windows")
			}
			if l, moved := end(win + 8*win); !moved || l != before {
				t.Fatalf("after 8 windows without a call at the probe's concurrency: limit %d (moved %v), want %d back", l, moved, before)
			}
			if g.probing.Load() || g.nextProbe != win+8*win+probeInterval {
				t.Errorf("probing %v, next probe at %d; want done, next at %d", g.probing.Load(), g.nextProbe, win+8*win+probeInterval)
			}
		})
	}
}

// probingAfterFirstWindow returns an adaptive limit (default config) in
// the probe that follows a first window of 1 ms calls at 50 in flight,
// its method, its Window, and the limit the probe stands in for.
func probingAfterFirstWindow(t *testing.T) (g *gradient, st *serviceTime, win, before int64) {
	t.Helper()
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	win = int64(cfg.Window)
	g = newGradient(cfg)
	st = &serviceTime{}
	for i := range cfg.MinSamples {
		sampleNow(g, st, time.Millisecond, false, win*int64(i)/int64(cfg.MinSamples), 50)
	}
	if l, moved := sampleNow(g, st, time.Millisecond, false, win, 50); !moved || l != probeConcurrency {
		t.Fatalf("after a first window with 50 in flight: limit %d (moved %v), want the probe's %d", l, moved, probeConcurrency)
	}
	return g, st, win, int64(math.Round(g.limit))
}

// sampleNow gives g a call that ended at now after took, for the tests
// that drive it call by call: it is admitted (into a probe's cohort, if
// one is admitting) as it ends, unless it began before the window did.
func sampleNow(g *gradient, st *serviceTime, took time.Duration, cut bool, now, n int64) (int64, bool) {
	var cohort int64
	if at := now - int64(took); at >= g.start.Load() {
		cohort = g.admit(at)
	}
	return g.sample(st, took, cut, now, n, cohort)
}

// TestAdaptiveCountsTheWaitFromTheTap: the adaptive limit measures an
// admitted call from the tap's admission, not from its slot, but adds at
// most the call's own handler time, and nothing once the tap's
// reservation would have lapsed (queuedBeforeSlot). On a core the
// handlers keep busy the queue forms before the interceptor, and counted
// from the slot every call looked like its baseline.
func TestAdaptiveCountsTheWaitFromTheTap(t *testing.T) {
	for _, c := range []struct {
		waited, took, want time.Duration
	}{
		{0, 2 * time.Millisecond, 2 * time.Millisecond},                                                             // not admitted by the tap
		{-time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond},                                             // clock readings out of order
		{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond},                                              // queued 1 ms
		{5 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond},                                          // at most twice the handler's time
		{reserveFor, 2 * time.Millisecond, 2 * time.Millisecond},                                                    // a lapsed reservation: a slow upload
		{reserveFor - time.Microsecond, 10 * time.Millisecond, 10*time.Millisecond + reserveFor - time.Microsecond}, // just under it
	} {
		cfg := DefaultShedderConfig()
		cfg.Adaptive = true
		s, err := NewShedder(WithShedderConfig(cfg))
		if err != nil {
			t.Fatal(err)
		}
		st := s.serviceTime("/s/M")
		st.gBase.Store(int64(time.Millisecond)) // measured: a sample counts as it is
		if !s.slots.tryAcquire(s.slots.limit.Load()) {
			t.Fatal("no slot")
		}
		s.doneUnary(context.Background(), st, nil, c.took, c.waited, time.Now(), false, 0)
		if got := time.Duration(st.gSum.Load()); st.gN.Load() != 1 || got != c.want {
			t.Errorf("waited %v, took %v: the gradient sampled %v (%d samples), want %v", c.waited, c.took, got, st.gN.Load(), c.want)
		}
	}
}

// TestAdmittedReturnsTheWaitForTheGoroutine: the interceptor learns from
// the request's reservation how long grpc-go took, after the tap admitted
// it, to begin its stream (the stats handler's Begin), and nothing for a
// request the tap did not admit, one whose Begin nobody marked (no stats
// handler), or one whose message alone came late (Begin at once).
func TestAdmittedReturnsTheWaitForTheGoroutine(t *testing.T) {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	s, err := NewShedder(WithShedderConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	h := s.StatsHandler()
	if got, _ := s.admitted(context.Background()); got != 0 {
		t.Errorf("no tap yet: admitted returned %v, want 0", got)
	}
	now := s.now()
	ctx := s.reserved.reserveRequest(context.Background(), now-int64(3*time.Millisecond)) // admitted 3 ms ago
	h.HandleRPC(ctx, &stats.InHeader{})                                                   // not Begin: no mark
	h.HandleRPC(ctx, &stats.Begin{})                                                      // its goroutine begins now
	if got, _ := s.admitted(ctx); got < 3*time.Millisecond || got > time.Second {
		t.Errorf("admitted returned %v, want the 3 ms (and a little) from the tap to Begin", got)
	}
	unmarked := s.reserved.reserveRequest(context.Background(), now-int64(3*time.Millisecond))
	if got, _ := s.admitted(unmarked); got != 0 {
		t.Errorf("no Begin marked (no stats handler): admitted returned %v, want 0", got)
	}
	late := s.reserved.reserveRequest(context.Background(), s.now())
	h.HandleRPC(late, &stats.Begin{}) // begun at once; its message may come when it likes
	if got, _ := s.admitted(late); got > time.Millisecond {
		t.Errorf("begun at once: admitted returned %v, want about 0", got)
	}
	if got, _ := s.admitted(context.Background()); got != 0 {
		t.Errorf("a request the tap did not admit: admitted returned %v, want 0", got)
	}
	if _, again := s.admitted(late); !again {
		t.Error("a reservation that arrived already: admitted said it is the first arrival, want again (installed twice)")
	}
	other, err := NewShedder(WithShedderConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	other.reserved.reserveRequest(context.Background(), other.now()) // its tap admitted one of its own
	if got, again := other.admitted(late); got != 0 || again {
		t.Errorf("another Shedder's reservation: admitted returned %v, again %v; want 0, false", got, again)
	}
}
