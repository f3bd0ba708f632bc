package interceptors

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ShedderOption configures NewShedder.
type ShedderOption interface {
	applyShedder(*shedderOptions)
}

type shedderOptionFunc func(*shedderOptions)

func (f shedderOptionFunc) applyShedder(o *shedderOptions) { f(o) }

type shedderOptions struct {
	cfg ShedderConfig
	obs telemetry.LimiterObserver
}

// WithShedderConfig replaces the whole Shedder configuration; start from
// DefaultShedderConfig. NewShedder validates it.
func WithShedderConfig(c ShedderConfig) ShedderOption {
	return shedderOptionFunc(func(o *shedderOptions) { o.cfg = c })
}

// WithShedderObserver sends limit changes (key ShedderKey) and shed
// requests (LimiterRejected with key the full method, and, when obs also
// implements telemetry.ShedObserver, ServerShed) to obs. Default
// telemetry.Nop. obs is called without any lock held, on the request
// path (for the tap path, in the transport's reader goroutine): it must
// be quick and must not block.
func WithShedderObserver(obs telemetry.LimiterObserver) ShedderOption {
	return shedderOptionFunc(func(o *shedderOptions) { o.obs = obs })
}

// ShedderKey is the key under which a Shedder reports its limit changes.
const ShedderKey = "server"

// Reasons a Shedder sheds for, besides ReasonLimit (at the in-flight
// limit) and ReasonDeadline (the remaining deadline is shorter than the
// method's recent service time); passed to LimiterRejected and
// telemetry.ShedObserver.ServerShed, and the keys of
// ShedderSnapshot.Shed.
const (
	// ReasonSheddable: a Sheddable request found SheddableShare of the
	// in-flight limit in use.
	ReasonSheddable = "sheddable"
	// ReasonExpired: the request's deadline had passed when it arrived
	// (answered DeadlineExceeded).
	ReasonExpired = "expired"
	// ReasonStreamLimit: the server had StreamLimit streams open.
	ReasonStreamLimit = "stream_limit"
)

// PushbackTrailer is the trailer that tells grpc-go clients with a retry
// policy how long to wait before their next attempt (gRFC A6).
const PushbackTrailer = "grpc-retry-pushback-ms"

// ErrorInfoDomain is the domain of the errdetails.ErrorInfo a shed
// carries; its Reason is one of the ErrorInfoReason* values and its
// Metadata holds the numbers ("limit", "sheddableLimit", "serviceTimeMs",
// "streamLimit").
const ErrorInfoDomain = "grpcreuse.github.io"

// ErrorInfo reasons of sheds, one per shed reason.
const (
	// ErrorInfoReasonLimit is ReasonLimit's; its metadata is "limit".
	ErrorInfoReasonLimit = "SHED_IN_FLIGHT_LIMIT"
	// ErrorInfoReasonDeadline is ReasonDeadline's; its metadata is
	// "serviceTimeMs", the time the deadline was compared with.
	ErrorInfoReasonDeadline = "SHED_DEADLINE"
	// ErrorInfoReasonSheddable is ReasonSheddable's; its metadata is
	// "limit" and "sheddableLimit".
	ErrorInfoReasonSheddable = "SHED_SHEDDABLE"
	// ErrorInfoReasonStreamLimit is ReasonStreamLimit's; its metadata is
	// "streamLimit".
	ErrorInfoReasonStreamLimit = "SHED_STREAM_LIMIT"
)

// The status messages of sheds: the same text for the same reason, so
// that tools grouping errors by message (ghz, dashboards) see one line per
// reason; the numbers are in the status details.
const (
	// MessageShedLimit is ReasonLimit's message (ResourceExhausted).
	MessageShedLimit = "interceptors: shed: the server is at its in-flight limit"
	// MessageShedDeadline is ReasonDeadline's message (ResourceExhausted).
	MessageShedDeadline = "interceptors: shed: the deadline is shorter than the method's recent service time"
	// MessageShedSheddable is ReasonSheddable's message (ResourceExhausted).
	MessageShedSheddable = "interceptors: shed: sheddable request beyond its share of the in-flight limit"
	// MessageShedStreamLimit is ReasonStreamLimit's message
	// (ResourceExhausted).
	MessageShedStreamLimit = "interceptors: shed: the server is at its stream limit"
	// MessageExpired is ReasonExpired's message (DeadlineExceeded).
	MessageExpired = "interceptors: the deadline passed before the request was admitted"
)

// isHealth reports whether method is one of grpc.health.v1.Health's,
// which a Shedder never sheds. Its methods by name, not its service's
// prefix: a server with grpc.UnknownServiceHandler (a proxy) hands a
// method it does not serve, even under a service it has, to that handler,
// and "/grpc.health.v1.Health/<anything>" reached it unshed and uncounted
// (TestShedderHealthExemptionIsTheHealthMethods).
func isHealth(method string) bool {
	switch method {
	case "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List":
		return true
	}
	return false
}

// maxTrackedMethods bounds the per-method table; methods past it share one
// entry.
const maxTrackedMethods = 1024

type reason uint8

const (
	rLimit reason = iota
	rDeadline
	rSheddable
	rExpired
	rStreamLimit
	numReasons
)

func (r reason) String() string {
	return [numReasons]string{ReasonLimit, ReasonDeadline, ReasonSheddable, ReasonExpired, ReasonStreamLimit}[r]
}

