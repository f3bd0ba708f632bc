package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/observerattr"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// fieldServer is a backend for the field scenarios: a TestService whose
// work takes `work`, that sheds (RESOURCE_EXHAUSTED) beyond `limit` calls
// in flight when limit > 0, and whose health service the test controls.
type fieldServer struct {
	addr    string
	health  *health.Server
	srv     *grpc.Server
	calls   atomic.Int64 // calls answered OK
	shed    atomic.Int64 // calls refused
	busy    atomic.Int64 // nanoseconds spent on the work of OK calls
	running atomic.Int64
	// fail, when set and true, makes every call fail with UNAVAILABLE.
	fail *atomic.Bool
}

func startFieldServer(tb testing.TB, addr string, work time.Duration, limit int64) *fieldServer {
	tb.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("listen %s: %v", addr, err)
	}
	s := &fieldServer{addr: lis.Addr().String(), health: health.NewServer(), srv: grpc.NewServer()}
	testpb.RegisterTestServiceServer(s.srv, &fieldService{s: s, work: work, limit: limit})
	healthpb.RegisterHealthServer(s.srv, s.health)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.srv.Serve(lis) }()
	tb.Cleanup(func() { s.srv.Stop(); <-done })
	return s
}

func (s *fieldServer) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if !ok {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus("", st)
}

type fieldService struct {
	testpb.UnimplementedTestServiceServer
	s     *fieldServer
	work  time.Duration
	limit int64
}

func (f *fieldService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if f.s.fail != nil && f.s.fail.Load() {
		return nil, status.Error(codes.Unavailable, "backend broken")
	}
	n := f.s.running.Add(1)
	defer f.s.running.Add(-1)
	if f.limit > 0 && n > f.limit {
		f.s.shed.Add(1)
		return nil, status.Error(codes.ResourceExhausted, "server at its in-flight limit")
	}
	if f.work > 0 {
		t0 := time.Now()
		time.Sleep(f.work) // simulated work
		f.s.busy.Add(int64(time.Since(t0)))
	}
	f.s.calls.Add(1)
	return &testpb.SimpleResponse{}, nil
}

// dialSC dials the backends with a whole service config.
func dialSC(t testing.TB, sc string, obs *recorder, eps []resolver.Endpoint) (*grpc.ClientConn, *manual.Resolver) {
	t.Helper()
	r := manual.NewBuilderWithScheme("grpcreuse-field")
	st := resolver.State{Endpoints: eps}
	if obs != nil {
		st = observerattr.Set(st, obs)
	}
	r.InitialState(st)
	cc, err := grpc.NewClient(r.Scheme()+":///backends", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, r
}

func lbSC(policy, cfg string) string {
	return fmt.Sprintf(`{"loadBalancingConfig":[{%q:%s}]}`, policy, cfg)
}

func healthSC(policy, cfg string) string {
	return fmt.Sprintf(`{"healthCheckConfig":{"serviceName":""},"loadBalancingConfig":[{%q:%s}]}`, policy, cfg)
}

// TestIssue11HealthCheckNotServing: with healthCheckConfig, a NOT_SERVING
// backend gets no calls, exactly as with round_robin; when all are
// NOT_SERVING the channel is TRANSIENT_FAILURE and fail-fast calls fail
// with a message saying so; a backend that serves again gets calls again.
func TestIssue11HealthCheckNotServing(t *testing.T) {
	for _, policy := range []struct{ name, cfg string }{{Name, `{}`}, {"round_robin", `{}`}} {
		t.Run(policy.name, func(t *testing.T) {
			var ss []*fieldServer
			var addrs []string
			for range 3 {
				s := startFieldServer(t, "", 0, 0)
				ss, addrs = append(ss, s), append(addrs, s.addr)
			}
			ss[0].setServing(false)
			cc, _ := dialSC(t, healthSC(policy.name, policy.cfg), nil, endpoints(addrs...))
			client := testpb.NewTestServiceClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for range 300 {
				if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
					t.Fatal(err)
				}
			}
			if n := ss[0].calls.Load(); n != 0 {
				t.Fatalf("NOT_SERVING backend got %d of 300 calls, want 0", n)
			}
			if ss[1].calls.Load() == 0 || ss[2].calls.Load() == 0 {
				t.Fatalf("serving backends got %d and %d calls; want both used", ss[1].calls.Load(), ss[2].calls.Load())
			}
			ss[1].setServing(false)
			ss[2].setServing(false)
			testutil.Eventually(t, 10*time.Second, func() bool { return cc.GetState() == connectivity.TransientFailure }, "TRANSIENT_FAILURE with every backend NOT_SERVING")
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "health check") {
				t.Fatalf("call with every backend NOT_SERVING: %v; want Unavailable naming the health check", err)
			}
			t.Logf("error with all NOT_SERVING: %v", err)
			ss[2].setServing(true)
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
				t.Fatal(err)
			}
			if ss[2].calls.Load() == 0 {
				t.Fatal("the backend serving again got no call")
			}
		})
	}
}

