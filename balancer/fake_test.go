package balancer

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/resolver"

	"github.com/grpcreuse/grpcreuse/internal/observerattr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// fakeCC is a grpc balancer.ClientConn that records what the balancer asks.
type fakeCC struct {
	grpcbalancer.ClientConn // nil: any method not overridden panics

	mu     sync.Mutex
	subs   []*fakeSC
	states []grpcbalancer.State
}

func (f *fakeCC) NewSubConn(addrs []resolver.Address, o grpcbalancer.NewSubConnOptions) (grpcbalancer.SubConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fakeSC{addrs: addrs, listener: o.StateListener}
	f.subs = append(f.subs, s)
	return s, nil
}

func (f *fakeCC) MetricsRecorder() estats.MetricsRecorder                  { return nopRecorder{} }
func (f *fakeCC) ResolveNow(resolver.ResolveNowOptions)                    {}
func (f *fakeCC) Target() string                                           { return "fake:///x" }
func (f *fakeCC) UpdateAddresses(grpcbalancer.SubConn, []resolver.Address) {}

func (f *fakeCC) UpdateState(s grpcbalancer.State) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states = append(f.states, s)
}

func (f *fakeCC) last() grpcbalancer.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.states[len(f.states)-1]
}

// live returns the subchannels not shut down.
func (f *fakeCC) live() []*fakeSC {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fakeSC
	for _, s := range f.subs {
		if !s.shut.Load() {
			out = append(out, s)
		}
	}
	return out
}

type fakeSC struct {
	grpcbalancer.SubConn
	addrs    []resolver.Address
	listener func(grpcbalancer.SubConnState)
	connects atomic.Int32
	shut     atomic.Bool

	mu     sync.Mutex
	health func(grpcbalancer.SubConnState)
}

func (s *fakeSC) Connect()  { s.connects.Add(1) }
func (s *fakeSC) Shutdown() { s.shut.Store(true) }

// RegisterHealthListener keeps the listener (pick_first registers one when
// the connection is READY, holding its own lock); set delivers health
// states through it afterwards, as grpc's serializer would.
func (s *fakeSC) RegisterHealthListener(f func(grpcbalancer.SubConnState)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.health = f
}

// set delivers a state as grpc's serializer would. READY is followed by a
// healthy report, as grpc's health producer gives without health checking.
func (s *fakeSC) set(st connectivity.State, err error) {
	s.listener(grpcbalancer.SubConnState{ConnectivityState: st, ConnectionError: err})
	if st == connectivity.Ready {
		s.setHealth(connectivity.Ready, nil)
	}
}

// setHealth delivers a health state (health checking or outlier detection).
func (s *fakeSC) setHealth(st connectivity.State, err error) {
	s.mu.Lock()
	f := s.health
	s.mu.Unlock()
	if f != nil {
		f(grpcbalancer.SubConnState{ConnectivityState: st, ConnectionError: err})
	}
}

// fakeClock is a settable monotonic clock.
type fakeClock struct{ d atomic.Int64 }

func (c *fakeClock) now() time.Duration      { return time.Duration(c.d.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.d.Add(int64(d)) }

// recorder is a telemetry.SubchannelObserver that keeps what it is told.
type recorder struct {
	mu       sync.Mutex
	states   map[string][]connectivity.State
	ejected  map[string][]time.Duration
	returned map[string]int
	inflight map[string]int
	latency  map[string]time.Duration
	peak     map[string]time.Duration // highest latency reported
	epState  map[string]connectivity.State
	epConns  map[string]int
	calls    map[string]telemetry.EndpointCalls
	removed  map[string]int
}

var _ telemetry.SubchannelObserver = (*recorder)(nil)

func newRecorder() *recorder {
	return &recorder{states: map[string][]connectivity.State{}, ejected: map[string][]time.Duration{}, returned: map[string]int{}, inflight: map[string]int{}, latency: map[string]time.Duration{}, peak: map[string]time.Duration{},
		epState: map[string]connectivity.State{}, epConns: map[string]int{}, calls: map[string]telemetry.EndpointCalls{}, removed: map[string]int{}}
}

func (r *recorder) SubchannelState(_, ep string, s connectivity.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states[ep] = append(r.states[ep], s)
}

func (r *recorder) EndpointEjected(_, ep string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ejected[ep] = append(r.ejected[ep], d)
}

func (r *recorder) EndpointReturned(_, ep string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.returned[ep]++
}

func (r *recorder) EndpointLoad(_, ep string, n int, latency time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight[ep] = n
	r.latency[ep] = latency
	r.peak[ep] = max(r.peak[ep], latency)
}

func (r *recorder) EndpointState(_, ep string, s connectivity.State, conns int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.epState[ep] = s
	r.epConns[ep] = conns
}

func (r *recorder) EndpointCalls(_, ep string, c telemetry.EndpointCalls) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.calls[ep]
	t.OK += c.OK
	t.Failed += c.Failed
	t.Shed += c.Shed
	t.Cancelled += c.Cancelled
	t.TimedOut += c.TimedOut
	r.calls[ep] = t
}