// Shedder is server-side load shedding. It answers at once, without
// running the handler:
//   - a unary request beyond the in-flight limit (fixed, AIMD on the
//     server's own measurements, or Adaptive: following the server's own
//     measured service time), ResourceExhausted;
//   - a Sheddable request (CriticalityHeader, or the method's default)
//     once SheddableShare of that limit is in use, ResourceExhausted;
//   - a unary request whose remaining deadline is shorter than its
//     method's recent service time (the time under which one in ten of its
//     recent successful calls ended, once MinSamples are measured),
//     ResourceExhausted: it would time out anyway, after using capacity
//     that others need (one such request in ten is let through, and one
//     that succeeds in time lowers the estimate to its time, so a quick
//     kind of request beside a slow one of the same method is served);
//   - a stream beyond StreamLimit, ResourceExhausted (streams are counted
//     apart from unary calls: their lifetime is the client's to choose);
//   - a request whose deadline has already passed, DeadlineExceeded.
//
// Every shed carries a stable message (Message* constants). All but an
// expired request's carry an errdetails.ErrorInfo with the numbers (the
// tap's, up to 1,000 a second; see TapHandle). When
// Pushback is set, all but deadline and expired sheds also carry an
// errdetails.RetryInfo of Pushback and, on the interceptor path, the
// grpc-retry-pushback-ms trailer; when a retry after Pushback would
// outlast what is left of the request's deadline, they say "do not retry"
// instead (no RetryInfo, and a trailer of -1). grpc.health.v1.Health's methods, and
// the methods and services of ShedderConfig.Exempt, are never shed and
// not counted.
//
// docs/overload.md explains each decision and the tests and numbers
// behind it.
//
// Install it with ServerOptions: the tap path (TapHandle, the default)
// decides before grpc-go creates the stream, which costs about half the
// interceptor path's CPU per shed call (less than half on a server with
// stats handlers); the interceptors measure the admitted calls and
// release their slots. The interceptors alone (without the tap) make the
// same decisions later, and add the pushback trailer to every shed that
// carries one; with the tap, only retry attempts' sheds carry it (see
// TapHandle).
//
// Safe for concurrent use. It starts no goroutines; its log summary is
// written lazily by the request path.
type Shedder struct {
	cfg    ShedderConfig
	obs    telemetry.LimiterObserver
	sobs   telemetry.ShedObserver // nil: obs does not implement it
	crit   map[string]Criticality // immutable copy of cfg.Criticality
	exempt map[string]struct{}    // cfg.Exempt as a set; nil when empty

	slots   slots        // the unary in-flight limit, its slots and their wait (maxWaiters)
	passed  atomic.Int64 // requests the tap let through to wait, not yet at the interceptor (tapPass)
	retries atomic.Int64 // retry attempts the tap let through to be shed with pushback, not yet there
	// requests the tap left to the interceptor to shed, since its answer
	// would be held until their deadline (held), not yet there
	deferred atomic.Int64
	held     held // the tap's answers grpc-go keeps until their deadline
	// requests the tap admitted, not yet at the interceptor (the tap
	// admits no more than the slots free)
	reserved reservations
	streams  atomic.Int64 // open streams
	grad     *gradient    // nil unless cfg.Adaptive

	mu      sync.Mutex                              // serialises writers of methods
	methods atomic.Pointer[map[string]*serviceTime] // copy on write
	other   serviceTime                             // methods beyond maxTrackedMethods

	shed           [numReasons]atomic.Int64
	answers        [numReasons]atomic.Pointer[answer] // by reason, for the current numbers
	noRetryAnswers [numReasons]atomic.Pointer[answer] // the same without RetryInfo, for a retry that would come too late
	detailed       atomic.Uint64                      // the tap's answers with details this second (tapDetails, bump)
	detailsMost    uint64                             // tapDetailsPerSecond outside tests
	pushback       metadata.MD                        // nil when cfg.Pushback is 0
	noRetry        metadata.MD                        // a negative pushback: do not retry (gRFC A6)

	served atomic.Int64 // nanoseconds: mean service time of successful unary calls, all methods (EWMA, 1/8)

	epoch    time.Time    // for monotonic nanoseconds
	nextLog  atomic.Int64 // nanoseconds since epoch
	logMu    sync.Mutex   // guards logged, loggedAt
	logged   [numReasons]int64
	loggedAt int64
	logf     func(format string, args ...any) // logger.Warningf; tests replace it
	twice    sync.Once                        // the log line of an interceptor installed twice
}

// serviceTime is what a Shedder knows of one method from its successful
// unary calls: their mean service time (an EWMA with weight 1/8), the
// time under which one in ten of them ended (low), whether the method is
// a stream, and its cached deadline answer.
//
// The deadline shed compares a request's remaining deadline with low, not
// with the mean: it sheds a request that would time out anyway, and a
// deadline below the mean is not one. A method behind a cache answers hits
// at once and misses slowly; a few misses raise its mean far above the
// hits, and a shed on the mean refused every caller whose deadline fits a
// hit, on an idle server that served them all without the Shedder
// (TestShedderDeadlineShedOnlyForHopelessDeadlines). The mean stays the
// measure of how often a slot frees (waitFor).
type serviceTime struct {
	ewma    atomic.Int64 // nanoseconds
	low     atomic.Int64 // nanoseconds; the 10th percentile, estimated
	streak  atomic.Int64 // deadline sheds since the last measured call
	refused atomic.Int64 // requests the deadline shed refused, or let through as probes
	probeAt atomic.Int64 // refused's value at which the next probe goes through
	gap     atomic.Int64 // refusals between probes: deadlineProbeEvery, doubled by each failed probe
	samples atomic.Int64
	stream  atomic.Bool
	ans     atomic.Pointer[answer]

	// The adaptive limit's share (gradient): this method's calls in the
	// current window, their summed time and summed squares (in µs²), its
	// baseline (nanoseconds, 0 until its first window), and whether the
	// gradient tracks it; gVar is the variance of one of its calls (µs²,
	// 0 until its first window), guarded by the gradient's mu.
	gSum, gSq, gN, gBase atomic.Int64
	gTracked             atomic.Bool
	gVar                 float64
}

