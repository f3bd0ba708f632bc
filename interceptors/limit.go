package interceptors

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/rpcerr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ErrLimited is the cause of every call a client Limiter rejects; the
// error returned to the caller has code codes.ResourceExhausted.
var ErrLimited = errors.New("interceptors: concurrency limit reached")

// ErrShed is what the error of a request a Shedder shed unwraps to on the
// server (errors.Is), for an interceptor chained outside the Shedder's; a
// request shed by the tap reaches no interceptor, and one that arrived
// after its deadline unwraps to context.DeadlineExceeded instead. The
// client gets only the status: ResourceExhausted, one of the Message*
// texts and the ErrorInfo (and RetryInfo) details, or for an expired
// request DeadlineExceeded, MessageExpired and no details;
// errors.Is(err, ErrShed) is false there.
var ErrShed = errors.New("interceptors: request shed")

// Reasons passed to telemetry.LimiterObserver.LimiterRejected.
const (
	// ReasonQueueFull: the limit was reached and the wait queue was full
	// (or disabled).
	ReasonQueueFull = "queue_full"
	// ReasonMaxWait: the call waited LimiterConfig.MaxWait without a slot.
	ReasonMaxWait = "max_wait"
	// ReasonDeadline: the call's deadline left no time to wait for a slot
	// (client), or was shorter than the method's recent service time
	// (server).
	ReasonDeadline = "deadline"
	// ReasonLimit: a server was at its in-flight limit.
	ReasonLimit = "limit"
)

var logger = grpclog.Component("grpcreuse-interceptors")

// outcome is what a finished call tells an adaptive limit.
type outcome uint8

const (
	outcomeOK      outcome = iota
	outcomeDrop            // overload signal: decrease
	outcomeIgnored         // says nothing (caller cancelled)
)

// algo is the immutable part of a limiter, shared by every key of one
// Limiter or Shedder.
type algo struct {
	adaptive  bool
	initial   int64
	min, max  int64
	backoff   float64
	latency   time.Duration // 0: not used
	maxQueued int
	maxWait   time.Duration
	obs       telemetry.LimiterObserver
	tenant    string // client Limiter's WithLimiterTenant; for messages and status
}

func newAlgo(c LimitConfig, maxQueued int, maxWait time.Duration, obs telemetry.LimiterObserver) *algo {
	return &algo{
		adaptive: c.Algorithm == AIMD, initial: int64(c.Limit), min: int64(c.MinLimit), max: int64(c.MaxLimit),
		backoff: c.BackoffRatio, latency: c.LatencyThreshold, maxQueued: maxQueued, maxWait: maxWait, obs: obs,
	}
}

// needsClock says whether release needs the call's start time.
func (a *algo) needsClock() bool { return a.adaptive && a.latency > 0 }

// limiter is one key's concurrency limit with a FIFO wait queue (slots).
type limiter struct {
	slots
	key   string
	label string // quoted key, with the tenant: for messages
	algo  *algo

	rejected atomic.Uint64
}

func newLimiter(key string, a *algo) *limiter {
	l := &limiter{key: key, algo: a, label: strconv.Quote(key)}
	if a.tenant != "" {
		l.label += " (tenant " + strconv.Quote(a.tenant) + ")"
	}
	l.limit.Store(a.initial)
	return l
}

// acquire takes a slot, waiting in the queue if allowed. It returns nil,
// a ResourceExhausted rejection, or the caller's cancellation.
func (l *limiter) acquire(ctx context.Context) error {
	if l.waiters.Load() == 0 && l.tryAcquire(l.limit.Load()) {
		// The fast path, here and not only in slots.acquire: building the
		// wait closure on every call cost 370 → 530 ns a call in
		// BenchmarkInterceptorPass/breaker+limiter/parallel.
		return nil
	}
	a := l.algo
	reason := ReasonMaxWait
	res := l.slots.acquire(ctx, l.limit.Load(), a.maxQueued, func() time.Duration {
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); left < a.maxWait {
				reason = ReasonDeadline
				return left
			}
		}
		return a.maxWait
	})
	switch res {
	case waitGranted:
		return nil
	case waitFull:
		return l.reject(ReasonQueueFull)
	case waitDone:
		if ctx.Err() != context.DeadlineExceeded {
			return status.FromContextError(ctx.Err()).Err()
		}
		reason = ReasonDeadline
	}
	return l.reject(reason)
}

// release frees a slot and, for AIMD, moves the limit by the call's
// outcome and latency.
func (l *limiter) release(o outcome, latency time.Duration) {
	inflight := l.free()
	if l.algo.adaptive && o != outcomeIgnored {
		if l.algo.latency > 0 && latency > l.algo.latency {
			o = outcomeDrop
		}
		l.adapt(inflight, o == outcomeDrop)
	}
	l.dispatchIfWaiting()
}

// adapt is AIMDLimit.update from Netflix concurrency-limits (see AIMD).
func (l *limiter) adapt(inflight int64, drop bool) {
	a := l.algo
	for {
		old := l.limit.Load()
		var next int64
		switch {
		case drop:
			next = max(a.min, int64(float64(old)*a.backoff))
		case inflight*2 >= old:
			next = min(a.max, old+1)
		default:
			return
		}
		if next == old {
			return
		}
		if l.limit.CompareAndSwap(old, next) {
			if next == a.min && logger.V(2) { // a state change, not a per-call event: once per fall to the floor
				logger.Infof("limiter %s: limit fell to its minimum %d after overload signals", l.label, next)
			}
			a.obs.LimiterLimitChanged(a.tenant, l.key, int(next))
			return
		}
	}
}

// busy reports a limiter that eviction would reset: calls hold or wait
// for its slots, or AIMD has lowered its limit.
func (l *limiter) busy() bool {
	return l.inflight.Load() > 0 || l.waiters.Load() > 0 || l.limit.Load() < l.algo.initial
}

func (l *limiter) reject(reason string) error {
	l.rejected.Add(1)
	l.algo.obs.LimiterRejected(l.algo.tenant, l.key, reason)
	lim := strconv.FormatInt(l.limit.Load(), 10)
	msg := "interceptors: " + l.label + " is at its concurrency limit of " + lim
	switch reason {
	case ReasonQueueFull:
		msg += " and its wait queue is full (" + strconv.Itoa(l.algo.maxQueued) + " calls)"
	case ReasonMaxWait:
		msg += "; no slot freed within " + l.algo.maxWait.String()
	case ReasonDeadline:
		msg += "; the call's deadline leaves no time to wait for a slot"
	}
	return rpcerr.New(codes.ResourceExhausted, msg, ErrLimited)
}

// clientOutcome classifies a client call's result for AIMD. The caller's
// own cancellation or expired deadline is not overload: it is ignored, as
// the breaker excludes it.
func clientOutcome(ctx context.Context, err error) outcome {
	if err == nil {
		return outcomeOK
	}
	if rpcerr.CallerGaveUp(ctx) {
		return outcomeIgnored
	}
	switch status.Code(err) {
	case codes.ResourceExhausted, codes.Unavailable, codes.DeadlineExceeded:
		return outcomeDrop
	case codes.Canceled:
		return outcomeIgnored
	}
	return outcomeOK
}
