package clientconn

import (
	"cmp"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"
)

// maxDebugKeys bounds how many endpoints the debug page remembers, so a flood of keys cannot grow memory.
const maxDebugKeys = 1024

// handshakeWindow is how many recent handshake durations the p50/p99 use.
const handshakeWindow = 512

// recorder keeps what the debug page shows of the events the Factory's
// pieces report, and passes every event on to the user's observer. The
// per-call events (breaker and limiter rejections) touch only atomics.
type recorder struct {
	next telemetry.Observer

	full, resumed, failed atomic.Uint64
	mu                    sync.Mutex // guards durations and n
	durations             [handshakeWindow]time.Duration
	n                     int

	keys      atomic.Int64 // entries in endpoints
	endpoints sync.Map     // [2]string{target, endpoint} -> *endpointRecord
}

type endpointRecord struct {
	state    atomic.Int32 // connectivity.State: aggregated once EndpointState came, else the last subchannel's
	agg      atomic.Bool  // state is the balancer's aggregate
	conns    atomic.Int32 // connections open
	inFlight atomic.Int64
	latency  atomic.Int64 // nanoseconds
	ejected  atomic.Bool
	// Finished calls since the endpoint appeared, from EndpointCalls.
	ok, failed, shed atomic.Uint64
}

var _ telemetry.Observer = (*recorder)(nil)

// load returns the record for k in m, creating it with mk while fewer
// than maxDebugKeys exist; nil past that.
func load[K comparable, V any](r *recorder, m *sync.Map, k K, mk func() *V) *V {
	if v, ok := m.Load(k); ok {
		return v.(*V)
	}
	if r.keys.Load() >= maxDebugKeys {
		return nil
	}
	v, loaded := m.LoadOrStore(k, mk())
	if !loaded {
		r.keys.Add(1)
	}
	return v.(*V)
}

func (r *recorder) PoolGet(target string, hit bool)       { r.next.PoolGet(target, hit) }
func (r *recorder) PoolEvicted(target, reason string)     { r.next.PoolEvicted(target, reason) }
func (r *recorder) ConnOpened(target string)              { r.next.ConnOpened(target) }
func (r *recorder) SessionCacheLookup(t string, hit bool) { r.next.SessionCacheLookup(t, hit) }
func (r *recorder) SessionCacheEvicted(tenant string)     { r.next.SessionCacheEvicted(tenant) }
func (r *recorder) SessionCacheResumption(t string, resumed bool) {
	r.next.SessionCacheResumption(t, resumed)
}
func (r *recorder) Dialed(t, a string, d time.Duration, err error) { r.next.Dialed(t, a, d, err) }
func (r *recorder) ConnClosed(target, reason string, lifetime time.Duration) {
	r.next.ConnClosed(target, reason, lifetime)
}

func (r *recorder) Handshake(h telemetry.HandshakeInfo) {
	switch {
	case h.Err != nil:
		r.failed.Add(1)
	case h.Resumed:
		r.resumed.Add(1)
	default:
		r.full.Add(1)
	}
	if h.Err == nil {
		r.mu.Lock()
		r.durations[r.n%handshakeWindow] = h.Duration
		r.n++
		r.mu.Unlock()
	}
	r.next.Handshake(h)
}

func (r *recorder) SubchannelState(target, endpoint string, s connectivity.State) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil && !e.agg.Load() {
		e.state.Store(int32(s))
	}
	r.next.SubchannelState(target, endpoint, s)
}

func (r *recorder) EndpointEjected(target, endpoint string, d time.Duration) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.ejected.Store(true)
	}
	r.next.EndpointEjected(target, endpoint, d)
}

func (r *recorder) EndpointReturned(target, endpoint string) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.ejected.Store(false)
	}
	r.next.EndpointReturned(target, endpoint)
}

func (r *recorder) EndpointState(target, endpoint string, s connectivity.State, conns int) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.agg.Store(true)
		e.state.Store(int32(s))
		e.conns.Store(int32(conns))
	}
	r.next.EndpointState(target, endpoint, s, conns)
}