// decay lowers the estimates after a request was shed for its deadline.
// Only admitted, successful requests measure the service time, so without
// this an estimate inflated by an overload (or a method that got faster)
// would shed every request whose deadline is below it forever, and never
// be measured again. How much it lowers them grows with the sheds in a
// row since the method's last measured call (streak): k/512 of them at
// the k-th, at most 1/8. Sheds between measured calls barely move the
// estimate (the calls measured say it holds); a long row says it is stale: a
// method shed for every request sees it halve in 26 sheds, fall 10× in
// 48 and 100× in 67. At 1/64 a shed whatever the row, 150 callers of a
// method 100× faster than its estimate, with deadlines a tenth of it,
// were refused before one got through
// (TestShedderDeadlineShedRecoversFromA100xSpeedUp).
func (s *serviceTime) decay() {
	k := min(s.streak.Add(1), 64)
	decayBy(&s.low, k)
	decayBy(&s.ewma, k)
}

// deadlineProbeEvery: of the requests the deadline shed would refuse, one
// in this many is let through instead (a probe), and one that succeeds in
// time lowers the method's estimate to its own time (proved). Shed
// requests are never measured, so without probes the shed seals itself:
// a method with two kinds of request, batches of 100 ms and lookups
// answered at once (callers with 50 ms deadlines), had its estimate set by
// the batches, every lookup shed, and every batch that ended raise the
// estimate again and restart the decay that sheds in a row bring: on an
// idle server, 60 of 60 lookups shed where plain grpc-go served them all
// (TestShedderDeadlineShedServesAQuickKindBesideASlowOne). One in ten, as
// the estimate is the time under which one call in ten ends. A probe that
// fails (its caller's deadline cut it, or it ran past it) doubles the
// refusals before the next one, up to maxDeadlineProbeGap, and one that
// succeeds brings them back to ten: a flood of hopeless requests (1 ms
// deadlines on 2 ms of work, beside honest callers at a 4× overload) gets
// a slot for a few probes, not for one request in ten, and a handler that
// does not stop when its caller leaves works a probe to its end.
const deadlineProbeEvery = 10

// maxDeadlineProbeGap bounds the refusals between two deadline probes.
const maxDeadlineProbeGap = 1024

// deadlineProbeKey marks the context of a request the tap let through as
// a deadline probe, so that the interceptor does not shed it for its
// deadline again.
type deadlineProbeKey struct{}

// proved lowers the deadline shed's estimate to took, the time of a
// deadline probe that succeeded in time (deadlineProbeEvery).
func (s *serviceTime) proved(took time.Duration) {
	s.gap.Store(deadlineProbeEvery)
	for {
		old := s.low.Load()
		if int64(took) >= old || s.low.CompareAndSwap(old, int64(took)) {
			return
		}
	}
}

// probeFailed doubles the refusals before the next deadline probe.
func (s *serviceTime) probeFailed() {
	g := s.gap.Load()
	if g < maxDeadlineProbeGap {
		s.gap.Store(min(2*max(g, deadlineProbeEvery), maxDeadlineProbeGap))
	}
}

// deadlineProbe reports whether the deadline shed lets this request,
// which it would refuse, through as a probe, counting it.
func (s *serviceTime) deadlineProbe() bool {
	n := s.refused.Add(1)
	at := s.probeAt.Load()
	if at == 0 { // the first refusal: the first probe comes deadlineProbeEvery on
		s.probeAt.CompareAndSwap(0, n+deadlineProbeEvery-1)
		return false
	}
	if n < at || !s.probeAt.CompareAndSwap(at, n+max(s.gap.Load(), deadlineProbeEvery)) {
		return false
	}
	return true
}

func decayBy(v *atomic.Int64, k int64) {
	for {
		old := v.Load()
		if v.CompareAndSwap(old, old-old/512*k) {
			return
		}
	}
}

func (s *serviceTime) observe(d time.Duration) {
	if s.streak.Load() != 0 {
		s.streak.Store(0)
	}
	if s.samples.Add(1) == 1 {
		s.ewma.Store(int64(d))
		s.low.Store(int64(d))
		return
	}
	for {
		old := s.ewma.Load()
		next := old + (int64(d)-old)/8
		if s.ewma.CompareAndSwap(old, next) {
			break
		}
	}
	// A stochastic estimate of the 10th percentile: up by 1/64 of itself
	// after a slower call, down by 9/64 after a faster one, so it settles
	// where one call in ten is faster (the steps balance when nine in ten
	// are slower). The steps are relative: a very slow call moves it no
	// more than a slightly slow one, where a mean moves by the difference.
	for {
		old := s.low.Load()
		next := old
		switch {
		case int64(d) > old:
			next = old + max(old/64, 1)
		case int64(d) < old:
			next = max(old-max(old*9/64, 1), int64(d))
		}
		if next == old || s.low.CompareAndSwap(old, next) {
			return
		}
	}
}

// NewShedder returns a Shedder (defaults: DefaultShedderConfig,
// telemetry.Nop), or an error naming the field and value of an invalid
// configuration, which wraps a *ConfigError (errors.As).
func NewShedder(opts ...ShedderOption) (*Shedder, error) {
	o := shedderOptions{cfg: DefaultShedderConfig(), obs: telemetry.Nop{}}
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("interceptors: NewShedder: option %d is nil", i)
		}
		opt.applyShedder(&o)
	}
	if o.obs == nil {
		return nil, errors.New("interceptors: WithShedderObserver(nil); pass telemetry.Nop{} to observe nothing")
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Shedder{cfg: o.cfg, obs: o.obs, crit: maps.Clone(o.cfg.Criticality), epoch: time.Now(), logf: logger.Warningf,
		reserved: newReservations(reserveFor), held: held{most: heldMost}, detailsMost: tapDetailsPerSecond}
	s.cfg.Criticality = s.crit
	s.cfg.Exempt = slices.Clone(o.cfg.Exempt)
	if len(s.cfg.Exempt) > 0 {
		s.exempt = make(map[string]struct{}, len(s.cfg.Exempt))
		for _, k := range s.cfg.Exempt {
			s.exempt[k] = struct{}{}
		}
	}
	s.sobs, _ = o.obs.(telemetry.ShedObserver)
	s.slots.limit.Store(int64(o.cfg.Limit))
	if o.cfg.Adaptive {
		s.grad = newGradient(o.cfg)
	}
	if o.cfg.Pushback > 0 {
		s.pushback = metadata.Pairs(PushbackTrailer, strconv.FormatInt(max(o.cfg.Pushback.Milliseconds(), 1), 10))
		s.noRetry = metadata.Pairs(PushbackTrailer, "-1")
	}
	m := map[string]*serviceTime{}
	s.methods.Store(&m)
	return s, nil
}

