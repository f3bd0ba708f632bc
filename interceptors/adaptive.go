package interceptors

import (
	"cmp"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// gradient is the Shedder's adaptive in-flight limit, driven only by the
// server's own measured service time. Samples go into atomics; the one
// request that ends a window (TryLock) moves the limit.
//
// The limit is one for all methods, but the baseline is per method
// (serviceTime.gBase): a window's mean is compared with the mean its mix
// of methods would have at their baselines. With one baseline for all, a
// server whose methods differ (a fast one, and a slow one) took a window
// with a few more slow calls for queueing, and a mix that moved without
// any queueing drove the limit down to MinLimit on a server that was
// never overloaded (TestGradientMixedMethods).
//
// Every probeInterval, and after its first window, it re-measures the
// baselines at low concurrency (probeConcurrency calls in flight, as
// Envoy's adaptive-concurrency filter measures its minRTT), on the cohort
// of calls it admitted, each to its end (probeReady): a baseline learnt
// only from what the server happened to serve can be a queue's latency,
// and one learnt from the calls that ended in a short window is its short
// calls' (TestGradientBimodalMethodIdleServer).
// A Shedder started into an overload (a deploy at peak, a crash loop)
// took its first window's queueing for the work itself, and never shed
// (TestGradientConverges); after a backend got slower for good (a
// dependency), the baseline followed only 1/4096 a window, and the limit
// fell to 1 and stayed there while the calls needed 50
// (TestGradientFollowsASlowerBackend). Between probes a baseline rises
// only in windows that ran at no more than the probe's concurrency
// (TestGradientSteadyOverloadHoldsItsBaseline).
//
// A window's mean is as noisy as its methods' calls: each method keeps
// the variance of one call, and a window moves a baseline down, or the
// limit down, only by what is beyond two standard errors of its mean
// (TestGradientHighVarianceMethodIsNotQueueing). A call cut short by its
// caller is a lower bound of its time: it counts only as a slow call
// (TestGradientCutCallsSayOnlySlow). TestGradientAgainstFixedAndNone
// compares it with a fixed limit and none on simulated loads.
type gradient struct {
	tolerance  float64
	window     int64 // nanoseconds
	minSamples int64
	min, max   float64

	probing    atomic.Bool  // written under mu
	probeLimit atomic.Int64 // the limit while probing; written under mu

	// A probe measures a cohort: the calls admitted while admitting holds
	// (admit), each to its end, not the calls that happen to end within
	// its window (see probeReady). cohort is the probe's number, which
	// admit hands each of its calls; cohortIn counts them, cohortOut those
	// that ended.
	cohort    atomic.Int64 // written under mu
	admitting atomic.Bool
	cohortIn  atomic.Int64
	cohortOut atomic.Int64

	n          atomic.Int64 // samples in the current window, all methods
	sum        atomic.Int64 // their nanoseconds
	atBase     atomic.Int64 // their methods' baselines, summed: what they would have taken at baseline
	peak       atomic.Int64 // the most calls in flight seen in it
	start      atomic.Int64 // its start, Shedder.now
	baselineNs atomic.Int64 // the last window's mix at baseline; 0 until the first window

	mu    sync.Mutex // guards limit, served and closing; held only by the window's closer
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
	served    float64
	closing   []methodWindow // scratch for the closer
	nextProbe int64          // Shedder.now of the next probe
	// afterProbe says the current window began as a probe ended: the
	// limit was back at once, the callers the probe shed came in
	// together, and the calls that end in the window are mostly theirs,
	// their short ones. It lowers no baseline: under 32 callers of a
	// method taking 1 ms, one call in ten 20 ms, such a window took a
	// probe's 3.0 ms to 1.9 ms, and the limit held 26 to 35 and shed 16%
	// of their calls on a server that never queued.
	afterProbe bool

	// measured is set once a window closed, or the probe at start began;
	// until then unmeasured counts calls cut short (cutUnmeasured).
	measured   atomic.Bool
	unmeasured atomic.Int64

	regMu   sync.Mutex     // guards tracked; taken after mu
	tracked []*serviceTime // every method sampled once, append-only
}

// methodWindow is one method's share of a closing window.
type methodWindow struct {
	st   *serviceTime
	n    int64
	mean float64 // nanoseconds
	se   float64 // the standard error of mean, nanoseconds
}

// maxSquaredUs caps a call's time in the window's sum of squares (µs), so
// that the sum cannot overflow: a call of more than 1 s counts as 1 s
// there (its mean is exact).
const maxSquaredUs = int64(time.Second / time.Microsecond)

// probeInterval is how often the adaptive limit re-measures its
// baselines (Envoy's default min_rtt_calc_params interval).
const probeInterval = int64(60 * time.Second)

// probeConcurrency is how many calls may be in flight while it does
// (Envoy's default min_concurrency), if the limit is higher, and at least
// MinLimit.
const probeConcurrency = 3

func newGradient(c ShedderConfig) *gradient {
	return &gradient{tolerance: c.Tolerance, window: int64(c.Window), minSamples: int64(c.MinSamples),
		min: float64(c.MinLimit), max: float64(c.MaxLimit), limit: float64(c.Limit)}
}

// probeAt is the probe's concurrency at the current limit; under mu.
func (g *gradient) probeAt() int64 {
	return max(min(probeConcurrency, int64(math.Round(g.limit))), int64(g.min))
}

// startProbe lowers the limit in force to the probe's and opens its
// cohort; under mu, after g.start moved to the probe's start.
func (g *gradient) startProbe() int64 {
	l := g.probeAt()
	g.probeLimit.Store(l)
	g.cohortIn.Store(0)
	g.cohortOut.Store(0)
	g.cohort.Add(1)
	g.admitting.Store(true)
	g.probing.Store(true)
	return l
}

// admit is told of every admitted call, at (Shedder.now) its start, and
// returns the probe cohort it belongs to (0: none), which sample is given
// at its end. Outside a probe's admission phase it is one atomic load.
// The phase closes at the first call admitted a Window or more into the
// probe with MinSamples admitted (that call is the cohort's last), or, for
// a method too slow to give MinSamples, on the first sample 8 Windows in
// (probeReady).
func (g *gradient) admit(at int64) int64 {
	if !g.admitting.Load() {
		return 0
	}
	if g.cohortIn.Add(1) >= g.minSamples && at-g.start.Load() >= g.window {
		g.admitting.Store(false)
	}
	return g.cohort.Load()
}

// probeReady reports whether the probe's window may close at now: its
// admission phase is over and every call of its cohort has ended, or 8
// Windows passed, as long as a probe could last before (a hung call, or a
// rare long one, does not hold the limit at the probe's; the calls still
// running are then left out, a bias only against calls longer than some 7
// Windows), with at least one call measured.
//
// A probe's window used to count the calls that ended in it, after a
// Window and MinSamples calls: a method's long calls admitted in its last
// Window had not ended yet, and a method taking 1 ms, one call in ten
// 20 ms (2.9 ms), measured at its fast calls' time. Its baseline was set
// too low, every later window looked queued, and the limit held 4 and 16
// callers of a server that never queued at 2 to 14 and shed 52-70% of
// their calls until the next probe, 60 s on (TestGradientBimodalMethodIdleServer).
// Waiting for the calls admitted in it measures every call of the cohort,
// whatever its length; it costs the probe its longest call's time.
func (g *gradient) probeReady(now int64) bool {
	el := now - g.start.Load()
	if g.admitting.Load() {
		if el < 8*g.window && (el < g.window || g.cohortIn.Load() < g.minSamples) {
			return false
		}
		g.admitting.Store(false)
	}
	return g.n.Load() > 0 && (g.cohortOut.Load() >= g.cohortIn.Load() || el >= 8*g.window)
}

// queuedBeforeSlot is how much of waited, the time grpc-go took after the
// tap's admission to begin the request's stream on its goroutine
// (Shedder.admitted, from the Shedder's stats handler), the adaptive limit
// adds to took, its handler's time.
//
// On a core the handlers keep busy, the queue forms before the
// interceptor, not in it: the tap admits a burst read from the
// connection, and the requests' goroutines run one after the other, each
// taking its slot only when the one before has finished. The slots then
// look free, every handler's time looks like its baseline, and the limit
// never moved: in the bench's 10× overload with 0.6 ms of CPU work per
// call on one core, it stayed at 100 with at most one call in its
// handler, and 5% of capacity answered in time, where a fixed limit of 1
// kept 86–97% (docs/overload.md, *The adaptive limit on CPU-bound work*).
// Counted from the tap, those calls queued.
//
// The goroutine's start, not the slot: the wait up to the slot also holds
// the wait for the request's message, the client's to choose, and a
// client sending 23% of a lightly loaded server's calls with their
// messages late shed 71% of the others (attack14). Capped too, as a bound
// on what any one call adds: at most took, and at most mean, the server's
// recent mean handler time (Shedder.served, all methods; 0 caps nothing),
// so that a call counts as if it had queued behind one average call
// (capped by its own time alone, a slow method's calls counted as the
// share of the handler time they are, not of the calls:
// TestAdaptiveLateMessagesOfASlowMethod); and nothing once the wait
// reached reserveFor (the reservation lapsed).
func queuedBeforeSlot(waited, took, mean time.Duration) time.Duration {
	if waited <= 0 || waited >= reserveFor {
		return 0
	}
	if mean > 0 {
		took = min(took, mean)
	}
	return min(waited, took)
}

// sample records one admitted call of method st that took took with n
// calls in flight (itself included); cut says its caller's deadline or
// cancellation ended it, and cohort is what admit returned for it. A cut
// call is used only if it still took more than the tolerance allows over
// its method's baseline: a client's short deadline can say the server is
// slow only when it is, and never that it is fast. It returns the new
// limit when the window closed and the limit moved.
func (g *gradient) sample(st *serviceTime, took time.Duration, cut bool, now, n, cohort int64) (int64, bool) {
	probing := g.probing.Load()
	member := probing && cohort != 0 && cohort == g.cohort.Load()
	if member {
		g.cohortOut.Add(1)
	}
	base := st.gBase.Load()
	if cut {
		if base == 0 {
			return g.cutUnmeasured(now)
		}
		// A cut call's time is a lower bound of what it would have taken:
		// as its time, it made a queue look fast. It says the server is
		// slow only once it took longer than the tolerance allows, and
		// then it counts as a call that clearly queued (earlyRatio).
		// Callers whose deadlines were 1.3x the work, with handlers that
		// return when their context ends, had every queued call measured
		// at 1.3x, within the dead band, and the limit stayed at 100 with
		// no call in time; callers that cancel their calls 1.05x the work
		// after they began held it at 17 to 21 on 4 slots
		// (TestGradientCutCallsSayOnlySlow).
		if float64(took) < g.tolerance*float64(base) {
			return 0, false
		}
		took = max(took, time.Duration(g.tolerance/earlyRatio*float64(base)))
	}
	if probing && (!member || n > g.probeLimit.Load()) {
		if now-int64(took) < g.start.Load() {
			return g.abandonStaleProbe(now) // admitted before the probe: not at its concurrency
		}
		// Admitted after the probe's cohort (or above its limit): not
		// measured, but it may be the event that closes the probe.
		return g.close(now, true)
	}
	if !st.gTracked.Load() && st.gTracked.CompareAndSwap(false, true) {
		g.regMu.Lock()
		g.tracked = append(g.tracked, st)
		g.regMu.Unlock()
	}
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	st.gSum.Add(int64(took))
	us := min(int64(took/time.Microsecond), maxSquaredUs)
	st.gSq.Add(us * us)
	st.gN.Add(1)
	cnt := g.n.Add(1)
	wsum, wbase := g.sum.Add(int64(took)), g.atBase.Add(cmp.Or(base, int64(took)))
	if !probing && !g.windowDue(cnt, now-g.start.Load(), wsum, wbase) {
		return 0, false
	}
	return g.close(now, probing)
}

// ready reports whether the current window may close at now; probing is
// what the caller saw.
func (g *gradient) ready(now int64, probing bool) bool {
	if probing {
		return g.probeReady(now)
	}
	return g.windowDue(g.n.Load(), now-g.start.Load(), g.sum.Load(), g.atBase.Load())
}

// windowDue reports whether a window (not a probe's) of cnt calls,
// elapsed nanoseconds old, whose calls took sum in all and atBase at
// their methods' baselines, may close: it has MinSamples calls, and its
// time is up or its calls clearly queued (earlyRatio).
func (g *gradient) windowDue(cnt, elapsed, sum, atBase int64) bool {
	return cnt >= g.minSamples && (elapsed >= g.window || g.queued(sum, atBase))
}

// close closes the current window at now if it is ready and no other
// request is closing it, and moves the limit; probing is what the caller
// saw. It returns the new limit when the limit moved.
func (g *gradient) close(now int64, probing bool) (int64, bool) {
	if probing && !g.probeReady(now) || !g.mu.TryLock() {
		return 0, false
	}
	defer g.mu.Unlock()
	if probing != g.probing.Load() || !g.ready(now, probing) {
		return 0, false // another request just closed it
	}
	g.regMu.Lock()
	tracked := g.tracked[:len(g.tracked):len(g.tracked)]
	g.regMu.Unlock()
	g.n.Store(0)
	g.sum.Store(0)
	g.atBase.Store(0)
	peak := g.peak.Swap(0)
	// The window, method by method: its mean, and the mean of its mix at
	// the methods' baselines (a method measured for the first time is its
	// own baseline).
	var sum, atBase float64
	cnt := int64(0)
	g.closing = g.closing[:0]
	for _, m := range tracked {
		mn := m.gN.Swap(0)
		if mn == 0 {
			continue
		}
		mean := float64(m.gSum.Swap(0)) / float64(mn)
		// The variance of one call, from this window's (an EWMA, the
		// window weighing by its share of MinSamples, at most 1/8): a
		// window's mean is as noisy as its method's calls, and a method
		// whose calls differ widely (a cache's hits and misses) has
		// windows far apart with nothing queued.
		meanUs := mean / float64(time.Microsecond)
		v := max(float64(m.gSq.Swap(0))/float64(mn)-meanUs*meanUs, 0)
		if m.gVar == 0 {
			m.gVar = v
		} else {
			m.gVar += (v - m.gVar) * math.Min(1, float64(mn)/float64(g.minSamples)) / 8
		}
		if probing {
			// A probe's cohort measured every call admitted in it, long
			// ones too: a variance learnt from windows that drew few of
			// them (a first window ends before its long calls do) is
			// raised to its own at once.
			m.gVar = math.Max(m.gVar, v)
		}
		b := float64(m.gBase.Load())
		if b == 0 {
			b = mean
		}
		sum += mean * float64(mn)
		atBase += b * float64(mn)
		cnt += mn
		g.closing = append(g.closing, methodWindow{m, mn, mean, math.Sqrt(m.gVar/float64(mn)) * float64(time.Microsecond)})
	}
	elapsed := float64(max(now-g.start.Load(), 1))
	// The mean calls in service (Little's law), at most the most that were
	// in flight: calls that began before a short window and end in it make
	// the window's sum overstate it (400 with one in flight), and served,
	// which the limit never shrinks below, must be a concurrency the
	// server held (TestGradientNeverLeavesItsBounds).
	inService := math.Min(sum/elapsed, float64(peak))
	g.start.Store(now)
	if !g.measured.Load() {
		g.measured.Store(true)
	}
	if cnt == 0 {
		return 0, false
	}
	avg, b := sum/float64(cnt), atBase/float64(cnt)
	if probing {
		// The probe's window: each method's baseline is its cohort's mean
		// two standard errors up, from wherever it was (a baseline is
		// lowered only by what is beyond a window's noise, so it is set
		// where it can only be lowered from); the limit is back to what it
		// was. Down to its mean whatever its noise, a probe of 25 calls of
		// a method taking 1 ms, one call in ten 20 ms, that drew no slow
		// call set its baseline to 1 ms where its calls take 2.9 ms: every
		// later window looked queued, the baseline could not rise above the
		// probe's concurrency, and on a server that never queued the limit
		// fell to 4-6 under 8 callers and shed 50-80% of their calls until
		// the next probe, 60 s on (TestGradientBimodalMethodIdleServer). Up
		// to its mean only, the same happened on a probe that drew one slow
		// call in 25 (a mean of 1.8 ms), one probe in four.
		atBase = 0
		for _, w := range g.closing {
			mb := w.mean + 2*w.se
			w.st.gBase.Store(max(int64(mb), 1))
			atBase += mb * float64(w.n)
		}
		clear(g.closing)
		g.baselineNs.Store(max(int64(atBase/float64(cnt)), 1))
		g.admitting.Store(false)
		g.probing.Store(false)
		g.afterProbe = true
		g.nextProbe = now + probeInterval
		return int64(math.Round(g.limit)), true
	}
	// Each method's baseline: the lowest window mean (a window with fewer
	// than MinSamples of its calls moves it only that share of the way
	// down, so one fast call is not a baseline). Only a window that ran
	// at no more than the probe's concurrency raises it: by 1/256 a
	// window, and 16 times slower still when it queued. Above that, the
	// probe alone raises it (a backend that really got slower). Under an
	// overload the limit settles a little above the server's concurrency,
	// where the windows' mean sits above the baseline within the dead
	// band; followed at 1/256 a window, the baseline rose from 2 ms to
	// 13 ms in 48 s of a steady 4x overload, the limit with it, and the
	// goodput fell from 99% to 0% (TestGradientSteadyOverloadHoldsItsBaseline).
	var follow float64
	if peak <= g.probeAt() {
		follow = 1.0 / 256
		if avg > b && g.tolerance*b/avg < 0.9 {
			follow = 1.0 / 4096
		}
	}
	atBase = 0
	var se2 float64 // the squared standard error of the window's mean, times cnt²
	for _, w := range g.closing {
		se2 += float64(w.n) * float64(w.n) * w.se * w.se
		mb := float64(w.st.gBase.Load())
		switch {
		case mb == 0:
			// A method's first window, two standard errors up: it can only
			// be lowered from here, and the baseline rises only in windows
			// at the probe's concurrency. At its mean, a first window that
			// drew few of a method's slow calls (one in ten 20 ms: the
			// window ends before most of them do) held the limit under 8
			// callers of a server that never queued in 4 of 8 seeds
			// (TestGradientBimodalMethodIdleServer; 1 of 8 now).
			mb = w.mean + 2*w.se
		case w.mean+2*w.se < mb && !g.afterProbe:
			// Lower beyond its noise (two standard errors): a window of
			// a cache's hits alone is not the method's baseline.
			mb += (w.mean + 2*w.se - mb) * math.Min(1, float64(w.n)/float64(g.minSamples))
		case w.mean < mb: // lower, within its noise, or after a probe: it holds
		default:
			mb += (w.mean - mb) * follow
		}
		w.st.gBase.Store(max(int64(mb), 1))
		atBase += mb * float64(w.n)
	}
	clear(g.closing) // drop the pointers until the next window
	g.afterProbe = false
	b = atBase / float64(cnt)
	g.baselineNs.Store(max(int64(b), 1))
	old := g.limit
	raw := g.tolerance * b / avg
	ratio := raw
	if raw < 0.9 {
		// Shrink only for what is beyond the window's noise (two standard
		// errors of its mean): a few more misses among a cache's hits are
		// not a queue.
		ratio = g.tolerance * b / math.Max(avg-2*math.Sqrt(se2)/float64(cnt), b)
	}
	switch {
	case ratio < 0.9:
		// Shrink from what was in use, not from a limit far above it (a
		// limit of 100 with 16 calls in flight says nothing), and not
		// below served.
		next := math.Min(g.limit, float64(peak)) * math.Max(ratio, 0.5)
		// Nor below the calls the server kept in service at the window's
		// throughput had each taken its baseline (Little's law on the
		// calls that ended): its real concurrency, whatever the queue in
		// front of it. Right after a shrink, the calls admitted under the
		// old limit still end late, and without this floor each early
		// window (queued) would halve the limit again for the same queue.
		next = math.Max(next, math.Min(g.limit, float64(cnt)*b/elapsed))
		if next < g.served {
			next = math.Min(g.served, g.limit) // a shrink never raises it
			g.served -= g.served / 256
		}
		g.limit = math.Min(math.Max(next, g.min), g.max)
	case raw >= 1 && float64(peak) >= g.limit/2:
		g.served = math.Max(g.served, inService)
		g.limit = math.Min(g.limit+math.Max(1, math.Sqrt(g.limit)/4), g.max)
	case raw >= 1:
		g.served = math.Max(g.served, inService)
	default:
		// A dead band against timing noise: the limit holds. Nor does
		// served grow: the window's latency is above the tolerance, so
		// some of its calls in service were queued ones.
	}
	// The first window is followed by a probe (nextProbe is 0), even one
	// that ran at no more than the probe's concurrency: it counted the
	// calls that ended in it, few of a method's long ones (see
	// probeReady), and at that concurrency a probe sheds nothing.
	if now >= g.nextProbe {
		return g.startProbe(), true
	}
	if math.Round(g.limit) == math.Round(old) {
		return 0, false
	}
	return int64(math.Round(g.limit)), true
}

// cutUnmeasured counts a call cut short before any window closed (no
// baseline to compare it with, so it is not used), and starts the probe
// once MinSamples such calls came: a Shedder started into an overload
// whose queued calls outlive their callers' deadlines measured only the
// few that ended in time, never closed a window, and kept its limit at
// Limit with no call served in time
// (TestGradientStartedIntoAnOverloadWithDeadlines). The probe measures
// calls at its low concurrency, which end in time. Only before the first
// window: a client cannot start probes at will.
func (g *gradient) cutUnmeasured(now int64) (int64, bool) {
	if g.measured.Load() || g.unmeasured.Add(1) < g.minSamples || !g.mu.TryLock() {
		return 0, false
	}
	defer g.mu.Unlock()
	if g.measured.Load() || g.probing.Load() {
		return 0, false
	}
	g.measured.Store(true) // a probe at start, once
	// The calls measured so far (the window's first, before the queue
	// built up) are the probe's only if admitted under it: start afresh.
	g.regMu.Lock()
	for _, m := range g.tracked {
		m.gN.Store(0)
		m.gSum.Store(0)
		m.gSq.Store(0) // or the probe's variance is theirs too, the queue's
	}
	g.regMu.Unlock()
	g.n.Store(0)
	g.sum.Store(0)
	g.atBase.Store(0)
	g.peak.Store(0)
	g.start.Store(now)
	return g.startProbe(), true
}

// earlyRatio is how far below 1 the window's gradient (tolerance ×
// baseline / mean) must fall for the window to close before its time:
// its calls queued so clearly (their mean a third above what the
// tolerance allows) that waiting out the window would only admit more
// calls into the queue. At an overload's onset the limit is still where
// the quiet traffic left it (Limit, 100 by default), every caller is
// admitted at once, and in one window of queueing all their deadlines
// pass; closing at MinSamples calls instead moves the limit in a few
// milliseconds (TestGradientOverloadOnset). Timing noise does not reach
// this far (a window that is merely above the tolerance waits for its
// time), so only a real queue moves the limit sooner.
const earlyRatio = 0.75

// queued reports whether the window's calls, sum nanoseconds in all and
// atBase at their methods' baselines, queued clearly enough to close it
// early (see earlyRatio). Not asked of a probe's window, which is never
// closed early: it measures the baselines.
func (g *gradient) queued(sum, atBase int64) bool {
	return g.tolerance*float64(atBase) < earlyRatio*float64(sum)
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

// abandonStaleProbe gives up a probe that has measured no call in 8
// windows: calls admitted before it (long ones) still hold more slots
// than it allows, so it admits nothing, sheds every request and learns
// nothing for as long as they run (TestGradientAbandonsAProbeLongCallsBlock).
// The limit is back and the baselines stay, until the next probe. Called
// when an old call ends during the probe, and when the Shedder sheds at
// the probe's limit. A probe that did measure a call closes on it
// instead, 8 windows in: its cohort's last calls may never end (handlers
// blocked on a long poll, or a client that keeps them open on purpose),
// and while they hold every slot of its limit no call ends to close it,
// so it shed every request for as long as they ran
// (TestGradientProbeEndsWithHungCohortCalls).
func (g *gradient) abandonStaleProbe(now int64) (int64, bool) {
	if !g.probing.Load() || now-g.start.Load() < 8*g.window {
		return 0, false
	}
	if g.n.Load() > 0 {
		return g.close(now, true)
	}
	if !g.mu.TryLock() {
		return 0, false
	}
	defer g.mu.Unlock()
	if !g.probing.Load() || g.n.Load() > 0 { // the next call measured closes it
		return 0, false
	}
	g.admitting.Store(false)
	g.probing.Store(false)
	g.afterProbe = true
	g.nextProbe = now + probeInterval
	g.start.Store(now)
	g.peak.Store(0)
	return int64(math.Round(g.limit)), true
}
