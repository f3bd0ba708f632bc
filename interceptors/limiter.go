package interceptors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/grpcreuse/grpcreuse/internal/keyed"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// LimiterOption configures NewLimiter.
type LimiterOption interface {
	applyLimiter(*limiterOptions)
}

type limiterOptionFunc func(*limiterOptions)

func (f limiterOptionFunc) applyLimiter(o *limiterOptions) { f(o) }

type limiterOptions struct {
	cfg     LimiterConfig
	keyFunc func(target, method string) string
	obs     telemetry.LimiterObserver
}

// WithLimiterConfig replaces the whole Limiter configuration; start from
// DefaultLimiterConfig. NewLimiter validates it.
func WithLimiterConfig(c LimiterConfig) LimiterOption {
	return limiterOptionFunc(func(o *limiterOptions) { o.cfg = c })
}

// WithLimiterKeyFunc keys limiters by fn(target, method) instead of by
// LimiterConfig.Scope. fn runs on every call and must be safe for
// concurrent use.
func WithLimiterKeyFunc(fn func(target, method string) string) LimiterOption {
	return limiterOptionFunc(func(o *limiterOptions) { o.keyFunc = fn })
}

// WithLimiterObserver sends limit changes and rejections to obs. Default
// telemetry.Nop. obs is called without any lock held.
func WithLimiterObserver(obs telemetry.LimiterObserver) LimiterOption {
	return limiterOptionFunc(func(o *limiterOptions) { o.obs = obs })
}

// Limiter is a client-side concurrency limit per key (target by default),
// with a bounded FIFO wait queue. A call waits at most MaxWait, never past
// its deadline, and is rejected with codes.ResourceExhausted (unwrapping
// to ErrLimited) naming the key and the limit. Safe for concurrent use; it
// starts no goroutines.
type Limiter struct {
	cfg     LimiterConfig
	algo    *algo
	keyFunc func(target, method string) string
	keys    *keyed.Map[*limiter]
}

// NewLimiter returns a Limiter (defaults: DefaultLimiterConfig,
// telemetry.Nop) or a *ConfigError.
func NewLimiter(opts ...LimiterOption) (*Limiter, error) {
	o := limiterOptions{cfg: DefaultLimiterConfig(), obs: telemetry.Nop{}}
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("interceptors: NewLimiter: option %d is nil", i)
		}
		opt.applyLimiter(&o)
	}
	if o.obs == nil {
		return nil, errors.New("interceptors: WithLimiterObserver(nil); pass telemetry.Nop{} to observe nothing")
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	a := newAlgo(o.cfg.LimitConfig, o.cfg.MaxQueued, o.cfg.MaxWait, o.obs)
	keys, err := keyed.New(o.cfg.MaxKeys, func(name string) *limiter { return newLimiter(name, a) })
	if err != nil {
		return nil, err // unreachable: Validate requires MaxKeys >= 1
	}
	return &Limiter{cfg: o.cfg, algo: a, keyFunc: o.keyFunc, keys: keys}, nil
}

func (l *Limiter) keyOf(target, method string) keyed.Key {
	switch {
	case l.keyFunc != nil:
		return keyed.Key{Target: l.keyFunc(target, method)}
	case l.cfg.Scope == ScopeMethod:
		return keyed.Key{Target: target, Method: method}
	}
	return keyed.Key{Target: target}
}

func (l *Limiter) get(target, method string) *limiter { return l.keys.Get(l.keyOf(target, method)) }

// Snapshot describes every key's limiter, for the debug page (rejections
// are counted by observers).
func (l *Limiter) Snapshot() []LimiterStatus {
	lims := l.keys.Values()
	out := make([]LimiterStatus, 0, len(lims))
	for _, lim := range lims {
		lim.mu.Lock()
		q := len(lim.queue)
		lim.mu.Unlock()
		out = append(out, LimiterStatus{Key: lim.key, Limit: int(lim.limit.Load()), InFlight: int(lim.inflight.Load()), Queued: q})
	}
	return out
}