// InFlight returns the current unary in-flight limit and how many unary
// requests are in flight.
func (s *Shedder) InFlight() (limit, inFlight int) {
	return int(s.slots.limit.Load()), int(s.slots.inflight.Load())
}

// ShedderSnapshot is a Shedder's state, for a debug page.
type ShedderSnapshot struct {
	// Limit is the current unary in-flight limit (an adaptive one's probe
	// concurrency while it probes, see ShedderConfig.Adaptive); InFlight
	// how many unary requests hold a slot; Queued how many wait for one
	// (MaxWait).
	Limit, InFlight, Queued int
	// Reserved is how many unary requests the tap admitted that have not
	// reached the interceptor yet, nor ended, each for 8 ms at most: the
	// tap counts them against Limit beside InFlight, so it sheds at the
	// limit while InFlight is below it when they fill the rest (a burst
	// on its way, or requests whose message has not come).
	Reserved int
	// Streams is how many streams are open; StreamLimit how many may be.
	Streams, StreamLimit int
	// Adaptive says whether Limit follows the measured service time.
	Adaptive bool
	// Baseline is, with Adaptive, the service time the limit compared the
	// last window with: that window's mix of methods at each one's
	// baseline (0 until measured, and without Adaptive).
	Baseline time.Duration
	// Shed counts the requests shed since the Shedder was made, by reason
	// (ReasonLimit, ReasonDeadline, ReasonSheddable, ReasonExpired,
	// ReasonStreamLimit); every reason has an entry.
	Shed map[string]int64
}

// Snapshot returns the Shedder's current state.
func (s *Shedder) Snapshot() ShedderSnapshot {
	snap := ShedderSnapshot{Limit: int(s.slots.limit.Load()), InFlight: int(s.slots.inflight.Load()), Queued: s.slots.queued(),
		Reserved: int(s.reserved.pending(s.now())),
		Streams:  int(s.streams.Load()), StreamLimit: s.cfg.StreamLimit, Adaptive: s.grad != nil,
		Shed: make(map[string]int64, numReasons)}
	if s.grad != nil {
		snap.Baseline = time.Duration(s.grad.baselineNs.Load())
	}
	for r := range numReasons {
		snap.Shed[r.String()] = s.shed[r].Load()
	}
	return snap
}

// ServerOptions returns the Shedder installed as recommended: the tap
// path (grpc.InTapHandle(s.TapHandle)), the unary and stream
// interceptors (chained first, so they time the whole handler chain) and,
// with an Adaptive limit, its stats handler (StatsHandler). A
// server takes one InTapHandle: if yours has another, call TapHandle from
// it last, return what it returns, and add the interceptors yourself (see
// TapHandle): grpc.NewServer panics when given two InTapHandle options.
// Pass the options before your own (grpc.NewServer(append(
// shed.ServerOptions(), opts...)...)), so that the Shedder's interceptors
// are outermost.
func (s *Shedder) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.InTapHandle(s.TapHandle),
		grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(s.StreamServerInterceptor()),
	}
	if s.grad != nil {
		// Only the adaptive limit reads it, and a stats handler costs every
		// admitted call something (grpc-go builds its events): a fixed limit
		// has no use for it.
		opts = append(opts, grpc.StatsHandler(s.StatsHandler()))
	}
	return opts
}

func (s *Shedder) lookup(method string) *serviceTime {
	return (*s.methods.Load())[method]
}

// serviceTime returns method's entry, making it: only the interceptors
// call it, for methods the server has, so a client cannot fill the table
// with made-up names.
func (s *Shedder) serviceTime(method string) *serviceTime {
	if st, ok := (*s.methods.Load())[method]; ok {
		return st
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.methods.Load()
	if st, ok := old[method]; ok {
		return st
	}
	if len(old) >= maxTrackedMethods {
		return &s.other
	}
	m := make(map[string]*serviceTime, len(old)+1)
	maps.Copy(m, old)
	st := &serviceTime{}
	m[method] = st
	s.methods.Store(&m)
	return st
}

// now returns monotonic nanoseconds since the Shedder was made.
func (s *Shedder) now() int64 { return int64(time.Since(s.epoch)) }

// admitUnary decides on a unary request and takes its slot, waiting for
// one if waitFor allows: ok, or the reason to shed it. A request whose
// caller gave up while it waited gets that error instead (err). probe
// says an admitted request is a deadline probe (deadlineProbeEvery).
func (s *Shedder) admitUnary(ctx context.Context, st *serviceTime, crit Criticality) (r reason, probe, ok bool, err error) {
	r, limit, _, probe, ok := s.checkUnary(ctx, st, crit, 0)
	if !ok {
		return r, false, false, nil
	}
	if s.slots.waiters.Load() == 0 && s.slots.tryAcquire(limit) {
		return 0, probe, true, nil // the fast path without the wait closure, as in limiter.acquire
	}
	switch s.slots.acquire(ctx, limit, maxWaiters, func() time.Duration { return s.waitFor(ctx, st, crit, limit) }) {
	case waitGranted:
		return 0, probe, true, nil
	case waitDone:
		if ctx.Err() == context.DeadlineExceeded {
			return rExpired, false, false, nil
		}
		return 0, false, false, status.FromContextError(ctx.Err()).Err()
	}
	return r, false, false, nil
}

// checkUnary makes every decision of admitUnary but takes no slot and
// does not wait: the tap path's (the interceptor, which alone takes and
// releases slots, may still shed a request the tap let through when the
// slots and the wait filled in between). On success r is the reason a
// full limit would give and limit the in-flight limit the request must
// fit under; a request that finds the limit in use passes only when it
// may wait (waitFor) and nobody waits yet (maxWaiters), and wait is then
// how long. wait is computed only at the limit: the admitted path pays
// nothing for it. probe says the request passes the deadline shed only as
// a probe (deadlineProbeEvery); the context lookup that tells a probe the
// tap let through is made only on that path. reserved is how many
// requests the tap admitted are on their way to the interceptor (the
// tap's: the interceptor passes 0, its slots are the count).
func (s *Shedder) checkUnary(ctx context.Context, st *serviceTime, crit Criticality, reserved int64) (r reason, limit int64, wait time.Duration, probe, ok bool) {
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return rExpired, 0, 0, false, false
		}
		if st != nil && st.samples.Load() >= int64(s.cfg.MinSamples) && left < time.Duration(st.low.Load()) {
			if ctx.Value(deadlineProbeKey{}) == nil && !st.deadlineProbe() {
				st.decay()
				return rDeadline, 0, 0, false, false
			}
			probe = true
		}
	}
	limit = s.slots.limit.Load()
	r = rLimit
	if crit == Sheddable {
		limit = max(int64(float64(limit)*s.cfg.SheddableShare), 1)
		r = rSheddable
	}
	if s.slots.inflight.Load()+reserved < limit {
		return r, limit, 0, probe, true
	}
	if s.grad != nil && s.grad.probing.Load() {
		s.abandonStaleProbe()
	}
	if wait = s.waitFor(ctx, st, crit, limit); wait <= 0 || s.slots.waiters.Load()+s.passed.Load() >= maxWaiters {
		return r, limit, 0, false, false
	}
	return r, limit, wait, probe, true
}

