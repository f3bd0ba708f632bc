package interceptors

import (
	"context"
	"errors"
	"strconv"
	"sync"
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

// ErrShed is the cause of every request a Shedder sheds; the status sent
// to the client has code codes.ResourceExhausted.
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

// limiter is one key's concurrency limit with a FIFO wait queue.
//
// The fast path is lock-free: with nobody waiting, acquire is a CAS on
// inflight. mu guards the queue. The lost-wakeup argument: a waiter adds
// itself to waiters (under mu) before its last look at inflight, and
// release decrements inflight before it looks at waiters; so either the
// waiter sees the freed slot or release sees the waiter and dispatches.
type limiter struct {
	key   string
	label string // quoted key, with the tenant: for messages
	algo  *algo

	limit    atomic.Int64
	inflight atomic.Int64
	waiters  atomic.Int64 // calls in the slow path (queued or about to be)
	rejected atomic.Uint64

	mu    sync.Mutex
	queue []*waiter // guarded by mu; FIFO
}

type waiter struct {
	ch      chan struct{}
	granted bool // guarded by limiter.mu
}

func newLimiter(key string, a *algo) *limiter {
	l := &limiter{key: key, algo: a, label: strconv.Quote(key)}
	if a.tenant != "" {
		l.label += " (tenant " + strconv.Quote(a.tenant) + ")"
	}
	l.limit.Store(a.initial)
	return l
}

func (l *limiter) tryAcquire() bool {
	for {
		n := l.inflight.Load()
		if n >= l.limit.Load() {
			return false
		}
		if l.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// acquire takes a slot, waiting in the queue if allowed. It returns nil,
// a ResourceExhausted rejection, or the caller's cancellation.
func (l *limiter) acquire(ctx context.Context) error {
	if l.waiters.Load() == 0 && l.tryAcquire() {
		return nil
	}
	return l.acquireSlow(ctx)
}

func (l *limiter) acquireSlow(ctx context.Context) error {
	a := l.algo
	l.mu.Lock()
	l.waiters.Add(1)
	if len(l.queue) == 0 && l.tryAcquire() {
		l.waiters.Add(-1)
		l.mu.Unlock()
		return nil
	}
	if len(l.queue) >= a.maxQueued {
		l.waiters.Add(-1)
		l.mu.Unlock()
		return l.reject(ReasonQueueFull)
	}
	wait, reason := a.maxWait, ReasonMaxWait
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < wait {
			wait, reason = left, ReasonDeadline
		}
	}
	if wait <= 0 {
		l.waiters.Add(-1)
		l.mu.Unlock()
		return l.reject(ReasonDeadline)
	}
	w := &waiter{ch: make(chan struct{}, 1)}
	l.queue = append(l.queue, w)
	l.mu.Unlock()

	t := time.NewTimer(wait)
	select {
	case <-w.ch:
		t.Stop()
		return nil
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		if ctx.Err() == context.DeadlineExceeded {
			reason = ReasonDeadline
		} else {
			reason = ""
		}
	}
	l.mu.Lock()
	if w.granted {
		l.mu.Unlock()
		if ctx.Err() == nil {
			return nil // the slot came as the wait ended: use it
		}
		l.release(outcomeIgnored, 0)
	} else {
		for i, q := range l.queue {
			if q == w {
				l.queue = append(l.queue[:i], l.queue[i+1:]...)
				break
			}
		}
		l.waiters.Add(-1)
		l.mu.Unlock()
	}
	if reason == "" {
		return status.FromContextError(ctx.Err()).Err()
	}
	return l.reject(reason)
}

// dispatch hands free slots to waiters in FIFO order.
func (l *limiter) dispatch() {
	l.mu.Lock()
	for len(l.queue) > 0 && l.tryAcquire() {
		w := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		w.granted = true
		l.waiters.Add(-1)
		w.ch <- struct{}{}
	}
	if len(l.queue) == 0 {
		l.queue = l.queue[:0:0] // let the backing array go
	}
	l.mu.Unlock()
}

// release frees a slot and, for AIMD, moves the limit by the call's
// outcome and latency.
func (l *limiter) release(o outcome, latency time.Duration) {
	inflight := l.inflight.Add(-1) + 1
	if l.algo.adaptive && o != outcomeIgnored {
		if l.algo.latency > 0 && latency > l.algo.latency {
			o = outcomeDrop
		}
		l.adapt(inflight, o == outcomeDrop)
	}
	if l.waiters.Load() > 0 {
		l.dispatch()
	}
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
