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
	"google.golang.org/grpc/grpclog"

	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"
)

var logger = grpclog.Component("grpcreuse-clientconn")

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

	// mu guards what follows. It is never held across user code, grpc
	// calls or anything else that could panic or block: entries are made
	// outside it and installed under it.
	mu       sync.Mutex
	closed   bool
	conns    map[key]*shared              // every live entry, with or without handles
	idle     *simplelru.LRU[key, *shared] // entries without handles; nil if maxIdle is 0
	evicted  []*shared                    // capacity evictions found by the LRU callback
	canon    map[string]string            // target spelling -> canonical target
	tenants  map[string]*tenantCreds      // WithTLS credentials per tenant with live entries
	configs  map[string]*serviceConfig    // documents in use (and the default)
	policies map[policyKey]*policyState   // breakers and limiters per (document, tenant), used or kept
	// The most recently used documents and policy states no entry uses.
	unusedConfigs  *simplelru.LRU[string, *serviceConfig]
	unusedPolicies *simplelru.LRU[policyKey, *policyState]

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
		tenants: make(map[string]*tenantCreds), configs: make(map[string]*serviceConfig),
		policies: make(map[policyKey]*policyState)}
	f.unusedConfigs, _ = simplelru.NewLRU(maxUnusedConfigs, f.onUnusedConfigEvict) // error only for size <= 0
	f.unusedPolicies, _ = simplelru.NewLRU(maxUnusedPolicies, f.onUnusedPolicyEvict)
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
	sc, err := parseServiceConfig(o.serviceConfig, true)
	if err != nil {
		return fail(err)
	}
	if sc.policy != nil {
		if _, err := f.newPolicyState(sc, ""); err != nil {
			return fail(err)
		}
	}
	f.configs[sc.doc] = sc // the default document stays while the Factory lives
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
// ctx bounds only the wait of WithWarmUp; the connection itself is not
// tied to ctx. A Get that fails leaves nothing behind: in particular a
// WithWarmUp Get that fails on a connection in TRANSIENT_FAILURE closes
// it unless other handles use it, instead of keeping it idle; one that
// was still connecting (a slow handshake) stays in the pool, so a retry
// finds it further on.
func (f *Factory) Get(ctx context.Context, target string, opts ...GetOption) (*Conn, error) {
	g := resolveGetOptions(opts)
	if g.err != nil {
		return nil, g.err
	}
	k, tlsTenant, sc, err := f.keyFor(target, &g)
	if err != nil {
		return nil, err
	}
	c, err := f.get(k, tlsTenant, sc)
	if err != nil {
		return nil, err
	}
	if g.waitReady {
		if err := c.waitReady(ctx); err != nil {
			if c.GetState() == connectivity.TransientFailure {
				c.discard() // known to fail: do not keep it redialling
			} else {
				c.Close() // still connecting (slow, not failing): a retry finds it further on
			}
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
		if o == nil {
			g.err = errors.Join(g.err, errors.New("clientconn: Get: a GetOption is nil"))
			continue
		}
		o.applyGet(g)
	}
	return *g
}

// keyFor resolves the sharing key of one Get; tlsTenant says the
// credentials are WithTLS's for the Get's tenant. It stores nothing: what
// a Get needs is kept only once an entry uses it.
func (f *Factory) keyFor(target string, g *getOptions) (k key, tlsTenant bool, sc *serviceConfig, err error) {
	canon, err := f.canonical(target)
	if err != nil {
		return key{}, false, nil, err
	}
	k = key{target: canon, tenant: g.tenant, creds: f.opts.creds, serviceConfig: f.opts.serviceConfig}
	switch {
	case g.creds != nil:
		k.creds = g.creds
	case f.opts.tlsConfig != nil:
		if k.creds, err = f.credsForTenant(g.tenant); err != nil {
			return key{}, false, nil, err
		}
		tlsTenant = true
	}
	if g.serviceConfig != nil {
		k.serviceConfig = *g.serviceConfig
		if sc, err = f.lookupServiceConfig(k.serviceConfig); err != nil {
			return key{}, false, nil, err
		}
	}
	if k.creds == nil {
		return key{}, false, nil, fmt.Errorf("clientconn: no transport credentials for %q: use WithTLS or WithTransportCredentials (insecure.NewCredentials() for plaintext)", canon)
	}
	return k, tlsTenant, sc, nil
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

// maxInstallAttempts bounds get's retries when concurrent Gets for one
// tenant race to create its credentials or policy state.
const maxInstallAttempts = 8

// get returns a new handle on the entry for k, creating the entry if
// needed. The entry is made outside f.mu (parsing, building the policy's
// chain, grpc.NewClient with the user's dial options) and installed under
// it; if another Get installed one for the same key meanwhile, ours is
// discarded.
//
// sc is k's parsed per-Get document, or nil to look it up.
func (f *Factory) get(k key, tlsTenant bool, sc *serviceConfig) (*Conn, error) {
	for range maxInstallAttempts {
		s, err := f.lookup(&k, tlsTenant)
		if err != nil || s != nil {
			if s != nil {
				return f.handle(s, true), nil
			}
			return nil, err
		}
		if s, err = f.newShared(k, tlsTenant, sc); err != nil {
			return nil, err
		}
		got, hit, retry, err := f.install(s)
		switch {
		case err != nil:
			return nil, err
		case !retry:
			return f.handle(got, hit), nil
		}
	}
	return nil, fmt.Errorf("clientconn: Get %q: concurrent Gets kept racing to create its connection", k.target)
}

// lookup returns the live entry for k with one more reference, or nil.
// With WithTLS it first switches k to the credentials its tenant's live
// entries use.
func (f *Factory) lookup(k *key, tlsTenant bool) (*shared, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, fmt.Errorf("clientconn: Get %q on a closed Factory: %w", k.target, ErrClosed)
	}
	if tlsTenant {
		if tc, ok := f.tenants[k.tenant]; ok {
			k.creds = tc.creds
		}
	}
	s, hit := f.conns[*k]
	if !hit {
		return nil, nil
	}
	f.refLocked(s)
	return s, nil
}

func (f *Factory) refLocked(s *shared) {
	s.refs++
	if s.refs == 1 { // back from the idle set
		stopTimer(s.idleTimer)
		if f.idle != nil {
			f.idle.Remove(s.key) // the callback sees refs > 0 and keeps s
		}
	}
}

// handle counts and reports one Get of s and returns its handle.
func (f *Factory) handle(s *shared, hit bool) *Conn {
	f.handles.Add(1)
	if hit {
		f.hits.Add(1)
	} else {
		f.misses.Add(1)
		f.obs.ConnOpened(s.key.target)
		if logger.V(2) {
			logger.Infof("connection to %q (tenant %q) opened", s.key.target, s.key.tenant)
		}
	}
	f.obs.PoolGet(s.key.target, hit)
	return &Conn{f: f, s: s}
}

// newShared makes an entry and its first connection, without f.mu.
// grpc.NewClient does no I/O.
func (f *Factory) newShared(k key, tlsTenant bool, sc *serviceConfig) (*shared, error) {
	var err error
	if sc == nil {
		if sc, err = f.lookupServiceConfig(k.serviceConfig); err != nil {
			return nil, err
		}
	}
	s := &shared{key: k, sc: sc, tlsTenant: tlsTenant}
	if sc.policy != nil {
		pk := policyKey{k.serviceConfig, k.tenant}
		f.mu.Lock()
		s.pol = f.policies[pk]
		f.mu.Unlock()
		if s.pol == nil {
			if s.pol, err = f.newPolicyState(sc, k.tenant); err != nil {
				return nil, err
			}
		}
	}
	cc, err := f.dial(s)
	if err != nil {
		return nil, err
	}
	s.cur.Store(newGeneration(cc, time.Now()))
	return s, nil
}

// install puts s in the pool with one reference and returns it, or the
// entry another Get installed for its key meanwhile (hit). retry says s
// could not be used (its tenant's credentials or policy state changed
// meanwhile) and the Get should start over. s's connection is closed
// whenever s is not installed.
func (f *Factory) install(s *shared) (got *shared, hit, retry bool, err error) {
	got, hit, retry, err = f.tryInstall(s)
	if got != s {
		s.cur.Load().cc.Close()
	}
	return got, hit, retry, err
}

func (f *Factory) tryInstall(s *shared) (got *shared, hit, retry bool, err error) {
	k := s.key
	f.mu.Lock()
	defer f.mu.Unlock() // nothing here should panic; if it did, the Factory must not stay locked
	switch {
	case f.closed:
		return nil, false, false, fmt.Errorf("clientconn: Get %q on a closed Factory: %w", k.target, ErrClosed)
	case f.conns[k] != nil:
		got = f.conns[k]
		f.refLocked(got)
		return got, true, false, nil
	case s.tlsTenant && f.tenants[k.tenant] != nil && f.tenants[k.tenant].creds != k.creds:
		return nil, false, true, nil
	case !f.holdConfigLocked(s):
		return nil, false, true, nil
	}
	if tc, ok := f.tenants[k.tenant]; ok && tc.creds == k.creds {
		tc.entries++
		s.tenantCreds = tc
	} else if s.tlsTenant {
		s.tenantCreds = &tenantCreds{creds: k.creds, entries: 1}
		f.tenants[k.tenant] = s.tenantCreds
	}
	s.refs = 1
	f.conns[k] = s
	f.open.Add(1)
	if f.opts.maxAge > 0 {
		s.ageTimer = time.AfterFunc(f.nextAge(), func() { f.replace(s) })
	}
	return s, false, false, nil
}

func (f *Factory) dial(s *shared) (*grpc.ClientConn, error) {
	k := s.key
	var pol []grpc.DialOption
	if s.pol != nil {
		pol = s.pol.dialOpts
	}
	opts := make([]grpc.DialOption, 0, len(f.dialOpts)+len(pol)+4)
	opts = append(opts,
		grpc.WithTransportCredentials(&observedCreds{TransportCredentials: k.creds, s: s}),
		grpc.WithContextDialer(f.dialerFor(s)),
	)
	if s.sc.grpc != "" {
		opts = append(opts, grpc.WithDefaultServiceConfig(s.sc.grpc))
	}
	if o, ok := withObserverResolver(k.target, f.obs, f.resolver, s); ok {
		opts = append(opts, o)
	}
	opts = append(opts, f.dialOpts...)
	opts = append(opts, pol...)
	cc, err := grpc.NewClient(k.target, opts...)
	if err != nil {
		if serr := s.sc.explainDialError(err); serr != nil {
			return nil, serr
		}
		return nil, fmt.Errorf("clientconn: connection to %q: %w", k.target, err)
	}
	s.sc.checked.Store(true)
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
		f.releaseTenantLocked(s)
		f.releaseConfigLocked(s)
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
// state seen. onFailure, if not nil, runs (on this goroutine) each time cc
// is seen in TRANSIENT_FAILURE.
func waitState(ctx context.Context, cc *grpc.ClientConn, onFailure func()) connectivity.State {
	for {
		st := cc.GetState()
		if st == connectivity.Ready || st == connectivity.Shutdown {
			return st
		}
		if st == connectivity.Idle {
			cc.Connect()
		}
		if st == connectivity.TransientFailure && onFailure != nil {
			onFailure()
		}
		if !cc.WaitForStateChange(ctx, st) {
			return cc.GetState()
		}
	}
}

var _ credentials.TransportCredentials = (*observedCreds)(nil)
