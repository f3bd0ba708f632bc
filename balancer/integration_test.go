package balancer

import (
	"context"
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
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/observerattr"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// dial connects through a manual resolver that reports the backends'
// addresses (and obs, when set) with the policy configured by cfgJSON.
func dial(t testing.TB, cfgJSON string, obs *recorder, addrs ...string) (*grpc.ClientConn, *manual.Resolver) {
	t.Helper()
	return dialPolicy(t, Name, cfgJSON, obs, addrs...)
}

// skipName is the policy of this package on skipClock: real time, plus
// whatever a test skips ahead. A test can then make an ejection outlast
// any slow machine and still see it end without waiting for it.
const skipName = Name + "_skip_clock_test"

var skipClock = struct {
	start time.Time
	skip  atomic.Int64
}{start: time.Now()}

func init() {
	// Registered at init: grpc's balancer registry is not safe to change
	// while channels are running.
	grpcbalancer.Register(&builder{name: skipName, k: knobs{now: func() time.Duration {
		return time.Since(skipClock.start) + time.Duration(skipClock.skip.Load())
	}}})
}

// dialPolicy is dial with the named registration of this package's policy.
func dialPolicy(t testing.TB, name, cfgJSON string, obs *recorder, addrs ...string) (*grpc.ClientConn, *manual.Resolver) {
	t.Helper()
	r := manual.NewBuilderWithScheme("grpcreuse-test")
	r.InitialState(state(obs, addrs...))
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:%s}]}`, name, cfgJSON)
	cc, err := grpc.NewClient(r.Scheme()+":///backends", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, r
}

func state(obs *recorder, addrs ...string) resolver.State {
	s := resolver.State{Endpoints: endpoints(addrs...)}
	if obs != nil {
		s = observerattr.Set(s, obs)
	}
	return s
}

func call(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

// TestIntegrationEagerSubchannels: subchannelsPerEndpoint connections are
// open to every backend before the first call.
func TestIntegrationEagerSubchannels(t *testing.T) {
	b1 := testutil.StartBackend(t, testutil.BackendOptions{})
	b2 := testutil.StartBackend(t, testutil.BackendOptions{})
	cc, _ := dial(t, `{"subchannelsPerEndpoint":3}`, nil, b1.Addr, b2.Addr)
	cc.Connect()
	testutil.Eventually(t, 5*time.Second, func() bool {
		return b1.Listener.Accepts() == 3 && b2.Listener.Accepts() == 3 && cc.GetState() == connectivity.Ready
	}, "3 connections to each backend and a READY channel before any call")
	if b1.Calls.Load()+b2.Calls.Load() != 0 {
		t.Fatal("calls were made")
	}
}

// TestIntegrationScaleUp: a server that allows 10 streams per connection
// gets more connections once more than targetStreamsPerSubchannel calls are
// in flight, and then serves more than 10 calls at once to this client.
//
// Calls picked before a new connection is READY wait for stream quota on the
// connection they were given (grpc does not hand them back), so the proof
// uses callers that keep calling, as real load does.
func TestIntegrationScaleUp(t *testing.T) {
	var running, peak atomic.Int64
	b := testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: []grpc.ServerOption{grpc.MaxConcurrentStreams(10)},
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(5 * time.Millisecond) // simulated work
			return &testpb.SimpleResponse{}, nil
		},
	})
	cc, _ := dial(t, `{"maxSubchannelsPerEndpoint":4,"targetStreamsPerSubchannel":8}`, nil, b.Addr)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if call(context.Background(), cc) != nil {
					failed.Add(1)
				}
			}
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return peak.Load() > 20 && b.Listener.Accepts() >= 3 },
		"3 connections and more than 20 calls running at once on a server allowing 10 streams per connection")
	stop()
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d calls failed", f)
	}
	if got := b.Listener.Accepts(); got > 4 {
		t.Fatalf("backend accepted %d connections, more than maxSubchannelsPerEndpoint 4", got)
	}
	t.Logf("connections: %d, peak concurrent calls on the server: %d", b.Listener.Accepts(), peak.Load())
}

// TestIntegrationScaleDown: extra connections close after the idle timeout,
// the base one stays.
func TestIntegrationScaleDown(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	var running atomic.Int64
	b := testutil.StartBackend(t, testutil.BackendOptions{
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			running.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
			}
			return &testpb.SimpleResponse{}, nil
		},
	})
	obs := newRecorder()
	cc, _ := dial(t, `{"maxSubchannelsPerEndpoint":3,"targetStreamsPerSubchannel":2,"subchannelIdleTimeout":"0.3s"}`, obs, b.Addr)
	errs := make(chan error, 20)
	for range 10 {
		go func() { errs <- call(context.Background(), cc) }()
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return obs.count(b.Addr, connectivity.Ready) >= 2 }, "a second READY subchannel under load")
	for range 10 {
		go func() { errs <- call(context.Background(), cc) }()
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return running.Load() == 20 }, "20 calls running")
	once.Do(func() { close(release) })
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		return obs.count(b.Addr, connectivity.Shutdown) == obs.count(b.Addr, connectivity.Ready)-1
	}, "every extra subchannel closed after 0.3s idle, the base one open")
	if err := call(context.Background(), cc); err != nil {
		t.Fatalf("call on the remaining connection: %v", err)
	}
}

// TestIntegrationEjectionAndReturn: a backend that fails every call is
// ejected after consecutiveFailures, gets no calls while ejected, returns
// on its own once baseEjectionTime has passed, and gets calls again once
// it is healthy. The ejection lasts a minute of skipClock, so "while
// ejected" cannot run past it on a slow machine; the test then skips it.
func TestIntegrationEjectionAndReturn(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	bad := testutil.StartBackend(t, testutil.BackendOptions{Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if broken.Load() {
			return nil, status.Error(codes.Unavailable, "backend broken")
		}
		return &testpb.SimpleResponse{}, nil
	}})
	g1 := testutil.StartBackend(t, testutil.BackendOptions{})
	g2 := testutil.StartBackend(t, testutil.BackendOptions{})
	obs := newRecorder()
	cc, _ := dialPolicy(t, skipName, `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"60s"}}`, obs, bad.Addr, g1.Addr, g2.Addr)
	failures := 0
	for i := 0; len(obs.ejections(bad.Addr)) == 0; i++ {
		if i > 2000 {
			t.Fatal("bad backend never ejected")
		}
		if err := call(context.Background(), cc); err != nil {
			failures++
		}
	}
	if failures < 3 {
		t.Fatalf("%d failures before ejection, want at least consecutiveFailures", failures)
	}
	if d := obs.ejections(bad.Addr)[0]; d != time.Minute {
		t.Fatalf("ejected for %v, want baseEjectionTime", d)
	}
	before := bad.Calls.Load()
	for range 50 {
		if err := call(context.Background(), cc); err != nil {
			t.Fatalf("call failed while the bad backend is ejected: %v", err)
		}
	}
	if n := bad.Calls.Load() - before; n != 0 {
		t.Fatalf("ejected backend got %d calls", n)
	}
	if n := obs.returns(bad.Addr); n != 0 {
		t.Fatalf("backend returned %d times before its ejection time passed", n)
	}
	broken.Store(false)
	skipClock.skip.Add(int64(time.Minute))
	testutil.Eventually(t, 5*time.Second, func() bool { return obs.returns(bad.Addr) == 1 }, "bad backend returned after its ejection time")
	before = bad.Calls.Load()
	testutil.Eventually(t, 5*time.Second, func() bool {
		if err := call(context.Background(), cc); err != nil {
			t.Errorf("call failed: %v", err)
		}
		return bad.Calls.Load() > before
	}, "the returned backend gets calls again")
}

// TestIntegrationCancellationsNeverEject: callers cancelling their own
// calls never count against the backend.
func TestIntegrationCancellationsNeverEject(t *testing.T) {
	started := make(chan struct{}, 100)
	b := testutil.StartBackend(t, testutil.BackendOptions{Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	g := testutil.StartBackend(t, testutil.BackendOptions{Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	obs := newRecorder()
	cc, _ := dial(t, `{"ejection":{"consecutiveFailures":2}}`, obs, b.Addr, g.Addr)
	for range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- call(ctx, cc) }()
		<-started
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Fatalf("call error %v, want Canceled", err)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := call(ctx, cc)
		<-started
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call error %v, want DeadlineExceeded", err)
		}
	}
	cc.Close() // ends the loop, so any pending ejection would have been reported
	if e := len(obs.ejections(b.Addr)) + len(obs.ejections(g.Addr)); e != 0 {
		t.Fatalf("%d ejections caused by the callers' own cancellations and deadlines", e)
	}
}

// TestIntegrationUnavailableWithConnectionError: when no backend can be
// reached, calls fail fast with Unavailable naming the connection error.
func TestIntegrationUnavailableWithConnectionError(t *testing.T) {
	var dead []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead = append(dead, l.Addr().String())
		l.Close()
	}
	cc, _ := dial(t, `{}`, nil, dead...)
	err := call(context.Background(), cc)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call error %v, want Unavailable", err)
	}
	msg := status.Convert(err).Message()
	if !strings.Contains(msg, Name+": no endpoint can serve; last connection error:") || !strings.Contains(msg, "refused") {
		t.Fatalf("message %q does not carry the last connection error", msg)
	}
	// A wait-for-ready call waits instead, until its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("wait-for-ready call error %v, want DeadlineExceeded", err)
	}
}

// TestIntegrationMultiAddressEndpoint: an endpoint whose first address is
// dead is reached through its second.
func TestIntegrationMultiAddressEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := l.Addr().String()
	l.Close()
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	r := manual.NewBuilderWithScheme("grpcreuse-test")
	r.InitialState(resolver.State{Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: deadAddr}, {Addr: b.Addr}}}}})
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"subchannelsPerEndpoint":2}}]}`, Name)
	cc, err := grpc.NewClient(r.Scheme()+":///x", grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if err := call(context.Background(), cc); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationResolverUpdatesUnderLoad: endpoints are added and removed
// while 16 callers keep calling; no call fails, removed backends stop
// getting calls and new ones start.
func TestIntegrationResolverUpdatesUnderLoad(t *testing.T) {
	var bs []*testutil.Backend
	for range 4 {
		bs = append(bs, testutil.StartBackend(t, testutil.BackendOptions{Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			time.Sleep(time.Millisecond) // the backend's work, not synchronisation
			return &testpb.SimpleResponse{}, nil
		}}))
	}
	obs := newRecorder()
	cc, r := dial(t, `{"subchannelsPerEndpoint":2}`, obs, bs[0].Addr, bs[1].Addr)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var calls, failed atomic.Int64
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := call(context.Background(), cc); err != nil {
					failed.Add(1)
					select {
					case errs <- err:
					default:
					}
				}
				calls.Add(1)
			}
		}()
	}
	waitCalls := func(b *testutil.Backend) {
		t.Helper()
		n := b.Calls.Load()
		testutil.Eventually(t, 10*time.Second, func() bool { return b.Calls.Load() > n+20 }, "calls reach "+b.Addr)
	}
	waitCalls(bs[1])
	for _, set := range [][]int{{1, 2}, {2, 3}, {3}, {0, 1, 2, 3}, {0}} {
		var addrs []string
		for _, i := range set {
			addrs = append(addrs, bs[i].Addr)
		}
		r.UpdateState(state(obs, addrs...))
		for _, i := range set {
			waitCalls(bs[i])
		}
	}
	// Only bs[0] is left: the others get no more calls.
	testutil.Eventually(t, 5*time.Second, func() bool { return obs.count(bs[3].Addr, connectivity.Shutdown) == 2 }, "bs[3] subchannels shut down")
	n1, n2, n3 := bs[1].Calls.Load(), bs[2].Calls.Load(), bs[3].Calls.Load()
	waitCalls(bs[0])
	stop()
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d of %d calls failed across resolver updates; first: %v", f, calls.Load(), <-errs)
	}
	if bs[1].Calls.Load() != n1 || bs[2].Calls.Load() != n2 || bs[3].Calls.Load() != n3 {
		t.Fatal("removed backends kept getting calls")
	}
	t.Logf("%d calls, none failed", calls.Load())
}