func (r *recorder) EndpointCalls(target, endpoint string, c telemetry.EndpointCalls) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.ok.Add(c.OK)
		e.failed.Add(c.Failed + c.TimedOut)
		e.shed.Add(c.Shed)
	}
	r.next.EndpointCalls(target, endpoint, c)
}

// EndpointRemoved forgets the endpoint, so the page shows only endpoints
// the resolver still lists.
func (r *recorder) EndpointRemoved(target, endpoint string) {
	if _, loaded := r.endpoints.LoadAndDelete([2]string{target, endpoint}); loaded {
		r.keys.Add(-1)
	}
	r.next.EndpointRemoved(target, endpoint)
}

func (r *recorder) EndpointLoad(target, endpoint string, n int, latency time.Duration) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.inFlight.Store(int64(n))
		e.latency.Store(int64(latency))
	}
	r.next.EndpointLoad(target, endpoint, n, latency)
}

// The policies' breaker and limiter events pass through: the debug page
// reads their live state from Factory.Policies, with each tenant, so it
// shows exactly the sets the Factory holds. (Recording them here by key
// alone showed a forgotten tenant's breaker as an untenanted row forever,
// and used up the record budget the endpoints need.)

func (r *recorder) BreakerStateChanged(tenant, key string, from, to telemetry.BreakerState) {
	r.next.BreakerStateChanged(tenant, key, from, to)
}

func (r *recorder) BreakerRejected(tenant, key string) { r.next.BreakerRejected(tenant, key) }

func (r *recorder) LimiterLimitChanged(tenant, key string, limit int) {
	r.next.LimiterLimitChanged(tenant, key, limit)
}

func (r *recorder) LimiterRejected(tenant, key, reason string) {
	r.next.LimiterRejected(tenant, key, reason)
}

// handshakes summarises the handshake counters and recent durations.
func (r *recorder) handshakes() debugpage.Handshakes {
	h := debugpage.Handshakes{Full: r.full.Load(), Resumed: r.resumed.Load(), Failed: r.failed.Load()}
	r.mu.Lock()
	d := append([]time.Duration(nil), r.durations[:min(r.n, handshakeWindow)]...)
	r.mu.Unlock()
	if len(d) > 0 {
		slices.Sort(d)
		h.P50 = debugpage.Duration(d[len(d)*50/100])
		h.P99 = debugpage.Duration(d[min(len(d)*99/100, len(d)-1)])
	}
	return h
}

// DebugHandler returns an http.Handler showing the Factory's live state,
// like Envoy's admin /clusters: shared connections (target, tenant,
// handles, state, age, in-flight calls, the service config in force),
// endpoints as the balancer reported them (state over their connections,
// connections open, calls OK, failed and shed), breakers and limiters by
// tenant, the TLS session cache and recent handshakes. HTML refreshing
// itself every 2 s, or JSON with ?format=json. Mount it at
// /debug/grpcreuse on an internal-only listener: it shows targets and
// tenants.
func (f *Factory) DebugHandler() http.Handler { return debugpage.NewHandler(f.DebugSnapshot) }

// DebugSnapshot returns what DebugHandler shows, for a page of your own:
// a process that also serves can add the server half (Snapshot.Server)
// and serve both with debugpage.NewHandler. Safe for concurrent use; it
// takes the Factory's lock only to copy the pool, never while asking grpc
// for connection states.
func (f *Factory) DebugSnapshot() debugpage.Snapshot { return f.debugSnapshot() }

// connRow is what debugSnapshot copies of a shared entry under f.mu, so
// that it asks grpc for states after releasing the lock.
type connRow struct {
	key  key
	refs int
	gen  *generation
}