// hungListener accepts TCP connections and never speaks HTTP/2: a backend
// that hangs in the handshake.
func hungListener(t *testing.T, addr string) string { return hungListenerTB(t, addr) }

func hungListenerTB(t testing.TB, addr string) string {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// liveAddr is a loopback address other than 127.0.0.1: [::1] when the
// machine has IPv6, else 127.0.0.2.
func liveAddr(*testing.T) string { return liveAddrTB() }

func liveAddrTB() string {
	if l, err := net.Listen("tcp", "[::1]:0"); err == nil {
		l.Close()
		return "[::1]:0"
	}
	return "127.0.0.2:0"
}

// TestIssue11HappyEyeballs: an endpoint whose first address accepts TCP
// but never speaks HTTP/2 connects through its second address, as
// pick_first does (250 ms later), instead of never. The 5 s deadline is
// far above what happy eyeballs needs and far below the 20 s connect
// timeout that the first address would otherwise hold the connection for.
func TestIssue11HappyEyeballs(t *testing.T) {
	hung := hungListener(t, "127.0.0.1:0")
	live := startFieldServer(t, liveAddr(t), 0, 0)
	ep := resolver.Endpoint{Addresses: []resolver.Address{{Addr: hung}, {Addr: live.addr}}}
	cc, _ := dialSC(t, lbSC(Name, `{"subchannelsPerEndpoint":2}`), nil, []resolver.Endpoint{ep})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 20 {
		if _, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("call through {hung %s, live %s}: %v", hung, live.addr, err)
		}
	}
	if live.calls.Load() != 20 {
		t.Fatalf("live address got %d of 20 calls", live.calls.Load())
	}
}

// TestIssue11SheddingNeverEjects: backends that shed beyond an in-flight
// limit under 1.5× their capacity are never ejected, keep getting calls,
// and their sheds are reported as such.
func TestIssue11SheddingNeverEjects(t *testing.T) {
	const limit, callers = 4, 18 // 3 backends × 4 = 12 capacity; 18 = 1.5×
	var ss []*fieldServer
	var addrs []string
	for range 3 {
		s := startFieldServer(t, "", 2*time.Millisecond, limit)
		ss, addrs = append(ss, s), append(addrs, s.addr)
	}
	obs := newRecorder()
	cc, _ := dialSC(t, lbSC(Name, `{}`), obs, endpoints(addrs...))
	client := testpb.NewTestServiceClient(cc)
	// Every backend connected and answering before the load starts.
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, _ = client.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		return ss[0].calls.Load() > 0 && ss[1].calls.Load() > 0 && ss[2].calls.Load() > 0
	}, "every backend answers")
	var before [3]int64
	for i, s := range ss {
		before[i] = s.calls.Load()
	}
	var wg sync.WaitGroup
	var left atomic.Int64
	left.Store(3000)
	var other atomic.Value
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
				if err != nil && status.Code(err) != codes.ResourceExhausted {
					other.Store(err)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := other.Load().(error); err != nil {
		t.Fatalf("a call failed with something other than back-pressure: %v", err)
	}
	var shed, answered int64
	for i, s := range ss {
		answered += s.calls.Load() - before[i]
		shed += s.shed.Load()
	}
	for i, s := range ss {
		if e := obs.ejections(s.addr); len(e) != 0 {
			t.Fatalf("shedding backend %s ejected %d times", s.addr, len(e))
		}
		// An even share is a third; load must not move off a shedding backend.
		if n := s.calls.Load() - before[i]; n*5 < answered {
			t.Fatalf("backend %s answered %d of %d calls; load moved off it", s.addr, n, answered)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		var n uint64
		for _, a := range addrs {
			n += obs.callsOf(a).Shed
		}
		return n == uint64(shed)
	}, "the observer's shed counts match the servers'")
	t.Logf("shed %d of 3000 calls", shed)
}