// abandonStaleProbe gives up the adaptive limit's probe if it is stale
// (gradient.abandonStaleProbe): a shed at its limit is the one event
// while long calls admitted before it hold the slots. The request at
// hand is still shed; the next one finds the limit back.
func (s *Shedder) abandonStaleProbe() {
	if l, moved := s.grad.abandonStaleProbe(s.now()); moved {
		s.slots.limit.Store(l)
		s.obs.LimiterLimitChanged("", ShedderKey, int(l))
	}
}

// maxWaiters is how many requests may wait for a slot at once. A wait
// lasts at most the time in which one of the limit's slots frees on
// average (waitFor), so a second request waiting beside the first would on
// average find no slot either: it would be shed all the same, only later,
// and on the tap path after grpc-go made its stream, goroutine and
// message. With up to limit waiters, the tap shed none of an overload
// below limit× (at 4×, 4 requests arrive per wait), at the interceptor's
// CPU cost per shed.
const maxWaiters = 1

// waitFor is how long a request that finds the limit in use may wait for
// a slot. A wait
// is there to bridge the moment between one call's end and the next
// request's arrival, when a fixed limit's slot would stand idle, not to
// queue: at most the time in which, at the measured service time of the
// calls the server serves (all methods), one of the limit's slots frees
// on average (service time / limit; with the waiting request's method's
// instead, a fast method's request behind slow calls was shed at once:
// TestShedderWaitFollowsTheCallsHoldingTheSlots), at most MaxWait, and
// never so long that less than its own method's service time would be
// left of its deadline. Not at all when MaxWait is 0, with an
// AIMD or Adaptive limit (they keep their own headroom above what the
// server serves at once, which bridges that moment already; waiting
// would only queue), for a Sheddable request (shed first), or before the
// method's service time is measured (MinSamples).
func (s *Shedder) waitFor(ctx context.Context, st *serviceTime, crit Criticality, limit int64) time.Duration {
	if s.cfg.MaxWait <= 0 || s.grad != nil || s.cfg.Algorithm != Fixed || crit == Sheddable || st == nil ||
		st.samples.Load() < int64(s.cfg.MinSamples) {
		return 0
	}
	// One of the limit's slots frees on average every (mean service time
	// of the calls the server serves) / limit, whichever method's request
	// waits: the calls holding the slots set it, and by Little's law their
	// mean is the mean over the calls that end. The request's own method
	// bounds the wait by its deadline.
	svc := time.Duration(st.ewma.Load())
	all := time.Duration(s.served.Load())
	if all == 0 {
		all = svc
	}
	w := min(s.cfg.MaxWait, all/time.Duration(max(limit, 1)))
	if dl, ok := ctx.Deadline(); ok {
		w = min(w, time.Until(dl)-svc)
	}
	return w
}

// admitStream decides on a stream and takes its slot.
func (s *Shedder) admitStream(ctx context.Context) (reason, bool) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= 0 {
		return rExpired, false
	}
	if s.streams.Add(1) > int64(s.cfg.StreamLimit) {
		s.streams.Add(-1)
		return rStreamLimit, false
	}
	return 0, true
}

// checkStream is admitStream's decision without taking a stream slot.
func (s *Shedder) checkStream(ctx context.Context) (reason, bool) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= 0 {
		return rExpired, false
	}
	if s.streams.Load() >= int64(s.cfg.StreamLimit) {
		return rStreamLimit, false
	}
	return 0, true
}

// exempted reports whether method is never shed nor counted: health, and
// ShedderConfig.Exempt's methods and services.
func (s *Shedder) exempted(method string) bool {
	if isHealth(method) {
		return true
	}
	_, ok := byMethod(s.exempt, method)
	return ok
}

// criticality returns a request's criticality: its header if it carries a
// valid one, else its method's default.
func (s *Shedder) criticality(header []string, method string) Criticality {
	if len(header) > 0 {
		if c, ok := parseCriticality(header[0]); ok {
			return c
		}
	}
	return methodCriticality(s.crit, method)
}

// refuse counts a shed and returns its answer.
func (s *Shedder) refuse(ctx context.Context, r reason, method string, st *serviceTime) error {
	return s.refuseAs(r, method, st, s.retry(ctx, r, st))
}

