package interceptors

import (
	"errors"
	"fmt"

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
	tenant  string
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

// WithLimiterTenant labels the Limiter's keys with tenant: it appears in
// LimiterStatus and in the messages of rejected calls. A Limiter serves
// one tenant; give each tenant its own (clientconn.Factory does), so one
// tenant's load never takes another's slots or lowers its limit.
func WithLimiterTenant(tenant string) LimiterOption {
	return limiterOptionFunc(func(o *limiterOptions) { o.tenant = tenant })
}

// WithLimiterObserver sends limit changes and rejections to obs. Default
// telemetry.Nop. obs is called without any lock held.
func WithLimiterObserver(obs telemetry.LimiterObserver) LimiterOption {
	return limiterOptionFunc(func(o *limiterOptions) { o.obs = obs })
}

// Limiter is a client-side concurrency limit per key (target by default),
// with a bounded FIFO wait queue. A call waits at most MaxWait, never past
// its deadline, and is rejected with codes.ResourceExhausted (unwrapping
// to ErrLimited) naming the key and the limit. Keys are bounded by
// MaxKeys: the least recently used idle key is dropped to make room, but a
// key with calls in flight or waiting, or whose AIMD limit is lowered, is
// never dropped (it would come back with free slots); while every key a
// new one could displace is in use, new keys share one overflow limiter
// (named keyed.OverflowName) with the configured limit, so the limit is
// never exceeded. Safe for concurrent use; it starts no goroutines.
type Limiter struct {
	cfg     LimiterConfig
	algo    *algo
	keyFunc func(target, method string) string
	keys    *keyed.Map[*limiter]
}

// NewLimiter returns a Limiter (defaults: DefaultLimiterConfig,
// telemetry.Nop) or an error wrapping a *ConfigError.
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
	a.tenant = o.tenant
	keys, err := keyed.New(o.cfg.MaxKeys, func(name string) *limiter { return newLimiter(name, a) }, (*limiter).busy)
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

// Tenant returns the tenant of WithLimiterTenant, "" for none.
func (l *Limiter) Tenant() string { return l.algo.tenant }

// LimiterStatus describes one key's client limiter.
type LimiterStatus struct {
	// Tenant is the Limiter's tenant (WithLimiterTenant), "" for none.
	Tenant string
	// Key is the limiter's key: target, target+method, or what the key
	// function returned.
	Key string
	// Limit is the current concurrency limit.
	Limit int
	// InFlight is how many calls hold a slot.
	InFlight int
	// Queued is how many calls wait for one.
	Queued int
	// Rejected counts the calls this key's limiter rejected since it was made.
	Rejected uint64
}

func (lim *limiter) status() LimiterStatus {
	return LimiterStatus{Tenant: lim.algo.tenant, Key: lim.key, Limit: int(lim.limit.Load()),
		InFlight: int(lim.inflight.Load()), Queued: lim.queued(), Rejected: lim.rejected.Load()}
}

// Snapshot describes every key's limiter, in no particular order.
func (l *Limiter) Snapshot() []LimiterStatus {
	lims := l.keys.Values()
	out := make([]LimiterStatus, 0, len(lims))
	for _, lim := range lims {
		out = append(out, lim.status())
	}
	return out
}

// Stats returns the state of the limiter for calls to method on target;
// a key without a limiter reports the initial limit and nothing in flight.
func (l *Limiter) Stats(target, method string) LimiterStatus {
	k := l.keyOf(target, method)
	lim, ok := l.keys.Peek(k)
	if !ok {
		return LimiterStatus{Tenant: l.algo.tenant, Key: k.Target + k.Method, Limit: l.cfg.Limit}
	}
	return lim.status()
}

// UnaryClientInterceptor returns the Limiter as a unary client
// interceptor: NewClientChain(WithLimiter(l)).UnaryClientInterceptor().
func (l *Limiter) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return (&Chain{fixed: layer{lim: l}}).UnaryClientInterceptor()
}

// StreamClientInterceptor returns the Limiter as a stream client
// interceptor. A stream holds its slot from establishment until grpc
// reports its end (grpc.OnFinish: final status, cancellation, or its
// connection closing), or until SendMsg returns io.EOF: the stream is over
// on the wire then, even if the caller never reads its status.
func (l *Limiter) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return (&Chain{fixed: layer{lim: l}}).StreamClientInterceptor()
}
