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
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/keyed"
	"github.com/grpcreuse/grpcreuse/internal/rpcerr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ErrOpen is the cause of every call an open (or fully probed half-open)
// breaker fails fast. The error returned to callers has code
// codes.Unavailable and errors.Is(err, ErrOpen) holds.
var ErrOpen = errors.New("breaker: circuit open")

var logger = grpclog.Component("grpcreuse-breaker")

// State is the state of a circuit breaker.
type State int

// Circuit breaker states.
const (
	// StateClosed lets every call through and counts outcomes.
	StateClosed State = iota
	// StateHalfOpen lets Config.HalfOpenProbes probes through.
	StateHalfOpen
	// StateOpen fails every call fast.
	StateOpen
)

// String returns "closed", "half_open" or "open".
func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half_open"
	case StateOpen:
		return "open"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

func (s State) telemetry() telemetry.BreakerState {
	switch s {
	case StateOpen:
		return telemetry.BreakerOpen
	case StateHalfOpen:
		return telemetry.BreakerHalfOpen
	}
	return telemetry.BreakerClosed
}

// Registry keeps one circuit breaker per key (target, target+method, or a
// key function's result), creating breakers on first use and keeping at
// most about Config.MaxBreakers of them. The least recently used breaker
// that is closed and has no call in flight is dropped to make room; an
// open or half-open breaker, or one with calls in flight, is never
// dropped (it would come back closed). When every breaker a new key could
// displace is in use, the key shares an overflow breaker (named
// keyed.OverflowName) with the other keys in that position, so failures
// still trip something. All methods are safe for concurrent use. A
// Registry starts no goroutines and needs no Close.
type Registry struct {
	cfg      Config
	tenant   string
	failure  uint32 // bit c set: code c counts as failure
	keyFunc  func(target, method string) string
	obs      telemetry.BreakerObserver
	breakers *keyed.Map[*Breaker]
}

// New returns a Registry configured by opts (defaults: DefaultConfig,
// telemetry.Nop). It fails with an error wrapping a *ConfigError if the
// Config is invalid.
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
	r := &Registry{cfg: o.cfg, tenant: o.tenant, keyFunc: o.keyFunc, obs: o.obs}
	for _, c := range o.cfg.FailureCodes {
		r.failure |= 1 << c
	}
	var err error
	busy := func(b *Breaker) bool { return State(b.state.Load()) != StateClosed }
	if r.breakers, err = keyed.New(o.cfg.MaxBreakers, r.newBreaker, busy); err != nil {
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

// Tenant returns the tenant the registry's breakers belong to (WithTenant),
// "" for none.
func (r *Registry) Tenant() string { return r.tenant }

// Len returns how many breakers the registry holds.
func (r *Registry) Len() int {
	return r.breakers.Len()
}

// Get returns the breaker for a call to method (a full method name,
// "/pkg.Service/Method") on target, creating it closed if needed. It does
// not allocate when the breaker exists and no key function is set. A
// breaker obtained with Get may be dropped while closed and idle; to make
// calls, prefer Registry.Allow, which keeps the breaker until the call's
// Token is reported.
func (r *Registry) Get(target, method string) *Breaker {
	return r.breakers.Get(r.keyOf(target, method))
}

// Allow asks the breaker for a call to method on target for permission,
// as Breaker.Allow does, and keeps that breaker in the registry until the
// Token is reported. It does not allocate beyond gobreaker's one closure
// when the breaker exists and no key function is set.
func (r *Registry) Allow(target, method string) (Token, error) {
	ref := r.breakers.Acquire(r.keyOf(target, method))
	tok, err := ref.Value().Allow()
	if err != nil {
		ref.Release()
		return Token{}, err
	}
	tok.ref = ref
	return tok, nil
}

// State returns the state of the breaker for a call to method on target
// without creating it or refreshing its recency; a breaker the registry
// does not hold is closed.
func (r *Registry) State(target, method string) State {
	k := r.keyOf(target, method)
	if b, ok := r.breakers.Peek(k); ok {
		return b.State()
	}
	return StateClosed
}

// Status describes one breaker, for debug pages and tests.
type Status struct {
	// Tenant is the registry's tenant (WithTenant), "" for none.
	Tenant string
	// Key is the breaker's key (Breaker.Key).
	Key string
	// State is the breaker's current state.
	State State
	// Since is when the breaker last changed state; zero if it never did.
	Since time.Time
	// NextProbe is when an open breaker lets a probe through; zero unless
	// State is StateOpen.
	NextProbe time.Time
	// Requests, Failures and ConsecutiveFailures are the breaker's counts
	// in its current window (reset on each state change).
	Requests, Failures, ConsecutiveFailures uint32
	// Rejections counts the calls the breaker failed fast since it was made.
	Rejections uint64
}

// Snapshot describes every breaker the registry holds, in no particular
// order. It takes each breaker's lock briefly and calls no observer.
func (r *Registry) Snapshot() []Status {
	bs := r.breakers.Values()
	out := make([]Status, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.status())
	}
	return out
}