// LimiterStatus describes one key's limiter, as Snapshot reports it.
type LimiterStatus struct {
	Key              string
	Limit            int
	InFlight, Queued int
}

// LimiterStats is a snapshot of one key's limiter.
type LimiterStats struct {
	// Limit is the current concurrency limit.
	Limit int
	// InFlight is how many calls hold a slot.
	InFlight int
	// Queued is how many calls wait for one.
	Queued int
}

// Stats returns the state of the limiter for calls to method on target;
// a key without a limiter reports the initial limit and nothing in flight.
func (l *Limiter) Stats(target, method string) LimiterStats {
	lim, ok := l.keys.Peek(l.keyOf(target, method))
	if !ok {
		return LimiterStats{Limit: l.cfg.Limit}
	}
	lim.mu.Lock()
	q := len(lim.queue)
	lim.mu.Unlock()
	return LimiterStats{Limit: int(lim.limit.Load()), InFlight: int(lim.inflight.Load()), Queued: q}
}

// UnaryClientInterceptor returns the Limiter as a unary client interceptor.
func (l *Limiter) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return limiterUnary(func(string) *Limiter { return l })
}

// StreamClientInterceptor returns the Limiter as a stream client
// interceptor. A stream holds its slot from establishment until its final
// status (or the caller's cancellation).
func (l *Limiter) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return limiterStream(func(string) *Limiter { return l })
}

func limiterUnary(route func(method string) *Limiter) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		lim := route(method)
		if lim == nil {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		l := lim.get(cc.Target(), method)
		if err := l.acquire(ctx); err != nil {
			return err
		}
		var start time.Time
		if l.algo.needsClock() {
			start = time.Now()
		}
		released := false
		defer func() {
			if !released { // invoker panicked
				l.release(outcomeIgnored, 0)
			}
		}()
		err := invoker(ctx, method, req, reply, cc, opts...)
		released = true
		var took time.Duration
		if l.algo.needsClock() {
			took = time.Since(start)
		}
		l.release(clientOutcome(ctx, err), took)
		return err
	}
}

func limiterStream(route func(method string) *Limiter) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		lim := route(method)
		if lim == nil {
			return streamer(ctx, desc, cc, method, opts...)
		}
		l := lim.get(cc.Target(), method)
		if err := l.acquire(ctx); err != nil {
			return nil, err
		}
		start := time.Now()
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			l.release(clientOutcome(ctx, err), time.Since(start))
			return nil, err
		}
		s := &endStream{ClientStream: cs, ctx: ctx, serverStreams: desc.ServerStreams}
		s.end = func(err error) {
			// A stream's lifetime is not a service time: AIMD sees only
			// its final status.
			l.release(clientOutcome(ctx, err), 0)
		}
		s.watch()
		return s, nil
	}
}

// endStream reports once when a client stream ends: its final status from
// RecvMsg, a client-side SendMsg failure, or the caller's cancellation
// (context.AfterFunc, for callers that stop reading after cancelling).
type endStream struct {
	grpc.ClientStream
	ctx           context.Context
	serverStreams bool
	end           func(err error) // err nil: OK
	ended         atomic.Bool
	stop          func() bool
}

func (s *endStream) watch() {
	s.stop = context.AfterFunc(s.ctx, func() { s.finish(s.ctx.Err(), true) })
}

func (s *endStream) finish(err error, fromAfterFunc bool) {
	if !s.ended.CompareAndSwap(false, true) {
		return
	}
	if !fromAfterFunc {
		s.stop()
	}
	if err == io.EOF {
		err = nil
	}
	s.end(err)
}

// RecvMsg passes the message on and reports the stream's end: a non-nil
// error, or for a stream without server streaming its one response.
func (s *endStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil || !s.serverStreams {
		s.finish(err, false)
	}
	return err
}

// SendMsg passes the message on; an error other than io.EOF ends the
// stream on the client side.
func (s *endStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err != nil && err != io.EOF {
		s.finish(errClientSide, false)
	}
	return err
}

// errClientSide marks a stream ended by a client-side SendMsg failure,
// which says nothing about the backend.
var errClientSide = errors.New("interceptors: stream failed on the client side")
