package interceptors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/internal/keyed"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// A ChainOption configures NewClientChain.
type ChainOption interface{ applyChain(*chainOptions) }

type chainOptionFunc func(*chainOptions)

func (f chainOptionFunc) applyChain(o *chainOptions) { f(o) }

type chainOptions struct {
	reg    *breaker.Registry
	lim    *Limiter
	policy *Policy
	tenant string
	bobs   telemetry.BreakerObserver
	lobs   telemetry.LimiterObserver
	errs   []error
}

// WithBreakers puts reg's breakers in the chain, for every method.
func WithBreakers(reg *breaker.Registry) ChainOption {
	return chainOptionFunc(func(o *chainOptions) {
		if reg == nil {
			o.errs = append(o.errs, errors.New("interceptors: WithBreakers(nil)"))
		}
		o.reg = reg
	})
}

// WithLimiter puts lim in the chain, for every method.
func WithLimiter(lim *Limiter) ChainOption {
	return chainOptionFunc(func(o *chainOptions) {
		if lim == nil {
			o.errs = append(o.errs, errors.New("interceptors: WithLimiter(nil)"))
		}
		o.lim = lim
	})
}

// WithPolicy builds the chain's breakers and limiters from p, one
// breaker.Registry and one Limiter per methodConfig entry, and routes each
// call to its entry by gRPC's methodConfig matching rules. It excludes
// WithBreakers and WithLimiter.
func WithPolicy(p *Policy) ChainOption {
	return chainOptionFunc(func(o *chainOptions) {
		if p == nil {
			o.errs = append(o.errs, errors.New("interceptors: WithPolicy(nil)"))
		}
		o.policy = p
	})
}

// WithTenant makes the breakers and limiters WithPolicy builds belong to
// tenant (breaker.WithTenant, WithLimiterTenant). Build one chain per
// tenant: tenants then never share a breaker or a limiter.
func WithTenant(tenant string) ChainOption {
	return chainOptionFunc(func(o *chainOptions) { o.tenant = tenant })
}

// WithPolicyObservers sends the events of the breakers and limiters
// WithPolicy builds to b and l. Default telemetry.Nop for either.
func WithPolicyObservers(b telemetry.BreakerObserver, l telemetry.LimiterObserver) ChainOption {
	return chainOptionFunc(func(o *chainOptions) { o.bobs, o.lobs = b, l })
}

// Chain is the client side of grpcreuse built into interceptors: for each
// call, the breaker of its key (fail fast while open), then the limiter
// (wait for a slot or be rejected), then the call. The breaker sits
// outside the limiter, so an open breaker fails fast without taking a
// slot, and a limiter rejection is not counted by the breaker. A Chain
// keeps hold of its breakers and limiters so their state can be shown.
// It is safe for concurrent use and immutable once built.
type Chain struct {
	fixed  layer   // without a policy: the one layer of every call
	router *router // with a policy: routes methods to layers
	layers []layer // with a policy: one per methodConfig entry
	tenant string
}

// layer is what one call goes through; nil parts are skipped.
type layer struct {
	reg *breaker.Registry
	lim *Limiter
}

// NewClientChain returns the client chain: the one way to build it.
// Either give it a breaker.Registry and/or a Limiter for every method
// (WithBreakers, WithLimiter), or a Policy (WithPolicy, WithTenant,
// WithPolicyObservers). A chain with neither passes calls through.
func NewClientChain(opts ...ChainOption) (*Chain, error) {
	var o chainOptions
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("interceptors: NewClientChain: option %d is nil", i)
		}
		opt.applyChain(&o)
	}
	if len(o.errs) > 0 {
		return nil, errors.Join(o.errs...)
	}
	if o.policy == nil {
		switch {
		case o.tenant != "":
			return nil, errors.New("interceptors: WithTenant needs WithPolicy (give your own Registry and Limiter their tenant)")
		case o.bobs != nil || o.lobs != nil:
			return nil, errors.New("interceptors: WithPolicyObservers needs WithPolicy")
		}
		return &Chain{fixed: layer{reg: o.reg, lim: o.lim}}, nil
	}
	if o.reg != nil || o.lim != nil {
		return nil, errors.New("interceptors: WithPolicy excludes WithBreakers and WithLimiter")
	}
	return o.policy.build(o.tenant, o.bobs, o.lobs)
}

// Tenant returns the chain's tenant (WithTenant), "" for none.
func (c *Chain) Tenant() string { return c.tenant }

// DialOptions returns the chain as dial options (a fresh slice).
func (c *Chain) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(c.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(c.StreamClientInterceptor()),
	}
}

