package clientconn

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"
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
	obs       telemetry.Observer // rec, in front of the user's observer
	rec       *recorder
	tel       *opentelemetry.Telemetry // WithMeterProvider/WithTracerProvider's, or nil
	unobserve func() error             // unregisters the snapshot gauges
	dialOpts  []grpc.DialOption        // the part shared by every connection
	ctx       context.Context          // ends with Close; bounds replacement warm-ups
	cancel    context.CancelFunc

	// wg counts goroutines that drain or replace connections. Add is only
	// called under mu while closed is false, so Close's Wait sees them all.
	wg sync.WaitGroup

	// Lock order: mu, then cfgMu (dial runs under mu and reads configs).
	cfgMu   sync.Mutex
	configs map[string]*serviceConfig // compacted document -> its parts; guarded by cfgMu

	mu      sync.Mutex
	closed  bool
	conns   map[key]*shared              // every live entry, with or without handles
	idle    *simplelru.LRU[key, *shared] // entries without handles; nil if maxIdle is 0
	evicted []*shared                    // capacity evictions found by the LRU callback
	canon   map[string]string            // target spelling -> canonical target
	tenants map[string]*tenantCreds      // WithTLS credentials per tenant with live entries

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

// New returns a Factory configured by opts. Every option and the service
// config are validated here, as grpc.NewClient validates its dial options:
// the error names the option and the value, and nothing is left running.
func New(opts ...Option) (*Factory, error) {
	o := defaultOptions()
	for i, opt := range opts {
		if opt == nil {
			o.fail("option %d is nil", i)
			continue
		}
		opt.apply(o)
	}
	if len(o.errs) > 0 {
		return nil, errors.Join(o.errs...)
	}
	f := &Factory{opts: o, obs: o.observer, conns: make(map[key]*shared), canon: make(map[string]string),
		tenants: make(map[string]*tenantCreds), configs: make(map[string]*serviceConfig)}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	fail := func(err error) (*Factory, error) {
		f.Close()
		return nil, err
	}
	if err := f.setUpTelemetry(); err != nil {
		return fail(err)
	}
	f.rec = &recorder{next: f.obs}
	f.obs = f.rec
	if err := f.setUpTLS(); err != nil {
		return fail(err)
	}
	if _, err := f.serviceConfig(o.serviceConfig); err != nil {
		return fail(err)
	}
	if o.maxIdle > 0 {
		f.idle, _ = simplelru.NewLRU(o.maxIdle, f.onIdleEvict) // error only for size <= 0
	}
	f.dialOpts = f.baseDialOptions()
	if f.tel != nil {
		unobserve, err := f.tel.ObserveGauges(f.gauges)
		if err != nil {
			return fail(fmt.Errorf("clientconn: %w", err))
		}
		f.unobserve = unobserve
	}
	if err := f.preconnect(); err != nil {
		return fail(err)
	}
	return f, nil
}

// Get returns a handle on the connection for target, creating it on first
// use. Gets with the same canonical target, tenant, credentials and
// service config share one *grpc.ClientConn. Close the handle when done.
//
// ctx bounds only the wait of WithWaitForReady; the connection itself is
// not tied to ctx.
func (f *Factory) Get(ctx context.Context, target string, opts ...GetOption) (*Conn, error) {
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
		if k.creds, err = f.credsForTenant(g.tenant); err != nil {
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
	c, err := canonicalTargetWith(target, f.resolver)
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
	if tc, ok := f.tenants[k.tenant]; ok && tc.creds == k.creds {
		tc.entries++
		s.tenantCreds = tc
	}
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
	if o, ok := withObserverResolver(k.target, f.obs, f.resolver); ok {
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
