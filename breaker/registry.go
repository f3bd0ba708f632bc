package breaker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/keyed"
	"github.com/grpcreuse/grpcreuse/internal/rpcerr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ErrOpen is the cause of every call an open (or fully probed half-open)
// breaker fails fast. The error returned to callers has code
// codes.Unavailable and errors.Is(err, ErrOpen) holds.
var ErrOpen = errors.New("breaker: circuit open")

// Registry keeps one circuit breaker per key (target, target+method, or a
// key function's result), creating breakers on first use and dropping the
// least recently used beyond Config.MaxBreakers. All methods are safe for
// concurrent use. A Registry starts no goroutines and needs no Close.
type Registry struct {
	cfg      Config
	failure  uint32 // bit c set: code c counts as failure
	keyFunc  func(target, method string) string
	obs      telemetry.BreakerObserver
	breakers *keyed.Map[*Breaker]
}

// New returns a Registry configured by opts (defaults: DefaultConfig,
// telemetry.Nop). It fails with a *ConfigError if the Config is invalid.
func New(opts ...Option) (*Registry, error) {
	o := defaultOptions()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("breaker: New: option %d is nil", i)
		}
		opt.apply(&o)
	}
	if o.obs == nil {
		return nil, errNilObserver
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Registry{cfg: o.cfg, keyFunc: o.keyFunc, obs: o.obs}
	for _, c := range o.cfg.FailureCodes {
		r.failure |= 1 << c
	}
	var err error
	if r.breakers, err = keyed.New(o.cfg.MaxBreakers, r.newBreaker); err != nil {
		return nil, err // unreachable: Validate requires MaxBreakers >= 1
	}
	return r, nil
}

// Config returns the registry's policy.
func (r *Registry) Config() Config {
	c := r.cfg
	c.FailureCodes = append([]codes.Code(nil), c.FailureCodes...)
	return c
}

// Len returns how many breakers the registry holds.
func (r *Registry) Len() int {
	return r.breakers.Len()
}

// Get returns the breaker for a call to method (a full method name,
// "/pkg.Service/Method") on target, creating it closed if needed. It does
// not allocate when the breaker exists and no key function is set.
func (r *Registry) Get(target, method string) *Breaker {
	return r.breakers.Get(r.keyOf(target, method))
}

// State returns the state of the breaker for a call to method on target
// without creating it or refreshing its recency; a breaker the registry
// does not hold is closed.
func (r *Registry) State(target, method string) telemetry.BreakerState {
	k := r.keyOf(target, method)
	if b, ok := r.breakers.Peek(k); ok {
		return b.State()
	}
	return telemetry.BreakerClosed
}

// Status describes one breaker, as Snapshot reports it.
type Status struct {
	Key   string
	State string
	// Since is when an open breaker opened; zero otherwise.
	Since time.Time
	// NextProbe is when an open breaker lets a probe through; zero otherwise.
	NextProbe time.Time
	// Requests, Failures and ConsecutiveFailures are the breaker's counts
	// in its current window (reset on each state change).
	Requests, Failures, ConsecutiveFailures uint32
}

// Snapshot describes every breaker the registry holds, for the debug
// page: state, next probe and counts (rejections are counted by observers).
func (r *Registry) Snapshot() []Status {
	bs := r.breakers.Values()
	out := make([]Status, 0, len(bs))
	for _, b := range bs {
		st := b.State()
		c := b.cb.Counts()
		d := Status{Key: b.key, State: st.String(), Requests: c.Requests,
			Failures: c.TotalFailures, ConsecutiveFailures: c.ConsecutiveFailures}
		if at := b.openedAt.Load(); at != 0 && st == telemetry.BreakerOpen {
			d.Since = time.Unix(0, at)
			d.NextProbe = d.Since.Add(r.cfg.OpenTimeout)
		}
		out = append(out, d)
	}
	return out
}

func (r *Registry) keyOf(target, method string) keyed.Key {
	switch {
	case r.keyFunc != nil:
		return keyed.Key{Target: r.keyFunc(target, method)}
	case r.cfg.Scope == ScopeMethod:
		return keyed.Key{Target: target, Method: method}
	}
	return keyed.Key{Target: target}
}

func (r *Registry) newBreaker(name string) *Breaker {
	b := &Breaker{key: name, reg: r}
	cfg := r.cfg
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         name,
		MaxRequests:  uint32(cfg.HalfOpenProbes),
		Interval:     cfg.Window,
		BucketPeriod: cfg.Window / time.Duration(cfg.WindowBuckets),
		Timeout:      cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if cfg.ConsecutiveFailures > 0 && c.ConsecutiveFailures >= uint32(cfg.ConsecutiveFailures) {
				return true
			}
			done := uint64(c.TotalFailures) + uint64(c.TotalSuccesses)
			return cfg.FailureRatio > 0 && done >= uint64(cfg.MinimumRequests) &&
				float64(c.TotalFailures) >= cfg.FailureRatio*float64(done)
		},
		// OnStateChange runs under gobreaker's mutex: only record here
		// (STYLE §8); flush reports to the observer afterwards.
		OnStateChange: b.record,
		IsSuccessful:  func(err error) bool { return err != errFailure },
		IsExcluded:    func(err error) bool { return err == errExcluded },
	})
	return b
}

// Outcomes handed to gobreaker: classification happens in Token.Done,
// which knows the caller's context; gobreaker only sees these sentinels.
var (
	errFailure  = errors.New("breaker: failure")
	errExcluded = errors.New("breaker: excluded")
)

