package clientconn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"

	grcreds "github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ErrClosed is matched (errors.Is) by the errors of a closed Factory and
// of calls on a closed Conn.
var ErrClosed = errors.New("clientconn: closed")

// maxCanonCache bounds the memo of target spellings, so a flood of
// distinct bad targets cannot grow memory.
const maxCanonCache = 4096

// Factory hands out shared, reference-counted connections. Create one per
// process with New, Get a Conn per service and target, Close the Conn when
// the service stops using it, and Close the Factory at shutdown.
//
// A Factory is safe for concurrent use.
type Factory struct {
	opts      *options
	err       error              // invalid options; every Get returns it
	obs       telemetry.Observer // rec, in front of the user's observer
	rec       *recorder
	tel       *telemetry.Telemetry // WithMeterProvider/WithTracerProvider's, or nil
	unobserve func() error         // unregisters the snapshot gauges
	dialOpts  []grpc.DialOption    // the part shared by every connection
	ctx       context.Context      // ends with Close; bounds replacement warm-ups
	cancel    context.CancelFunc

	// wg counts goroutines that drain or replace connections. Add is only
	// called under mu while closed is false, so Close's Wait sees them all.
	wg sync.WaitGroup

	// Lock order: mu, then cfgMu (dial runs under mu and reads configs).
	cfgMu   sync.Mutex
	configs map[string]*serviceConfig // compacted document -> its parts; guarded by cfgMu

	mu      sync.Mutex
	closed  bool
	conns   map[key]*shared                             // every live entry, with or without handles
	idle    *simplelru.LRU[key, *shared]                // entries without handles; nil if maxIdle is 0
	evicted []*shared                                   // capacity evictions found by the LRU callback
	canon   map[string]string                           // target spelling -> canonical target
	tenants map[string]credentials.TransportCredentials // WithTLS credentials per tenant

	hits, misses, evictions atomic.Uint64
	handles, open           atomic.Int64
}

// Stats is a snapshot of a Factory's counters.
type Stats struct {
	// Hits counts Gets that shared an existing connection.
	Hits uint64
	// Misses counts Gets that created a connection.
	Misses uint64
	// Open counts underlying *grpc.ClientConn not yet closed, including
	// replaced ones still draining their calls.
	Open int
	// Handles counts Conns returned by Get and not yet closed.
	Handles int
	// Evictions counts connections closed for idleness or capacity.
	Evictions uint64
}

// New returns a Factory configured by opts. New never fails: an invalid
// option is reported, naming the option and the value, by every Get.
func New(opts ...Option) *Factory {
	o := defaultOptions()
	for i, opt := range opts {
		if opt == nil {
			o.fail("option %d is nil", i)
			continue
		}
		opt.apply(o)
	}
	f := &Factory{opts: o, obs: o.observer, conns: make(map[key]*shared), canon: make(map[string]string),
		tenants: make(map[string]credentials.TransportCredentials), configs: make(map[string]*serviceConfig)}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	if err := f.setUpTelemetry(); err != nil {
		o.errs = append(o.errs, err)
	}
	f.rec = &recorder{next: f.obs}
	f.obs = f.rec
	if err := f.setUpTLS(); err != nil {
		o.errs = append(o.errs, err)
	}
	if _, err := f.serviceConfig(o.serviceConfig); err != nil {
		o.errs = append(o.errs, err)
	}
	if len(o.errs) > 0 {
		f.err = errors.Join(o.errs...)
		return f
	}
	if o.maxIdle > 0 {
		f.idle, _ = simplelru.NewLRU(o.maxIdle, f.onIdleEvict) // error only for size <= 0
	}
	f.dialOpts = f.baseDialOptions()
	if f.tel != nil {
		unobserve, err := f.tel.ObserveSnapshots(f.debugSnapshot)
		if err != nil {
			f.err = fmt.Errorf("clientconn: %w", err)
			return f
		}
		f.unobserve = unobserve
	}
	if err := f.preconnect(); err != nil {
		f.err = err
		f.Close()
	}
	return f
}