// TestIssue11BlackHole: a backend that swallows every byte (a black hole,
// no keepalive) gets at most an occasional probe call once its calls time
// out, while the other backends answer; the callers' deadlines eject
// nothing.
func TestIssue11BlackHole(t *testing.T) {
	var ss []*fieldServer
	for range 3 {
		ss = append(ss, startFieldServer(t, "", time.Millisecond, 0))
	}
	proxy := testutil.StartProxy(t, ss[0].addr)
	obs := newRecorder()
	cc, _ := dialSC(t, lbSC(Name, `{}`), obs, endpoints(proxy.Addr, ss[1].addr, ss[2].addr))
	client := testpb.NewTestServiceClient(cc)
	callOnce := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		return err
	}
	for range 300 {
		if err := callOnce(); err != nil {
			t.Fatal(err)
		}
	}
	if ss[0].calls.Load() == 0 {
		t.Fatal("the backend behind the proxy got no call before the black hole")
	}
	proxy.Blackhole(true)
	var wg sync.WaitGroup
	var timedOut, other atomic.Int64
	var left atomic.Int64
	left.Store(6000)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				switch err := callOnce(); status.Code(err) {
				case codes.OK:
				case codes.DeadlineExceeded:
					timedOut.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	c := obs.callsOf(proxy.Addr)
	t.Logf("after the black hole: %d calls timed out (observer: %d timed out on the black hole), %d other errors", timedOut.Load(), c.TimedOut, other.Load())
	// Round robin sends a third of 6000 calls (2000) into the hole. The
	// first calls pile up before any times out (at most one per caller),
	// then probes come one at a time with doubling holds.
	if n := timedOut.Load(); n > 40 {
		t.Fatalf("%d calls timed out in the black hole; want at most the first pile-up plus a few probes", n)
	}
	if other.Load() != 0 {
		t.Fatalf("%d calls failed with other errors", other.Load())
	}
	for _, a := range []string{proxy.Addr, ss[1].addr, ss[2].addr} {
		if e := obs.ejections(a); len(e) != 0 {
			t.Fatalf("endpoint %s ejected %d times by timeouts", a, len(e))
		}
	}
}