// refuseAs is refuse with the retry decision made (retry): the
// interceptor sets the trailer by the same one, or a deadline crossing
// the pushback between two readings of the clock gave a positive trailer
// and details without RetryInfo (TestShedderTrailerAndRetryInfoAgree).
func (s *Shedder) refuseAs(r reason, method string, st *serviceTime, retry bool) error {
	return s.refuseWith(r, method, s.answer(r, st, retry))
}

// refuseWith counts a shed for r of a request to method, observes and
// logs it, and returns its answer, err.
func (s *Shedder) refuseWith(r reason, method string, err error) error {
	s.shed[r].Add(1)
	name := r.String()
	s.obs.LimiterRejected("", method, name)
	if s.sobs != nil {
		s.sobs.ServerShed(method, name)
	}
	s.maybeLog()
	return err
}

// refuseWithTrailer is refuse for the interceptor path, which can also set
// the pushback trailer: Pushback, or "do not retry" (a negative pushback,
// gRFC A6) when a retry would come too late (retryInTime).
func (s *Shedder) refuseWithTrailer(ctx context.Context, r reason, method string, st *serviceTime, setTrailer func(metadata.MD) error) error {
	retry := s.retry(ctx, r, st) // one reading for the trailer and the details
	if s.pushesBack(r) {
		md := s.pushback
		if !retry {
			md = s.noRetry
		}
		_ = setTrailer(md) // fails only if the stream is already done
	}
	return s.refuseAs(r, method, st, retry)
}

// pushesBack reports whether sheds for r tell clients when to retry
// (RetryInfo, and the trailer on the interceptor path): all but deadline
// sheds (the same deadline would not do better) and expired ones, when
// Pushback is set.
func (s *Shedder) pushesBack(r reason) bool {
	return s.pushback != nil && r != rDeadline && r != rExpired
}

// retry reports whether a shed for r of the request with ctx says to
// retry after Pushback: it pushes back, and the retry would come in time
// (retryInTime). The clock is read only for the reasons that push back.
func (s *Shedder) retry(ctx context.Context, r reason, st *serviceTime) bool {
	return s.pushesBack(r) && s.retryInTime(ctx, st)
}

// retryInTime reports whether a retry after Pushback could still be served
// within what is left of the request's deadline (its method's service
// time, once measured). When it could not, a shed says "do not retry"
// instead of Pushback: the trailer is -1 and RetryInfo is left out.
// grpc-go waits out a pushback even past the call's deadline, so a
// retrying caller with 200 ms left and 1 s of pushback got
// DeadlineExceeded after its whole deadline instead of the shed at once,
// without the shed's status and details
// (TestShedderPushbackNeverOutlastsTheDeadline).
func (s *Shedder) retryInTime(ctx context.Context, st *serviceTime) bool {
	dl, ok := ctx.Deadline()
	if !ok {
		return true
	}
	need := s.cfg.Pushback
	if st != nil && st.samples.Load() >= int64(s.cfg.MinSamples) {
		need += time.Duration(st.low.Load())
	}
	return time.Until(dl) >= need
}

// TapHandle is the Shedder's cheap admission path, a tap.ServerInHandle
// for grpc.InTapHandle: it makes the interceptors' decisions before
// grpc-go creates the stream, so a shed request costs no stream,
// goroutine or message decoding. It runs in the connection's reader
// goroutine, never blocks and takes no slot: it refuses what the
// interceptors would refuse now, and the interceptors (which must be
// installed too; see ServerOptions) alone take and release slots, so a
// request that never reaches them (reset before its message) holds no
// slot. It counts the requests it admitted until they reach the unary
// interceptor or their stream ends, for a few milliseconds at most
// (reservations), so that it admits no more than the slots free: a burst
// read from one connection is shed here, not after grpc-go made a stream
// for each of its requests. Each admitted request carries its count in
// the context TapHandle returns (an allocation, and a context.AfterFunc on
// its stream). A request
// the tap let through may still be shed by the interceptor, with the
// pushback trailer, when the slots filled in between. Requests for a
// method the interceptors have not yet seen pass to them (the tap cannot
// tell a stream from a unary call, nor a method the server has from a
// made-up one).
//
// grpc-go's early answer carries the status and its details but no
// trailers, so the tap's sheds send RetryInfo, not grpc-retry-pushback-ms.
// Retry attempts (requests carrying grpc-previous-rpc-attempts, which
// grpc clients with a retry policy send) that would be shed at the limit
// pass to the interceptor instead, at most the limit's worth at once, so
// that their shed carries the trailer their client's retry policy reads.
// One request at a time the tap lets through at the limit to wait for a
// slot (MaxWait).
//
// grpc-go marshals and encodes the status details again for each of the
// tap's answers, a fifth of the tap's CPU per shed, so only its first
// 1,000 answers each second carry them; the rest carry the code and the
// stable message (the Message* constants) alone, and the metrics, the log
// summary and the debug page carry the numbers.
//
// grpc-go never cancels the context of a request its tap refused, so its
// deadline timer, and about 470 bytes with it, stay in memory until the
// deadline. The tap therefore answers requests with a deadline only while
// fewer than 65,536 of its answers are held that way, and only deadlines
// at most 62 s away; it leaves the others to the interceptor (at most 256 on
// their way there at once), whose shed grpc-go cleans up. Requests without
// a deadline keep nothing and are always the tap's.
//
// Those passes are counted from TapHandle until the request reaches
// an interceptor or its stream ends, and grpc-go neither starts
// nor ends (cancels) a stream that a tap refused: a tap that calls
// TapHandle must call it after its own checks, as its last step, and
// return the context it returns. Refusing a request after TapHandle let
// it through would leave its pass counted forever (a few such requests
// turn the passes off for good), and a request it admitted counted
// against the free slots until its reservation lapses (8 ms): each
// request refused that way shuts a slot's worth of the tap for that long.
// Dropping the returned context keeps a pass counted for the whole call,
// and a reservation until the call ends or lapses, beside its slot.
func (s *Shedder) TapHandle(ctx context.Context, info *tap.Info) (context.Context, error) {
	method := info.FullMethodName
	if s.exempted(method) {
		return ctx, nil
	}
	st := s.lookup(method)
	if st == nil {
		// A method the interceptors have not seen yet: whether it streams is
		// unknown (and it may not exist), so the interceptors decide.
		return ctx, nil
	}
	if st.stream.Load() {
		if r, ok := s.checkStream(ctx); !ok {
			return s.tapRefuse(ctx, r, method, st, s.now()) // the clock read on this path only
		}
		return ctx, nil
	}
	now := s.now()
	r, limit, wait, probe, ok := s.checkUnary(ctx, st, s.criticality(info.Header[CriticalityHeader], method), s.reserved.counted(now, s.slots.limit.Load()))
	if ok && probe {
		// The interceptor must not shed it for its deadline again: it was
		// counted once, here. An allocation on this path only.
		ctx = context.WithValue(ctx, deadlineProbeKey{}, struct{}{})
	}
	if ok && wait > 0 { // it passes only to wait
		// It passes only to wait: it counts as waiting from here, or every
		// request at the limit whose message has not arrived yet (a slow
		// upload, or a client that never sends it) would pass too, each
		// holding a stream and a goroutine, which MaxWait 0 refuses here.
		if pass, passed := s.pass(ctx, &s.passed, maxWaiters); passed {
			return pass, nil
		}
		ok = false // another request took the wait in between: shed, as at the limit
	}
	if ok {
		return s.reserved.reserveRequest(ctx, now), nil
	}
	if s.pushback != nil && (r == rLimit || r == rSheddable) && len(info.Header[previousAttemptsHeader]) > 0 {
		// A retry attempt of a client with a retry policy: the tap's answer
		// cannot carry the pushback trailer that policy reads, so the
		// interceptor sheds it (or admits it, if a slot freed), and the
		// client waits Pushback before its next attempt instead of its own,
		// shorter backoff. At most limit such requests pass at once: a
		// client that sends the header on every request costs the server at
		// most the interceptor path's CPU, as without a tap, and cannot pile
		// up streams whose message never comes.
		if pass, passed := s.pass(ctx, &s.retries, limit); passed {
			return pass, nil
		}
	}
	return s.tapRefuse(ctx, r, method, st, now)
}