func (f *Factory) baseDialOptions() []grpc.DialOption {
	o := f.opts
	var d []grpc.DialOption
	if o.keepalive != nil {
		d = append(d, grpc.WithKeepaliveParams(o.keepalive.Client))
	}
	if len(o.unary) > 0 {
		d = append(d, grpc.WithChainUnaryInterceptor(o.unary...))
	}
	if len(o.stream) > 0 {
		d = append(d, grpc.WithChainStreamInterceptor(o.stream...))
	}
	return append(d, o.dialOptions...)
}

// setUpTelemetry builds the OpenTelemetry observer of WithMeterProvider
// and WithTracerProvider, and its per-connection stats handler.
func (f *Factory) setUpTelemetry() error {
	o := f.opts
	if o.meters == nil && o.tracers == nil {
		return nil
	}
	if o.observerSet {
		return fmt.Errorf("clientconn: WithObserver and WithMeterProvider/WithTracerProvider are both set; use one")
	}
	var topts []telemetry.Option
	if o.meters != nil {
		topts = append(topts, telemetry.WithMeterProvider(o.meters))
	}
	if o.tracers != nil {
		topts = append(topts, telemetry.WithTracerProvider(o.tracers))
	}
	t, err := telemetry.New(topts...)
	if err != nil {
		return fmt.Errorf("clientconn: %w", err)
	}
	f.obs, f.tel = t, t
	// The stats handler only marks spans. Install it only for a tracer
	// that records: grpc-go builds its per-call stats events (15
	// allocations) for any installed handler, and with tracing on a
	// tracing handler already pays for them.
	if _, noop := o.tracers.(tracenoop.TracerProvider); o.tracers != nil && !noop {
		o.dialOptions = append([]grpc.DialOption{grpc.WithStatsHandler(t.StatsHandler())}, o.dialOptions...)
	}
	return nil
}

// setUpTLS builds WithTLS's shared session cache and the credentials of
// the default tenant, which validates the config once for all tenants.
func (f *Factory) setUpTLS() error {
	o := f.opts
	switch {
	case o.tlsConfig == nil && o.sessions != nil:
		return fmt.Errorf("clientconn: WithSessionCache needs WithTLS")
	case o.tlsConfig == nil:
		return nil
	case o.creds != nil:
		return fmt.Errorf("clientconn: WithTLS and WithTransportCredentials are both set; use one")
	}
	if o.sessions == nil {
		var err error
		if o.sessions, err = grcreds.NewSessionCache(grcreds.WithObserver(f.obs)); err != nil {
			return fmt.Errorf("clientconn: WithTLS: %w", err)
		}
	}
	_, err := f.tenantCreds("")
	return err
}

// serviceConfig is one service config document split in two: what grpc
// reads, and the interceptors built from its "grpcreuse" policy.
type serviceConfig struct {
	grpc         string
	interceptors []grpc.DialOption
	chain        *interceptors.Chain // nil without a policy
}

// serviceConfig splits and validates doc once; every connection made with
// it shares the result, so its breakers and limiters keep their state when
// a connection is replaced.
func (f *Factory) serviceConfig(doc string) (*serviceConfig, error) {
	f.cfgMu.Lock()
	defer f.cfgMu.Unlock()
	if sc, ok := f.configs[doc]; ok {
		return sc, nil
	}
	grpcDoc, policy, err := interceptors.SplitServiceConfig(doc)
	if err != nil {
		return nil, fmt.Errorf("clientconn: service config: %w", err)
	}
	if grpcDoc != "" {
		if err := checkGRPCServiceConfig(grpcDoc); err != nil {
			return nil, fmt.Errorf("clientconn: service config: %w", err)
		}
	}
	sc := &serviceConfig{grpc: grpcDoc}
	if policy != nil {
		if sc.chain, err = policy.Build(interceptors.ClientTelemetry{},
			interceptors.PolicyObservers{Breaker: f.obs, Limiter: f.obs}); err != nil {
			return nil, fmt.Errorf("clientconn: service config: %w", err)
		}
		sc.interceptors = sc.chain.DialOptions()
	}
	if len(f.configs) < maxCanonCache {
		f.configs[doc] = sc
	}
	return sc, nil
}