func (r *recorder) EndpointRemoved(_, ep string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed[ep]++
}

// endpoint returns the latest aggregated state and open connections of ep.
func (r *recorder) endpoint(ep string) (connectivity.State, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epState[ep], r.epConns[ep]
}

func (r *recorder) callsOf(ep string) telemetry.EndpointCalls {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[ep]
}

func (r *recorder) count(ep string, s connectivity.State) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, x := range r.states[ep] {
		if x == s {
			n++
		}
	}
	return n
}

func (r *recorder) ejections(ep string) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.ejected[ep]...)
}

func (r *recorder) returns(ep string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.returned[ep]
}

// harness is a balancer built on a fakeCC with a fake clock and no
// control-loop goroutine: tests call tick to run a round synchronously, so
// everything that depends on time or on the loop happens when they say.
type harness struct {
	t     *testing.T
	cc    *fakeCC
	clock *fakeClock
	lb    *lb
	obs   *recorder
}

func newHarness(t *testing.T, seed uint64) *harness {
	t.Helper()
	h := &harness{t: t, cc: &fakeCC{}, clock: &fakeClock{}, obs: newRecorder()}
	h.clock.advance(time.Hour) // the origin is arbitrary
	var state atomic.Uint64
	state.Store(seed)
	rnd := func() uint64 { // splitmix64: deterministic and lock-free
		z := state.Add(0x9e3779b97f4a7c15)
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		return z ^ z>>31
	}
	b := &builder{name: "test", k: knobs{now: h.clock.now, rand: rnd, sampleInterval: 100 * time.Millisecond, latencyDecay: 2 * time.Second, manualLoop: true}}
	h.lb = b.Build(h.cc, grpcbalancer.BuildOptions{}).(*lb)
	t.Cleanup(h.lb.Close)
	return h
}

func endpoints(addrs ...string) []resolver.Endpoint {
	var eps []resolver.Endpoint
	for _, a := range addrs {
		eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	return eps
}

func (h *harness) update(cfg *Config, eps []resolver.Endpoint) error {
	h.t.Helper()
	s := observerattr.Set(resolver.State{Endpoints: eps}, h.obs)
	return h.lb.UpdateClientConnState(grpcbalancer.ClientConnState{ResolverState: s, BalancerConfig: cfg})
}

// readyAll moves every live subchannel to READY.
func (h *harness) readyAll() {
	for _, s := range h.cc.live() {
		s.set(connectivity.Connecting, nil)
		s.set(connectivity.Ready, nil)
	}
}

// pick picks from the latest picker and fails the test on error.
func (h *harness) pick() grpcbalancer.PickResult {
	h.t.Helper()
	r, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{})
	if err != nil {
		h.t.Fatalf("Pick: %v", err)
	}
	return r
}

func (h *harness) addrOf(r grpcbalancer.PickResult) string {
	return r.SubConn.(*fakeSC).addrs[0].Addr
}

// tick runs one control-loop round at the fake clock's time, as the loop
// goroutine would.
func (h *harness) tick() { h.lb.tick() }

func mustConfig(t *testing.T, js string) *Config {
	t.Helper()
	c, err := ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