// previousAttemptsHeader is the header grpc clients with a retry policy
// send on every attempt after the first (gRFC A6).
const previousAttemptsHeader = "grpc-previous-rpc-attempts"

// pass lets a request through the tap counted in n, if fewer than most
// are counted there: it stays counted until it reaches the unary
// interceptor or its stream ends, whichever is first.
func (s *Shedder) pass(ctx context.Context, n *atomic.Int64, most int64) (context.Context, bool) {
	if n.Add(1) > most {
		n.Add(-1)
		return ctx, false
	}
	p := &tapPass{n: n}
	p.stop = context.AfterFunc(ctx, p.release) // its stream ended before the interceptor
	return context.WithValue(ctx, tapPassKey{}, p), true
}

// tapPass is a request the tap let through at the limit (to wait for a
// slot, or to be shed with the pushback trailer): it counts in n
// (Shedder.passed or Shedder.retries) until it reaches the unary
// interceptor or its stream ends without reaching it, whichever is first.
type tapPass struct {
	n    *atomic.Int64
	done atomic.Bool
	stop func() bool
}

type tapPassKey struct{}

func (p *tapPass) release() {
	if p.done.CompareAndSwap(false, true) {
		p.n.Add(-1)
	}
}

// arrived releases the tap's count of a request it let through at the
// limit, if it did, before the interceptor decides on it (a waiter must
// not count itself as a waiter ahead of it).
func (s *Shedder) arrived(ctx context.Context) {
	if s.passed.Load() == 0 && s.retries.Load() == 0 && s.deferred.Load() == 0 { // the admitted path: no context lookup
		return
	}
	if p, _ := ctx.Value(tapPassKey{}).(*tapPass); p != nil {
		p.stop()
		p.release()
	}
}

// admitted ends the tap's reservation of a request it admitted, if it
// did, once the request reached the interceptor, before it takes its
// slot (see UnaryServerInterceptor). It returns how long the request
// waited, after the tap admitted it, for grpc-go to begin its stream on
// its goroutine (the Shedder's stats handler marks that), or 0: the
// queue of goroutines on a busy CPU, not the wait for the request's
// message, which its client chooses. again reports that the reservation
// had arrived already: this Shedder's unary interceptor is installed
// twice, and this is the inner one.
func (s *Shedder) admitted(ctx context.Context) (scheduled time.Duration, again bool) {
	if s.reserved.last.Load() == 0 { // no tap ever admitted one: no context lookup
		return 0, false
	}
	v, _ := ctx.Value(reservationKey{}).(*reservation)
	if v == nil || v.r != &s.reserved { // not admitted by this Shedder's tap
		return 0, false
	}
	v.stop()
	if !v.end(reservationArrived) {
		return 0, v.ended.Load() == reservationArrived
	}
	if b := v.began.Load(); b != 0 && b > v.tapped { // 0: never marked
		scheduled = time.Duration(b - v.tapped)
	}
	return scheduled, false
}