func (c *Chain) registries() []*breaker.Registry {
	if c.router == nil {
		if c.fixed.reg == nil {
			return nil
		}
		return []*breaker.Registry{c.fixed.reg}
	}
	var out []*breaker.Registry
	for _, l := range c.layers {
		if l.reg != nil {
			out = append(out, l.reg)
		}
	}
	return out
}

func (c *Chain) limiters() []*Limiter {
	if c.router == nil {
		if c.fixed.lim == nil {
			return nil
		}
		return []*Limiter{c.fixed.lim}
	}
	var out []*Limiter
	for _, l := range c.layers {
		if l.lim != nil {
			out = append(out, l.lim)
		}
	}
	return out
}

// Breakers describes every breaker of the chain.
func (c *Chain) Breakers() []breaker.Status {
	out := []breaker.Status{}
	for _, r := range c.registries() {
		out = append(out, r.Snapshot()...)
	}
	return out
}

// Limiters describes every limiter of the chain.
func (c *Chain) Limiters() []LimiterStatus {
	out := []LimiterStatus{}
	for _, l := range c.limiters() {
		out = append(out, l.Snapshot()...)
	}
	return out
}

func (c *Chain) layerFor(method string) layer {
	if c.router == nil {
		return c.fixed
	}
	if i := c.router.match(method); i >= 0 {
		return c.layers[i]
	}
	return layer{}
}

var errPanicked = errors.New("interceptors: call panicked")

// reportBreaker reports a call's outcome; a rejection by a limiter
// further in says nothing about the backend.
func reportBreaker(tok breaker.Token, ctx context.Context, err error) {
	if err != nil && errors.Is(err, ErrLimited) {
		tok.Ignore()
		return
	}
	tok.Done(ctx, err)
}

// UnaryClientInterceptor returns the chain as one unary client
// interceptor.
func (c *Chain) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return c.unary
}

func (c *Chain) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) (err error) {
	ly := c.layerFor(method)
	if ly.reg == nil && ly.lim == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	target := cc.Target()
	var tok breaker.Token
	if ly.reg != nil {
		if tok, err = ly.reg.Allow(target, method); err != nil {
			return err
		}
	}
	var ref keyed.Ref[*limiter]
	var l *limiter
	if ly.lim != nil {
		ref = ly.lim.keys.Acquire(ly.lim.keyOf(target, method))
		l = ref.Value()
		if err = l.acquire(ctx); err != nil {
			ref.Release()
			reportBreaker(tok, ctx, err)
			return err
		}
	}
	var start time.Time
	if l != nil && l.algo.needsClock() {
		start = time.Now()
	}
	finished := false
	defer func() {
		if !finished { // invoker panicked: a failure, so a probe is never stuck
			if l != nil {
				l.release(outcomeIgnored, 0)
				ref.Release()
			}
			tok.Done(context.Background(), errPanicked)
		}
	}()
	err = invoker(ctx, method, req, reply, cc, opts...)
	finished = true
	if l != nil {
		var took time.Duration
		if l.algo.needsClock() {
			took = time.Since(start)
		}
		l.release(clientOutcome(ctx, err), took)
		ref.Release()
	}
	reportBreaker(tok, ctx, err)
	return err
}

// StreamClientInterceptor returns the chain as one stream client
// interceptor. A stream is one call, from its establishment to the end
// grpc reports (grpc.OnFinish: its final status, the caller's
// cancellation, or its connection closing); its limiter slot is also
// freed when SendMsg returns io.EOF (the stream is over on the wire).
func (c *Chain) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return c.stream
}

func (c *Chain) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ly := c.layerFor(method)
	if ly.reg == nil && ly.lim == nil {
		return streamer(ctx, desc, cc, method, opts...)
	}
	target := cc.Target()
	e := &streamEnd{ctx: ctx}
	if ly.reg != nil {
		tok, err := ly.reg.Allow(target, method)
		if err != nil {
			return nil, err
		}
		e.tok = tok
	}
	if ly.lim != nil {
		ref := ly.lim.keys.Acquire(ly.lim.keyOf(target, method))
		if err := ref.Value().acquire(ctx); err != nil {
			ref.Release()
			reportBreaker(e.tok, ctx, err)
			return nil, err
		}
		e.lim, e.hasLim = ref, true
	}
	// grpc calls OnFinish exactly once when the stream ends, including a
	// failed establishment; an error from an interceptor further in never
	// reaches grpc, so a streamer error also finishes (once).
	finished := false
	defer func() {
		if !finished { // streamer panicked: a failure, so a probe is never stuck and the slot is freed
			e.panicked()
		}
	}()
	cs, err := streamer(ctx, desc, cc, method, append(opts[:len(opts):len(opts)], grpc.OnFinish(e.finish))...)
	finished = true
	if err != nil {
		e.finish(err)
		return nil, err
	}
	if e.hasLim {
		return &eofStream{ClientStream: cs, e: e}, nil
	}
	return cs, nil
}