// TestHealthListenerStates: a connection whose health listener reports
// TRANSIENT_FAILURE (health check or outlier-detection ejection) is out of
// picking; all of them failing makes the channel TRANSIENT_FAILURE with
// the health error; recovery brings it back.
func TestHealthListenerStates(t *testing.T) {
	h := newHarness(t, 9)
	if err := h.update(mustConfig(t, `{}`), endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	subs := h.cc.live()
	ejectErr := errors.New("connection active but health check failed. status=NOT_SERVING")
	subs[0].setHealth(connectivity.TransientFailure, ejectErr)
	for range 50 {
		if a := h.addrOf(h.pick()); a != "b:1" {
			t.Fatalf("picked %s whose health listener reports TRANSIENT_FAILURE", a)
		}
	}
	if st, n := h.obs.endpoint("a:1"); st != connectivity.TransientFailure || n != 1 {
		t.Fatalf("endpoint a:1 reported %v with %d connections; want TRANSIENT_FAILURE with 1", st, n)
	}
	subs[1].setHealth(connectivity.TransientFailure, ejectErr)
	st := h.cc.last()
	if st.ConnectivityState != connectivity.TransientFailure {
		t.Fatalf("state %v with every connection unhealthy; want TRANSIENT_FAILURE", st.ConnectivityState)
	}
	_, err := st.Picker.Pick(grpcbalancer.PickInfo{})
	if err == nil || !strings.Contains(err.Error(), "all 2 endpoints fail their health checks") || !strings.Contains(err.Error(), "NOT_SERVING") {
		t.Fatalf("Pick error = %v; want one saying every endpoint fails its health check", err)
	}
	subs[0].setHealth(connectivity.Ready, nil)
	if a := h.addrOf(h.pick()); a != "a:1" {
		t.Fatalf("picked %s; only a:1 is healthy again", a)
	}
}

// TestEndpointStateAggregated (issue 11): an endpoint's reported state is
// aggregated over its connections, so closing an idle extra connection
// does not make a serving endpoint look SHUTDOWN, and its open connections
// are counted.
func TestEndpointStateAggregated(t *testing.T) {
	h := newHarness(t, 10)
	cfg := mustConfig(t, `{"subchannelsPerEndpoint":1,"maxSubchannelsPerEndpoint":2,"targetStreamsPerSubchannel":1,"subchannelIdleTimeout":"1s"}`)
	if err := h.update(cfg, endpoints("a:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	r1, r2 := h.pick(), h.pick() // 2 in flight > target 1: asks for one more
	h.tick()
	h.readyAll()
	if st, n := h.obs.endpoint("a:1"); st != connectivity.Ready || n != 2 {
		t.Fatalf("endpoint reported %v with %d connections; want READY with 2", st, n)
	}
	r1.Done(okDone)
	r2.Done(okDone)
	h.tick()
	h.clock.advance(2 * time.Second)
	h.tick()
	if len(h.cc.live()) != 1 {
		t.Fatalf("%d live subchannels after the idle timeout; want 1", len(h.cc.live()))
	}
	if st, n := h.obs.endpoint("a:1"); st != connectivity.Ready || n != 1 {
		t.Fatalf("after scale-down the endpoint reported %v with %d connections; want READY with 1", st, n)
	}
	if h.obs.count("a:1", connectivity.Shutdown) != 1 {
		t.Fatalf("observer saw %d SHUTDOWN subchannels; want the one extra", h.obs.count("a:1", connectivity.Shutdown))
	}
	if c := h.obs.callsOf("a:1"); c.OK != 2 {
		t.Fatalf("observer counted %+v; want 2 OK calls", c)
	}
}

// TestSnapshot: the debug-page snapshot shows every endpoint with its
// aggregated state, connections and call counts, and forgets a closed
// channel.
func TestSnapshot(t *testing.T) {
	s1 := startFieldServer(t, "", 0, 0)
	s2 := startFieldServer(t, "", 0, 0)
	cc, _ := dialSC(t, lbSC(Name, `{"subchannelsPerEndpoint":2}`), nil, endpoints(s1.addr, s2.addr))
	client := testpb.NewTestServiceClient(cc)
	for range 20 {
		if _, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
	}
	var mine ChannelSnapshot
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, s := range Snapshot() {
			if s.Target == "grpcreuse-field:///backends" && len(s.Endpoints) == 2 && s.Endpoints[0].Ready == 2 && s.Endpoints[1].Ready == 2 {
				mine = s
				return true
			}
		}
		return false
	}, "a snapshot with both endpoints READY on 2 connections")
	if mine.State != connectivity.Ready {
		t.Fatalf("channel state %v; want READY", mine.State)
	}
	var ok uint64
	for _, e := range mine.Endpoints {
		if e.State != connectivity.Ready || e.Connections != 2 || e.Ejected || e.Held {
			t.Fatalf("endpoint %+v; want READY, 2 connections, not ejected or held", e)
		}
		ok += e.Calls.OK
	}
	if ok != 20 {
		t.Fatalf("snapshot counts %d OK calls; want 20", ok)
	}
	cc.Close()
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, s := range Snapshot() {
			if s.Target == mine.Target {
				return false
			}
		}
		return true
	}, "the closed channel leaves the snapshot")
}
