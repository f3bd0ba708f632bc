package interceptors

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// gradient is the Shedder's adaptive in-flight limit, driven only by the
// server's own measured service time. Samples go into atomics; the one
// request that ends a window (TryLock) moves the limit.
type gradient struct {
	tolerance  float64
	window     int64 // nanoseconds
	minSamples int64
	min, max   float64

	sum, n     atomic.Int64 // the current window: total nanoseconds, samples
	peak       atomic.Int64 // the most calls in flight seen in it
	start      atomic.Int64 // its start, Shedder.now
	baselineNs atomic.Int64 // 0 until the first window

	mu    sync.Mutex // guards limit and served; held only by the window's closer
	limit float64
	// served is the concurrency the server is known to serve without
	// queueing: the mean number of calls in service (Little's law: the
	// window's summed service time over its length) of the busiest window
	// whose latency stayed within the tolerance of the baseline. The
	// limit never shrinks below it: when latency rises with no more than
	// that in flight, the server's CPU was taken (by other processes, or
	// by the load's own cost), not queued for, and fewer admitted calls
	// would only leave capacity idle. The peak in flight cannot stand in
	// for it: a burst admitted at once makes a high peak while the
	// window's first calls still finish fast. It decays by 1/256 a window
	// while it holds the limit up, so a server that really lost capacity
	// is followed in the end (halved in about 180 windows).
	served float64
}

func newGradient(c ShedderConfig) *gradient {
	return &gradient{tolerance: c.Tolerance, window: int64(c.Window), minSamples: int64(c.MinSamples),
		min: float64(c.MinLimit), max: float64(c.MaxLimit), limit: float64(c.Limit)}
}

// sample records one admitted call that took took with n calls in flight
// (itself included); cut says its caller's deadline or cancellation ended
// it. A cut call is used only if it still took at least the baseline: a
// client's short deadline can say the server is slow only when it is.
// It returns the new limit when the window closed and the limit moved.
func (g *gradient) sample(took time.Duration, cut bool, now, n int64) (int64, bool) {
	base := g.baselineNs.Load()
	if cut && (base == 0 || int64(took) < base) {
		return 0, false
	}
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	sum := g.sum.Add(int64(took))
	cnt := g.n.Add(1)
	if cnt < g.minSamples || now-g.start.Load() < g.window && !g.queued(sum, cnt, base) || !g.mu.TryLock() {
		return 0, false
	}
	defer g.mu.Unlock()
	if cnt = g.n.Load(); cnt < g.minSamples || now-g.start.Load() < g.window && !g.queued(g.sum.Load(), cnt, base) {
		return 0, false // another request just closed it
	}
	sum, cnt, peak := g.sum.Swap(0), g.n.Swap(0), g.peak.Swap(0)
	elapsed := float64(max(now-g.start.Load(), 1))
	inService := float64(sum) / elapsed
	g.start.Store(now)
	if cnt == 0 {
		return 0, false
	}
	avg := float64(sum) / float64(cnt)
	b := float64(base)
	switch {
	case base == 0 || avg < b:
		b = avg
	case g.tolerance*b/avg >= 0.9:
		b += (avg - b) / 256 // follow a slower backend, slowly
	default:
		// A queueing window (the limit is about to shrink) says little
		// about the work itself: follow it 16 times slower still, so an
		// overload does not raise the baseline, yet a backend that really
		// got slower is followed in the end.
		b += (avg - b) / 4096
	}
	g.baselineNs.Store(max(int64(b), 1))
	old := g.limit
	switch ratio := g.tolerance * b / avg; {
	case ratio < 0.9:
		// Shrink from what was in use, not from a limit far above it (a
		// limit of 100 with 16 calls in flight says nothing), and not
		// below served.
		next := math.Min(g.limit, float64(peak)) * math.Max(ratio, 0.5)
		// Nor below the calls the server kept in service at the window's
		// throughput had each taken the baseline (Little's law on the
		// calls that ended): its real concurrency, whatever the queue in
		// front of it. Right after a shrink, the calls admitted under the
		// old limit still end late, and without this floor each early
		// window would halve the limit again for the same queue.
		next = math.Max(next, math.Min(g.limit, float64(cnt)*b/elapsed))
		if next < g.served {
			next = g.served
			g.served -= g.served / 256
		}
		g.limit = math.Max(next, g.min)
	case ratio >= 1 && float64(peak) >= g.limit/2:
		g.served = math.Max(g.served, inService)
		g.limit = math.Min(g.limit+math.Max(1, math.Sqrt(g.limit)/4), g.max)
	default: // a dead band against timing noise: the limit holds
		g.served = math.Max(g.served, inService)
	}
	if math.Round(g.limit) == math.Round(old) {
		return 0, false
	}
	return int64(math.Round(g.limit)), true
}

// earlyRatio is how far below 1 the window's gradient (tolerance ×
// baseline / mean) must fall for the window to close before its time:
// its calls queued so clearly (their mean a third above what the
// tolerance allows) that waiting out the window would only admit more
// calls into the queue. At an overload's onset the limit is still where
// the quiet traffic left it (Limit, 100 by default), every caller is
// admitted at once, and in one window of queueing all their deadlines
// pass; closing at MinSamples calls instead moves the limit in a few
// milliseconds. Timing noise does not reach this far (a window that is
// merely above the tolerance waits for its time), so only a real queue
// moves the limit sooner.
const earlyRatio = 0.75

// queued reports whether the window's cnt calls, sum nanoseconds in all,
// queued clearly enough to close it early (see earlyRatio).
func (g *gradient) queued(sum, cnt, base int64) bool {
	return base > 0 && g.tolerance*float64(base)*float64(cnt) < earlyRatio*float64(sum)
}

// aimd moves a Shedder's AIMD limit after one measured call; n is the
// calls in flight with it.
func (s *Shedder) aimd(drop bool, n int64) {
	for {
		old := s.slots.limit.Load()
		next := old
		switch {
		case drop:
			next = max(int64(float64(old)*s.cfg.BackoffRatio), int64(s.cfg.MinLimit))
		case 2*n >= old:
			next = min(old+1, int64(s.cfg.MaxLimit))
		}
		if next == old {
			return
		}
		if s.slots.limit.CompareAndSwap(old, next) {
			s.obs.LimiterLimitChanged("", ShedderKey, int(next))
			return
		}
	}
}