// UnaryServerInterceptor returns the Shedder's unary server interceptor.
// It admits requests the tap path did not see (or sheds them, with the
// pushback trailer), measures every admitted call and releases its slot.
// Installed twice on one server, its inner copy passes the calls the tap
// admitted through (and logs that once), so that each takes one slot.
func (s *Shedder) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		method := info.FullMethod
		if s.exempted(method) {
			return handler(ctx, req)
		}
		st := s.serviceTime(method)
		crit := s.criticality(metadata.ValueFromIncomingContext(ctx, CriticalityHeader), method)
		s.arrived(ctx)
		// The tap's reservation ends before the slot is taken. Ended after,
		// the request counted twice for a moment (reserved and in flight),
		// and the tap shed a request that fitted the limit. Ended before,
		// it counts in neither for that moment: a request the tap admits
		// then is shed here if the slots are still full when it comes.
		scheduled, again := s.admitted(ctx)
		if again {
			// Installed twice (ServerOptions and a chain of its own, say):
			// the outer one admitted the call and took its slot. Taking a
			// second would halve the limit, and measuring it again would
			// count each call twice.
			s.twice.Do(func() {
				s.logf("interceptors: a Shedder's unary interceptor is installed twice on one server (ServerOptions installs it): the inner one passes calls through")
			})
			return handler(ctx, req)
		}
		r, probe, ok, err := s.admitUnary(ctx, st, crit)
		if err != nil {
			return nil, err // its caller gave up while it waited for a slot
		} else if !ok {
			return nil, s.refuseWithTrailer(ctx, r, method, st, func(md metadata.MD) error { return grpc.SetTrailer(ctx, md) })
		}
		start := time.Now()
		var cohort int64 // the adaptive limit's probe cohort it belongs to, if any
		if s.grad != nil {
			cohort = s.grad.admit(int64(start.Sub(s.epoch)))
		}
		released := false
		defer func() {
			if !released { // handler panicked
				s.slots.release()
			}
		}()
		resp, err := handler(ctx, req)
		released = true
		end := time.Now()
		s.doneUnary(ctx, st, err, end.Sub(start), scheduled, end, probe, cohort)
		return resp, err
	}
}

// doneUnary measures an admitted unary call that ended at end and
// releases its slot; probe says it was a deadline probe
// (deadlineProbeEvery), cohort is the adaptive limit's probe cohort it
// was admitted into (gradient.admit). waited is how long, after the tap
// admitted it, grpc-go took to begin its stream on its goroutine
// (admitted; 0 when the tap did not admit it): the adaptive limit counts
// part of it (queuedBeforeSlot).
func (s *Shedder) doneUnary(ctx context.Context, st *serviceTime, err error, took, waited time.Duration, end time.Time, probe bool, cohort int64) {
	// The caller's deadline or cancellation ended it, or it ran past its
	// deadline: on a starved CPU the deadline's timer fires late, and a
	// call that outlived its caller must not teach the service time (an
	// estimate above the deadlines callers send would shed their calls
	// after the overload, until it decays).
	cut := ctx.Err() != nil
	if dl, ok := ctx.Deadline(); ok && !cut && !end.Before(dl) {
		cut = true
	}
	if probe && (err != nil || cut) {
		st.probeFailed()
	}
	if err == nil && !cut {
		st.observe(took)
		if probe {
			st.proved(took)
		}
		// A racy load and store, not a CAS loop: an update lost between
		// two calls ending at once costs an EWMA nothing, and the admitted
		// path takes no retry on a line every call writes.
		if old := s.served.Load(); old == 0 {
			s.served.Store(int64(took))
		} else {
			s.served.Store(old + (int64(took)-old)/8)
		}
	}
	n := s.slots.free()
	switch {
	case s.grad != nil:
		// end, not a new clock reading: the gradient tells a call admitted
		// before its probe, or into its cohort, by end - took, its start.
		if l, moved := s.grad.sample(st, took+queuedBeforeSlot(waited, took, time.Duration(s.served.Load())), cut, int64(end.Sub(s.epoch)), n, cohort); moved {
			s.slots.limit.Store(l)
			s.obs.LimiterLimitChanged("", ShedderKey, int(l))
		}
	case s.cfg.Algorithm == AIMD:
		drop := (s.cfg.LatencyThreshold > 0 && took > s.cfg.LatencyThreshold) ||
			(!cut && isShed(err))
		if drop || !cut {
			s.aimd(drop, n)
		}
	}
	s.slots.dispatchIfWaiting() // after the limit moved, before the log line's work
	if s.cfg.LogInterval > 0 && s.nextLog.Load() != 0 {
		s.maybeLog()
	}
}

// isShed reports whether a handler's error is itself a shed: a Shedder's
// or a client Limiter's further in (in this process, its error; from a
// server the handler called, its ErrorInfo, or the stable message alone:
// a tap's answers beyond its details budget carry no ErrorInfo, and a
// flood of them, the overload that matters, cut no limit). Other RESOURCE_EXHAUSTED
// answers, a caller over its quota above all (the code's first use), say
// nothing of the server's load: counted as drops, 30 quick over-quota
// answers took an AIMD limit of 10 to 1 on an idle server
// (TestShedderAIMDQuotaAnswersAreNotOverload). It decodes the details of
// RESOURCE_EXHAUSTED errors only.
func isShed(err error) bool {
	if status.Code(err) != codes.ResourceExhausted {
		return false
	}
	if errors.Is(err, ErrShed) || errors.Is(err, ErrLimited) {
		return true
	}
	st, _ := status.FromError(err)
	if slices.Contains(messages[:], st.Message()) {
		return true // a tap's lean answer (tapDetailsPerSecond); MessageExpired never comes with this code
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorInfoDomain {
			return true
		}
	}
	return false
}

// StreamServerInterceptor returns the Shedder's stream server
// interceptor. Streams count against StreamLimit, apart from unary calls,
// and never measure a service time.
func (s *Shedder) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		method := info.FullMethod
		if s.exempted(method) {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		// The tap may have taken this stream for a unary call (its method
		// entry was made, but not yet marked a stream) and let it through
		// at the limit: release that count now, not at the stream's end.
		s.arrived(ctx)
		_, _ = s.admitted(ctx) // the tap counted it as a unary call: it will never take a unary slot
		st := s.serviceTime(method)
		if !st.stream.Load() {
			st.stream.Store(true) // the tap counts its next requests as streams
		}
		if r, ok := s.admitStream(ctx); !ok {
			return s.refuseWithTrailer(ctx, r, method, st, func(md metadata.MD) error { ss.SetTrailer(md); return nil })
		}
		defer s.streams.Add(-1)
		return handler(srv, ss)
	}
}