// Breaker is the circuit breaker of one key. Its methods are safe for
// concurrent use.
type Breaker struct {
	key string
	reg *Registry
	cb  *gobreaker.TwoStepCircuitBreaker[struct{}]

	openedAt atomic.Int64 // UnixNano of the last move to open

	// pending holds state changes recorded under gobreaker's lock and not
	// yet reported. Delivery is serialised by delivering, not by holding
	// mu, so the observer runs without any of our locks.
	npending   atomic.Int32
	mu         sync.Mutex
	pending    []transition // guarded by mu
	delivering bool         // guarded by mu
}

type transition struct{ from, to telemetry.BreakerState }

// Key returns the breaker's key: the target, target+method, or what the
// key function returned.
func (b *Breaker) Key() string { return b.key }

// State returns the breaker's current state (an open breaker whose
// OpenTimeout passed reports half-open).
func (b *Breaker) State() telemetry.BreakerState {
	s := toState(b.cb.State())
	b.flush()
	return s
}

// Token is the permission to make one call. Report its outcome with Done
// or Ignore exactly once; a zero Token does nothing.
type Token struct {
	b    *Breaker
	done func(error)
}

// Allow asks the breaker for permission to make a call. If the breaker is
// open, or half-open with all its probes in flight, it returns an error
// with code codes.Unavailable that unwraps to ErrOpen and names the key
// and when the breaker probes again.
func (b *Breaker) Allow() (Token, error) {
	done, err := b.cb.Allow()
	b.flush()
	if err != nil {
		b.reg.obs.BreakerRejected(b.key)
		return Token{}, b.rejection(err)
	}
	return Token{b: b, done: done}, nil
}

// Done reports the outcome of the call: err is what the call returned and
// ctx the caller's context. nil and codes outside Config.FailureCodes are
// successes; a caller's own cancellation or expired deadline, and
// codes.Canceled, are excluded (counted neither way); a DeadlineExceeded
// that arrives within 1ms of the caller's deadline is the caller's.
func (t Token) Done(ctx context.Context, err error) {
	if t.done == nil {
		return
	}
	t.done(t.b.reg.classify(ctx, err))
	t.b.flush()
}

// Ignore reports that the call's outcome says nothing about the backend
// (for example, a local limiter rejected it); it counts neither way.
func (t Token) Ignore() {
	if t.done == nil {
		return
	}
	t.done(errExcluded)
	t.b.flush()
}

// classify maps a call's result to nil (success), errFailure or errExcluded.
func (r *Registry) classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if callerGaveUp(ctx) {
		return errExcluded // never the backend's fault
	}
	c := status.Code(err)
	switch {
	case c == codes.Canceled || xdsLocalDrop(c, err): // localdrop.go
		return errExcluded
	case c < 32 && r.failure&(1<<c) != 0:
		return errFailure
	}
	return nil
}

// ownDeadlineSlack absorbs timer latency: a DeadlineExceeded that arrives
// within this of the caller's deadline is the caller's deadline.
const ownDeadlineSlack = time.Millisecond

// callerGaveUp reports whether the caller's context is cancelled or past
// its deadline. ctx.Err alone is not enough: the server's status for the
// caller's own (propagated) deadline can arrive before the caller's context
// timer has fired.
func callerGaveUp(ctx context.Context) bool {
	if ctx == nil {
		return false
	}
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) <= ownDeadlineSlack
}

func (b *Breaker) rejection(err error) error {
	var msg string
	if errors.Is(err, gobreaker.ErrTooManyRequests) {
		msg = "breaker: " + strconv.Quote(b.key) + " is half-open and all " +
			strconv.Itoa(b.reg.cfg.HalfOpenProbes) + " probe(s) are in flight; retry when they finish"
	} else {
		next := time.Until(time.Unix(0, b.openedAt.Load()).Add(b.reg.cfg.OpenTimeout))
		if next <= 0 {
			msg = "breaker: " + strconv.Quote(b.key) + " is open; probing again now"
		} else {
			msg = "breaker: " + strconv.Quote(b.key) + " is open; probing again in " + next.Round(time.Millisecond).String()
		}
	}
	return rpcerr.New(codes.Unavailable, msg, ErrOpen)
}

// record runs under gobreaker's mutex: it stores the change, nothing more.
func (b *Breaker) record(_ string, from, to gobreaker.State) {
	if to == gobreaker.StateOpen {
		b.openedAt.Store(time.Now().UnixNano())
	}
	b.mu.Lock()
	b.pending = append(b.pending, transition{toState(from), toState(to)})
	b.mu.Unlock()
	b.npending.Add(1)
}

// flush reports recorded state changes, in order, outside every lock. If
// another goroutine is already delivering, it picks ours up too.
func (b *Breaker) flush() {
	if b.npending.Load() == 0 {
		return
	}
	b.mu.Lock()
	if b.delivering {
		b.mu.Unlock()
		return
	}
	b.delivering = true
	for len(b.pending) > 0 {
		batch := b.pending
		b.pending = nil
		b.npending.Add(-int32(len(batch)))
		b.mu.Unlock()
		for _, t := range batch {
			b.reg.obs.BreakerStateChanged(b.key, t.from, t.to)
		}
		b.mu.Lock()
	}
	b.delivering = false
	b.mu.Unlock()
}

func toState(s gobreaker.State) telemetry.BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return telemetry.BreakerOpen
	case gobreaker.StateHalfOpen:
		return telemetry.BreakerHalfOpen
	}
	return telemetry.BreakerClosed
}