func (b *Breaker) status() Status {
	st := toState(b.cb.State())
	c := b.cb.Counts()
	s := Status{Tenant: b.reg.tenant, Key: b.key, State: st, Requests: c.Requests,
		Failures: c.TotalFailures, ConsecutiveFailures: c.ConsecutiveFailures, Rejections: b.rejections.Load()}
	if at := b.changedAt.Load(); at != 0 {
		s.Since = time.Unix(0, at)
	}
	if at := b.openedAt.Load(); at != 0 && st == StateOpen {
		s.NextProbe = time.Unix(0, at).Add(b.reg.cfg.OpenTimeout)
	}
	return s
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
	b := &Breaker{key: name, reg: r, label: strconv.Quote(name)}
	if r.tenant != "" {
		b.label += " (tenant " + strconv.Quote(r.tenant) + ")"
	}
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
//
// Lock order: gobreaker's mutex, then mu or probeMu (record runs under
// gobreaker's mutex); gobreaker is never called with mu or probeMu held.
type Breaker struct {
	key   string
	label string // quoted key, with the tenant: for messages
	reg   *Registry
	cb    *gobreaker.TwoStepCircuitBreaker[struct{}]

	state      atomic.Int32 // State, as last recorded
	openedAt   atomic.Int64 // UnixNano of the last move to open
	changedAt  atomic.Int64 // UnixNano of the last state change
	rejections atomic.Uint64

	// probes are the half-open probes not yet reported, oldest first.
	probeMu sync.Mutex
	probes  []*probe // guarded by probeMu

	// pending holds state changes recorded under gobreaker's lock and not
	// yet reported. Delivery is serialised by delivering, not by holding
	// mu, so the observer runs without any of our locks.
	npending   atomic.Int32
	mu         sync.Mutex
	pending    []transition // guarded by mu
	delivering bool         // guarded by mu
}

// probe is one call a half-open breaker let through.
type probe struct {
	start    time.Time
	done     func(error)
	reported atomic.Bool
}

type transition struct{ from, to State }

// Key returns the breaker's key: the target, target+method, or what the
// key function returned.
func (b *Breaker) Key() string { return b.key }

// State returns the breaker's current state (an open breaker whose
// OpenTimeout passed reports half-open).
func (b *Breaker) State() State {
	s := toState(b.cb.State())
	b.flush()
	return s
}

// Token is the permission to make one call. Report its outcome with Done
// or Ignore exactly once; a zero Token does nothing.
type Token struct {
	b     *Breaker
	done  func(error)
	probe *probe              // non-nil for a half-open probe
	ref   keyed.Ref[*Breaker] // set by Registry.Allow
}

// Allow asks the breaker for permission to make a call. If the breaker is
// open, or half-open with all its probes in flight (and none older than
// Config.ProbeTimeout), it returns an error with code codes.Unavailable
// that unwraps to ErrOpen and names the key and when the breaker probes
// again.
func (b *Breaker) Allow() (Token, error) {
	done, err := b.cb.Allow()
	b.flush()
	if err != nil && errors.Is(err, gobreaker.ErrTooManyRequests) && b.expireProbes() {
		done, err = b.cb.Allow() // the stale probe reopened the breaker: this fails fast as open
		b.flush()
	}
	if err != nil {
		b.rejections.Add(1)
		b.reg.obs.BreakerRejected(b.reg.tenant, b.key)
		return Token{}, b.rejection(err)
	}
	t := Token{b: b, done: done}
	if State(b.state.Load()) == StateHalfOpen {
		p := &probe{start: time.Now(), done: done}
		b.probeMu.Lock()
		b.probes = append(b.probes, p)
		b.probeMu.Unlock()
		t.probe = p
	}
	return t, nil
}

// expireProbes reports every probe older than ProbeTimeout as failed, and
// says whether there was one.
func (b *Breaker) expireProbes() bool {
	limit := b.reg.cfg.ProbeTimeout
	var stale []*probe
	b.probeMu.Lock()
	kept := b.probes[:0]
	for _, p := range b.probes {
		if time.Since(p.start) >= limit && p.reported.CompareAndSwap(false, true) {
			stale = append(stale, p)
			continue
		}
		kept = append(kept, p)
	}
	clear(b.probes[len(kept):])
	b.probes = kept
	b.probeMu.Unlock()
	for _, p := range stale {
		if logger.V(2) {
			logger.Infof("breaker %s: half-open probe unreported after %v; counting it as failed", b.label, limit)
		}
		p.done(errFailure)
		b.flush()
	}
	return len(stale) > 0
}

// settle marks t's probe reported; false if the probe timeout already
// reported it.
func (t Token) settle() bool {
	p := t.probe
	if p == nil {
		return true
	}
	if !p.reported.CompareAndSwap(false, true) {
		return false
	}
	b := t.b
	b.probeMu.Lock()
	for i, q := range b.probes {
		if q == p {
			b.probes = append(b.probes[:i], b.probes[i+1:]...)
			break
		}
	}
	b.probeMu.Unlock()
	return true
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
	defer t.ref.Release()
	if t.settle() {
		t.done(t.b.reg.classify(ctx, err))
	}
	t.b.flush()
}

// Ignore reports that the call's outcome says nothing about the backend
// (for example, a local limiter rejected it); it counts neither way.
func (t Token) Ignore() {
	if t.done == nil {
		return
	}
	defer t.ref.Release()
	if t.settle() {
		t.done(errExcluded)
	}
	t.b.flush()
}

// classify maps a call's result to nil (success), errFailure or errExcluded.
func (r *Registry) classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if rpcerr.CallerGaveUp(ctx) {
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

func (b *Breaker) rejection(err error) error {
	var msg string
	if errors.Is(err, gobreaker.ErrTooManyRequests) {
		msg = "breaker: " + b.label + " is half-open and all " +
			strconv.Itoa(b.reg.cfg.HalfOpenProbes) + " probe(s) are in flight; retry when they finish"
	} else {
		next := time.Until(time.Unix(0, b.openedAt.Load()).Add(b.reg.cfg.OpenTimeout))
		if next <= 0 {
			msg = "breaker: " + b.label + " is open; probing again now"
		} else {
			msg = "breaker: " + b.label + " is open; probing again in " + next.Round(time.Millisecond).String()
		}
	}
	return rpcerr.New(codes.Unavailable, msg, ErrOpen)
}

// record runs under gobreaker's mutex: it stores the change, nothing more.
func (b *Breaker) record(_ string, from, to gobreaker.State) {
	now := time.Now().UnixNano()
	if to == gobreaker.StateOpen {
		b.openedAt.Store(now)
	}
	b.changedAt.Store(now)
	b.state.Store(int32(toState(to)))
	if from == gobreaker.StateHalfOpen {
		// Probes of the old generation: gobreaker ignores their reports.
		b.probeMu.Lock()
		b.probes = nil
		b.probeMu.Unlock()
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
			if logger.V(2) {
				logger.Infof("breaker %s: %v -> %v", b.label, t.from, t.to)
			}
			b.reg.obs.BreakerStateChanged(b.reg.tenant, b.key, t.from.telemetry(), t.to.telemetry())
		}
		b.mu.Lock()
	}
	b.delivering = false
	b.mu.Unlock()
}

func toState(s gobreaker.State) State {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	}
	return StateClosed
}