func (f *Factory) debugSnapshot() debugpage.Snapshot {
	now := time.Now()
	s := debugpage.Snapshot{Generated: now}
	f.mu.Lock()
	rows := make([]connRow, 0, len(f.conns))
	for _, sh := range f.conns {
		rows = append(rows, connRow{key: sh.key, refs: sh.refs, gen: sh.cur.Load()})
	}
	f.mu.Unlock()
	for _, r := range rows { // GetState takes grpc's own locks: not under f.mu
		s.Connections = append(s.Connections, debugpage.Conn{
			Target: r.key.target, Tenant: r.key.tenant, Handles: r.refs, State: r.gen.cc.GetState().String(),
			Age: debugpage.Duration(now.Sub(r.gen.born)), InFlight: r.gen.inflight.Load(), ServiceConfig: r.key.serviceConfig,
		})
	}
	slices.SortFunc(s.Connections, func(a, b debugpage.Conn) int {
		return cmp.Or(cmp.Compare(a.Target, b.Target), cmp.Compare(a.Tenant, b.Tenant))
	})
	f.rec.endpoints.Range(func(k, v any) bool {
		key, e := k.([2]string), v.(*endpointRecord)
		s.Endpoints = append(s.Endpoints, debugpage.Endpoint{Target: key[0], Endpoint: key[1],
			State: connectivity.State(e.state.Load()).String(), Connections: int(e.conns.Load()), InFlight: int(e.inFlight.Load()),
			Latency: debugpage.Duration(e.latency.Load()), Ejected: e.ejected.Load(),
			CallsOK: e.ok.Load(), CallsFailed: e.failed.Load(), CallsShed: e.shed.Load()})
		return true
	})
	slices.SortFunc(s.Endpoints, func(a, b debugpage.Endpoint) int {
		return cmp.Or(cmp.Compare(a.Target, b.Target), cmp.Compare(a.Endpoint, b.Endpoint))
	})
	s.Breakers, s.Limiters = f.policyRows()
	if c := f.opts.sessions; c != nil {
		st := c.Stats()
		dc := debugpage.SessionCache{Name: "WithTLS", Size: st.Len, Offered: st.Offered, Resumed: st.Resumed,
			NotResumed: st.NotResumed, Misses: st.Misses}
		if n := st.Resumed + st.NotResumed; n > 0 {
			dc.ResumedRate = float64(st.Resumed) / float64(n)
		}
		s.SessionCaches = append(s.SessionCaches, dc)
	}
	s.Handshakes = f.rec.handshakes()
	return s
}

// policyRows lists the live state of the policies' breakers and limiters
// (Factory.Policies, one set per tenant).
func (f *Factory) policyRows() ([]debugpage.Breaker, []debugpage.Limiter) {
	pol := f.Policies()
	bs := make([]debugpage.Breaker, 0, len(pol.Breakers))
	for _, st := range pol.Breakers {
		bs = append(bs, debugpage.Breaker{Key: st.Key, Tenant: st.Tenant, State: st.State.String(),
			Since: st.Since, NextProbe: st.NextProbe, Requests: st.Requests, Failures: st.Failures,
			ConsecutiveFailures: st.ConsecutiveFailures, Rejections: st.Rejections})
	}
	ls := make([]debugpage.Limiter, 0, len(pol.Limiters))
	for _, st := range pol.Limiters {
		ls = append(ls, debugpage.Limiter{Key: st.Key, Tenant: st.Tenant, Limit: st.Limit,
			InFlight: st.InFlight, Queued: st.Queued, Rejected: st.Rejected})
	}
	return bs, ls // Policies sorts by tenant and key
}

// gauges reads what the OpenTelemetry gauges need at a collection: the
// limiters' slots and the session cache's size, nothing of the rest of
// the debug snapshot, and nothing under the Factory's locks.
func (f *Factory) gauges() opentelemetry.Gauges {
	var g opentelemetry.Gauges
	for _, l := range f.Policies().Limiters {
		g.Limiters = append(g.Limiters, opentelemetry.LimiterGauge{Tenant: l.Tenant, Key: l.Key, InFlight: l.InFlight, Queued: l.Queued})
	}
	if c := f.opts.sessions; c != nil {
		g.SessionCaches = append(g.SessionCaches, opentelemetry.SessionCacheGauge{Name: "WithTLS", Size: c.Stats().Len})
	}
	return g
}