// tenantCreds returns the WithTLS credentials of tenant, made once, so
// the tenant's connections share a key and its sessions stay its own.
func (f *Factory) tenantCreds(tenant string) (credentials.TransportCredentials, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.tenants[tenant]; ok {
		return c, nil
	}
	c, err := grcreds.NewTLS(f.opts.tlsConfig,
		grcreds.WithSessionCache(f.opts.sessions),
		grcreds.WithTenant(tenant),
		grcreds.WithHandshakeObserver(f.obs))
	if err != nil {
		return nil, fmt.Errorf("clientconn: WithTLS: %w", err)
	}
	f.tenants[tenant] = c
	return c, nil
}

// preconnect validates every WithPreconnect target, then starts connecting
// to each; the connections wait in the pool without handles.
func (f *Factory) preconnect() error {
	keys := make([]key, 0, len(f.opts.preconnect))
	for _, t := range f.opts.preconnect {
		k, err := f.keyFor(t, &getOptions{})
		if err != nil {
			return fmt.Errorf("clientconn: WithPreconnect: %w", err)
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		c, err := f.get(k)
		if err != nil {
			return fmt.Errorf("clientconn: WithPreconnect: %w", err)
		}
		c.s.cur.Load().cc.Connect()
		c.Close()
	}
	return nil
}

// Get returns a handle on the connection for target, creating it on first
// use. Gets with the same canonical target, tenant, credentials and
// service config share one *grpc.ClientConn. Close the handle when done.
//
// ctx bounds only the wait of WithWaitForReady; the connection itself is
// not tied to ctx.
func (f *Factory) Get(ctx context.Context, target string, opts ...GetOption) (*Conn, error) {
	if f.err != nil {
		return nil, f.err
	}
	g := resolveGetOptions(opts)
	if g.err != nil {
		return nil, g.err
	}
	k, err := f.keyFor(target, &g)
	if err != nil {
		return nil, err
	}
	c, err := f.get(k)
	if err != nil {
		return nil, err
	}
	if g.waitReady {
		if err := c.waitReady(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// resolveGetOptions applies opts. The options escape through their
// interface, so the struct is allocated only when there are any: the
// common Get of a live key stays at one allocation, the Conn.
func resolveGetOptions(opts []GetOption) getOptions {
	if len(opts) == 0 {
		return getOptions{}
	}
	g := new(getOptions)
	for _, o := range opts {
		o.applyGet(g)
	}
	return *g
}

// keyFor resolves the sharing key of one Get.
func (f *Factory) keyFor(target string, g *getOptions) (key, error) {
	canon, err := f.canonical(target)
	if err != nil {
		return key{}, err
	}
	k := key{target: canon, tenant: g.tenant, creds: f.opts.creds, serviceConfig: f.opts.serviceConfig}
	switch {
	case g.creds != nil:
		k.creds = g.creds
	case f.opts.tlsConfig != nil:
		if k.creds, err = f.tenantCreds(g.tenant); err != nil {
			return key{}, err
		}
	}
	if g.serviceConfig != nil {
		k.serviceConfig = *g.serviceConfig
		if _, err := f.serviceConfig(k.serviceConfig); err != nil {
			return key{}, err
		}
	}
	if k.creds == nil {
		return key{}, fmt.Errorf("clientconn: no transport credentials for %q: use WithTLS or WithTransportCredentials (insecure.NewCredentials() for plaintext)", canon)
	}
	return k, nil
}

// canonical memoises canonicalTarget, so the Get of a live key does not
// rebuild the string.
func (f *Factory) canonical(target string) (string, error) {
	f.mu.Lock()
	c, ok := f.canon[target]
	f.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := canonicalTarget(target)
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	if len(f.canon) >= maxCanonCache {
		clear(f.canon)
	}
	f.canon[target] = c
	f.mu.Unlock()
	return c, nil
}

// get returns a new handle on the entry for k, creating the entry if needed.
func (f *Factory) get(k key) (*Conn, error) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, fmt.Errorf("clientconn: Get %q on a closed Factory: %w", k.target, ErrClosed)
	}
	s, hit := f.conns[k]
	if hit {
		s.refs++
		if s.refs == 1 { // back from the idle set
			stopTimer(s.idleTimer)
			if f.idle != nil {
				f.idle.Remove(k) // the callback sees refs > 0 and keeps s
			}
		}
	} else {
		var err error
		if s, err = f.newShared(k); err != nil {
			f.mu.Unlock()
			return nil, err
		}
		s.refs = 1
		f.conns[k] = s
	}
	f.mu.Unlock()

	f.handles.Add(1)
	if hit {
		f.hits.Add(1)
	} else {
		f.misses.Add(1)
		f.obs.ConnOpened(k.target)
	}
	f.obs.PoolGet(k.target, hit)
	return &Conn{f: f, s: s}, nil
}

// newShared creates the entry and its first connection. grpc.NewClient
// does no I/O, so holding f.mu here costs microseconds.
func (f *Factory) newShared(k key) (*shared, error) {
	s := &shared{key: k}
	cc, err := f.dial(s)
	if err != nil {
		return nil, err
	}
	s.cur.Store(newGeneration(cc, time.Now()))
	f.open.Add(1)
	if f.opts.maxAge > 0 {
		s.ageTimer = time.AfterFunc(f.nextAge(), func() { f.replace(s) })
	}
	return s, nil
}

func (f *Factory) dial(s *shared) (*grpc.ClientConn, error) {
	k := s.key
	sc, err := f.serviceConfig(k.serviceConfig)
	if err != nil {
		return nil, err
	}
	opts := make([]grpc.DialOption, 0, len(f.dialOpts)+len(sc.interceptors)+3)
	opts = append(opts,
		grpc.WithTransportCredentials(&observedCreds{TransportCredentials: k.creds, s: s}),
		grpc.WithContextDialer(f.dialerFor(s)),
	)
	if sc.grpc != "" {
		opts = append(opts, grpc.WithDefaultServiceConfig(sc.grpc))
	}
	if o, ok := withObserverResolver(k.target, f.obs); ok {
		opts = append(opts, o)
	}
	opts = append(opts, f.dialOpts...)
	opts = append(opts, sc.interceptors...)
	cc, err := grpc.NewClient(k.target, opts...)
	if err != nil {
		return nil, fmt.Errorf("clientconn: connection to %q: %w", k.target, err)
	}
	return cc, nil
}

// nextAge is the max age with ±10% jitter, as grpc servers do for
// MaxConnectionAge, so connections made together are not replaced together.
func (f *Factory) nextAge() time.Duration {
	age := f.opts.maxAge
	if f.opts.noJitter {
		return age
	}
	return age + time.Duration((rand.Float64()*0.2-0.1)*float64(age))
}

// release returns one handle's reference. The last one moves the entry to
// the idle set, which may push out the least recently used idle entry.
func (f *Factory) release(s *shared) {
	f.handles.Add(-1)
	var out []*shared
	f.mu.Lock()
	s.refs--
	if s.refs == 0 && !f.closed && !s.dead.Load() {
		s.idleEpoch++
		if f.idle == nil {
			f.evictLocked(s)
			out = append(out, s)
		} else {
			f.idle.Add(s.key, s) // may evict the oldest into f.evicted
			epoch := s.idleEpoch
			s.idleTimer = time.AfterFunc(f.opts.idleTimeout, func() { f.expire(s, epoch) })
		}
	}
	out = append(out, f.evicted...)
	f.evicted = f.evicted[:0]
	f.mu.Unlock()
	for _, e := range out {
		f.obs.PoolEvicted(e.key.target, telemetry.EvictCapacity)
		f.startDrain(e.key.target, e.cur.Load(), telemetry.CloseEvicted)
	}
}

// onIdleEvict is the idle LRU's callback; it runs under f.mu. Entries
// taken back into use (refs > 0) or already closed are left alone; any
// other entry was pushed out for capacity.
func (f *Factory) onIdleEvict(_ key, s *shared) {
	if s.refs > 0 || s.dead.Load() {
		return
	}
	f.evictLocked(s)
	f.evicted = append(f.evicted, s)
}

// expire closes s if it has sat without handles since epoch.
func (f *Factory) expire(s *shared, epoch uint64) {
	f.mu.Lock()
	if f.closed || s.dead.Load() || s.refs > 0 || s.idleEpoch != epoch {
		f.mu.Unlock()
		return
	}
	f.evictLocked(s)
	f.idle.Remove(s.key) // the callback sees dead and does nothing
	f.mu.Unlock()
	f.obs.PoolEvicted(s.key.target, telemetry.EvictIdle)
	f.startDrain(s.key.target, s.cur.Load(), telemetry.CloseEvicted)
}

// evictLocked takes s out of the pool; the caller then calls startDrain
// once for it. It reserves that goroutine in f.wg while f.mu is held.
func (f *Factory) evictLocked(s *shared) {
	s.dead.Store(true)
	delete(f.conns, s.key)
	stopTimer(s.idleTimer)
	stopTimer(s.ageTimer)
	f.evictions.Add(1)
	f.wg.Add(1)
}

// replace gives s a fresh connection after its max age and drains the old.
func (f *Factory) replace(s *shared) {
	f.mu.Lock()
	if f.closed || s.dead.Load() {
		f.mu.Unlock()
		return
	}
	f.wg.Add(1)
	f.mu.Unlock()
	defer f.wg.Done()

	cc, err := f.dial(s)
	if err != nil { // the same options worked before; try again next period
		s.recordErr(err)
	} else {
		// Warm the replacement so calls do not wait for its handshake.
		cc.Connect()
		ctx, cancel := context.WithTimeout(f.ctx, min(f.opts.drainTimeout, 10*time.Second))
		waitState(ctx, cc)
		cancel()
	}

	f.mu.Lock()
	if f.closed || s.dead.Load() {
		f.mu.Unlock()
		if cc != nil {
			cc.Close()
		}
		return
	}
	var old *generation
	if cc != nil {
		old = s.cur.Swap(newGeneration(cc, time.Now()))
		f.open.Add(1)
		f.wg.Add(1) // for old's drain
	}
	s.ageTimer = time.AfterFunc(f.nextAge(), func() { f.replace(s) })
	f.mu.Unlock()
	if old != nil {
		f.obs.ConnOpened(s.key.target)
		f.startDrain(s.key.target, old, telemetry.CloseMaxAge)
	}
}

// startDrain retires g and closes it once its calls end or the drain
// timeout passes. The caller has already done f.wg.Add(1) under f.mu.
func (f *Factory) startDrain(target string, g *generation, reason string) {
	g.retire()
	go func() {
		defer f.wg.Done()
		t := time.NewTimer(f.opts.drainTimeout)
		select {
		case <-g.drained:
		case <-t.C:
		}
		t.Stop()
		g.cc.Close()
		f.open.Add(-1)
		f.obs.ConnClosed(target, reason, time.Since(g.born))
	}()
}

// Close closes every connection: new Gets and calls on existing handles
// fail with ErrClosed, calls in flight may finish (bounded by the drain
// timeout), and Close returns when every connection is closed and every
// goroutine of the Factory has exited. It is idempotent; a second Close
// waits for the first.
func (f *Factory) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		f.wg.Wait()
		return nil
	}
	f.closed = true
	all := make([]*shared, 0, len(f.conns))
	for _, s := range f.conns {
		all = append(all, s)
		s.dead.Store(true)
		stopTimer(s.idleTimer)
		stopTimer(s.ageTimer)
		f.wg.Add(1)
	}
	clear(f.conns)
	if f.idle != nil {
		f.idle.Purge() // the callback sees dead and does nothing
	}
	f.mu.Unlock()
	f.cancel()
	if f.unobserve != nil {
		_ = f.unobserve()
	}
	for _, s := range all {
		f.startDrain(s.key.target, s.cur.Load(), telemetry.CloseShutdown)
	}
	f.wg.Wait()
	return nil
}

// Stats returns the Factory's counters.
func (f *Factory) Stats() Stats {
	return Stats{
		Hits:      f.hits.Load(),
		Misses:    f.misses.Load(),
		Open:      int(f.open.Load()),
		Handles:   int(f.handles.Load()),
		Evictions: f.evictions.Load(),
	}
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}

// waitState blocks until cc is READY or ctx ends, and returns the last
// state seen.
func waitState(ctx context.Context, cc *grpc.ClientConn) connectivity.State {
	for {
		st := cc.GetState()
		if st == connectivity.Ready || st == connectivity.Shutdown {
			return st
		}
		if st == connectivity.Idle {
			cc.Connect()
		}
		if !cc.WaitForStateChange(ctx, st) {
			return cc.GetState()
		}
	}
}

var _ credentials.TransportCredentials = (*observedCreds)(nil)