// loadSpread runs n calls from `callers` goroutines and returns how many
// reached each backend and how many failed.
func loadSpread(t *testing.T, cc *grpc.ClientConn, callers, n int) (failed int64) {
	t.Helper()
	var wg sync.WaitGroup
	var left, fails atomic.Int64
	left.Store(int64(n))
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if call(context.Background(), cc) != nil {
					fails.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return fails.Load()
}

// TestIntegrationSlowBackendAvoided: with one backend 40ms slower than two
// others, peak-EWMA scoring sends it far less than round robin's third.
// 40 ms, not 20: on a loaded machine the fast backends' calls stretch to
// the machine's latency, the two sides' gap narrows, and at 20 ms the
// share reached 15.1% under a CI run on 2 busy cores.
func TestIntegrationSlowBackendAvoided(t *testing.T) {
	var bs []*testutil.Backend
	for i := range 3 {
		delay := time.Millisecond
		if i == 0 {
			delay = 41 * time.Millisecond
		}
		bs = append(bs, testutil.StartBackend(t, testutil.BackendOptions{Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			time.Sleep(delay) // simulated work
			return &testpb.SimpleResponse{}, nil
		}}))
	}
	obs := newRecorder()
	cc, _ := dial(t, `{}`, obs, bs[0].Addr, bs[1].Addr, bs[2].Addr)
	if f := loadSpread(t, cc, 16, 3000); f != 0 {
		t.Fatalf("%d calls failed", f)
	}
	share := float64(bs[0].Calls.Load()) / 3000
	t.Logf("slow backend got %.1f%% of calls", share*100)
	// Round robin sends it a third. Usually it gets 1-5%; the bound leaves
	// room for a machine so loaded that the fast backends' 1 ms sleeps
	// stretch too (10.2% with two test suites at once on 2 cores); the
	// bench measures the share itself (docs/benchmarks.md).
	if share > 0.15 {
		t.Fatalf("slow backend got %.1f%% of calls, want < 15%% (round robin: 33%%)", share*100)
	}
	// The load reports carry the latency estimate the picks used. The
	// slow endpoint's peak is checked: once it gets no calls its estimate
	// drifts towards the others' (so that it is tried again). Its calls
	// take 41 ms; the bound leaves room for calls that straddle sample
	// windows. A fast one's is only checked to be reported: on a loaded
	// machine its latency is the machine's, not its 1 ms of work.
	obs.mu.Lock()
	slow, fast := obs.peak[bs[0].Addr], obs.latency[bs[1].Addr]
	obs.mu.Unlock()
	if fast <= 0 || slow < 15*time.Millisecond {
		t.Fatalf("reported latency: slow endpoint %v at its peak, a fast one %v; want the slow one at least 15ms and the fast one reported", slow, fast)
	}
}

// TestIntegrationFastErrorsPenalised: a backend that fails half its calls
// quickly does not attract traffic by looking fast, even with ejection off.
func TestIntegrationFastErrorsPenalised(t *testing.T) {
	var bs []*testutil.Backend
	var n atomic.Int64
	for i := range 3 {
		bs = append(bs, testutil.StartBackend(t, testutil.BackendOptions{Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if i == 0 && n.Add(1)%2 == 0 {
				return nil, status.Error(codes.Unavailable, "overloaded")
			}
			time.Sleep(2 * time.Millisecond) // simulated work
			return &testpb.SimpleResponse{}, nil
		}}))
	}
	cc, _ := dial(t, `{"ejection":{"consecutiveFailures":0}}`, nil, bs[0].Addr, bs[1].Addr, bs[2].Addr)
	failed := loadSpread(t, cc, 16, 3000)
	share := float64(bs[0].Calls.Load()) / 3000
	t.Logf("failing backend got %.1f%% of calls, callers saw %d failures", share*100, failed)
	if share > 0.15 {
		t.Fatalf("failing backend got %.1f%% of calls, want < 15%% (round robin: 33%%)", share*100)
	}
}