// streamEnd accounts one client stream exactly once.
type streamEnd struct {
	ctx    context.Context
	tok    breaker.Token
	lim    keyed.Ref[*limiter]
	hasLim bool
	done   atomic.Bool // finish ran
	freed  atomic.Bool // the limiter slot was released
}

func (e *streamEnd) finish(err error) {
	if !e.done.CompareAndSwap(false, true) {
		return
	}
	e.free(clientOutcome(e.ctx, err)) // a stream's lifetime is not a service time: AIMD sees its status only
	reportBreaker(e.tok, e.ctx, err)
}

// panicked accounts a stream whose establishment panicked further in, as
// the unary path does: the slot is freed without moving AIMD, and the
// breaker counts a failure.
func (e *streamEnd) panicked() {
	if !e.done.CompareAndSwap(false, true) {
		return
	}
	e.free(outcomeIgnored)
	e.tok.Done(context.Background(), errPanicked)
}

func (e *streamEnd) free(o outcome) {
	if e.hasLim && e.freed.CompareAndSwap(false, true) {
		e.lim.Value().release(o, 0)
		e.lim.Release()
	}
}

// eofStream frees the limiter slot of a stream whose SendMsg returned
// io.EOF: the stream ended on the wire, and a caller may drop it without
// reading its status; the breaker still waits for the status (or for its
// probe timeout).
type eofStream struct {
	grpc.ClientStream
	e *streamEnd
}

// SendMsg passes the message on; io.EOF frees the stream's limiter slot.
func (s *eofStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err == io.EOF {
		s.e.free(outcomeIgnored)
	}
	return err
}

// router finds the methodConfig entry of a full method name.
type router struct {
	exact   map[string]int // "/service/method"
	service map[string]int
	def     int // -1: none

	// memo holds match's answer per method seen, copy-on-write, so routing
	// a call is one lock-free lookup.
	memo   atomic.Pointer[map[string]int]
	memoMu sync.Mutex
}

// maxMemoMethods bounds the memo: method names are caller input.
const maxMemoMethods = 1024

// match returns the index of the methodConfig entry for method, or -1.
func (r *router) match(method string) int {
	m := r.memo.Load()
	if m != nil {
		if i, ok := (*m)[method]; ok {
			return i
		}
	}
	i := r.resolve(method)
	if m != nil && len(*m) >= maxMemoMethods {
		// Full (a flood of method names fills it for good): resolve is
		// two map lookups, so route without the lock.
		return i
	}
	r.memoMu.Lock()
	defer r.memoMu.Unlock()
	old := r.memo.Load()
	if old == nil || len(*old) < maxMemoMethods {
		next := make(map[string]int, 1)
		if old != nil {
			next = make(map[string]int, len(*old)+1)
			for k, v := range *old {
				next[k] = v
			}
		}
		next[method] = i
		r.memo.Store(&next)
	}
	return i
}

// resolve applies gRPC's methodConfig rules: exact method, then service,
// then the default.
func (r *router) resolve(method string) int {
	if i, ok := r.exact[method]; ok {
		return i
	}
	svc := strings.TrimPrefix(method, "/")
	if j := strings.LastIndexByte(svc, '/'); j >= 0 {
		svc = svc[:j]
	}
	if i, ok := r.service[svc]; ok {
		return i
	}
	return r.def
}

// build validates the policy and builds its breakers and limiters.
func (p *Policy) build(tenant string, bobs telemetry.BreakerObserver, lobs telemetry.LimiterObserver) (*Chain, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if bobs == nil {
		bobs = telemetry.Nop{}
	}
	if lobs == nil {
		lobs = telemetry.Nop{}
	}
	c := &Chain{tenant: tenant, layers: make([]layer, len(p.MethodConfig)),
		router: &router{exact: map[string]int{}, service: map[string]int{}, def: -1}}
	for i, e := range p.MethodConfig {
		var err error
		if e.CircuitBreaker != nil {
			if c.layers[i].reg, err = breaker.New(breaker.WithConfig(*e.CircuitBreaker), breaker.WithObserver(bobs), breaker.WithTenant(tenant)); err != nil {
				return nil, err
			}
		}
		if e.ConcurrencyLimit != nil {
			if c.layers[i].lim, err = NewLimiter(WithLimiterConfig(*e.ConcurrencyLimit), WithLimiterObserver(lobs), WithLimiterTenant(tenant)); err != nil {
				return nil, err
			}
		}
		for _, n := range e.Name {
			switch {
			case n.Service == "":
				c.router.def = i
			case n.Method == "":
				c.router.service[n.Service] = i
			default:
				c.router.exact["/"+n.Service+"/"+n.Method] = i
			}
		}
	}
	return c, nil
}
