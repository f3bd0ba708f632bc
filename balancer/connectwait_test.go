package balancer

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// frozenName is the policy of this package on frozenClock, a clock that
// moves only when a test moves it: a connect wait then never ends by
// itself, so a test can act on calls that are certainly waiting, or prove
// that calls went through without any wait ending. The loop's timers are
// real; only the balancer's reading of time is frozen.
const frozenName = Name + "_frozen_clock_test"

var frozenClock atomic.Int64

func init() {
	frozenClock.Store(int64(time.Hour))
	grpcbalancer.Register(&builder{name: frozenName, k: knobs{now: func() time.Duration { return time.Duration(frozenClock.Load()) }}})
}

// ejectedBackend starts a backend that fails every call with UNAVAILABLE
// until healed, dials it alone with policy (one minute ejections after 3
// failures) and fails calls until it is ejected. It returns the channel,
// its resolver, the backend and heal, which makes the backend answer.
func ejectedBackend(t *testing.T, policy, sc string) (*grpc.ClientConn, *manual.Resolver, *fieldServer, func()) {
	t.Helper()
	var broken atomic.Bool
	broken.Store(true)
	bad := startFieldServer(t, "", 0, 0)
	bad.fail = &broken
	obs := newRecorder()
	if sc == "" {
		sc = lbSC(policy, `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"60s","maxEjectionPercent":100}}`)
	}
	cc, r := dialSC(t, sc, obs, endpoints(bad.addr))
	client := testpb.NewTestServiceClient(cc)
	testutil.Eventually(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
		return len(obs.ejections(bad.addr)) == 1
	}, "the failing backend ejected")
	return cc, r, bad, func() { broken.Store(false) }
}

// callAll makes n fail-fast and n wait-for-ready calls at once, each with
// a deadline of timeout, and returns their errors and the longest time one
// took.
func callAll(cc *grpc.ClientConn, n int, timeout time.Duration) ([]error, time.Duration) {
	client := testpb.NewTestServiceClient(cc)
	errs := make([]error, 2*n)
	took := make([]time.Duration, 2*n)
	var wg sync.WaitGroup
	for i := range 2 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			t0 := time.Now()
			_, errs[i] = client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(i%2 == 1))
			took[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	var longest time.Duration
	for _, d := range took {
		longest = max(longest, d)
	}
	return errs, longest
}

// TestIntegrationConnectWaitHungConnection: beside an ejected backend
// (healed: it answers), an endpoint whose TCP connection is accepted but
// never speaks HTTP/2 stays CONNECTING for grpc's 20 s connect timeout.
// Fail-fast and wait-for-ready calls with a 5 s deadline are all answered
// by the ejected backend once connectWait has passed: none fails with
// UNAVAILABLE because of the wait, none runs into its deadline.
func TestIntegrationConnectWaitHungConnection(t *testing.T) {
	cc, r, bad, heal := ejectedBackend(t, Name, "")
	heal()
	hung := hungListener(t, "127.0.0.1:0")
	before := bad.calls.Load()
	r.UpdateState(state(nil, bad.addr, hung))
	if st := cc.GetState(); st != connectivity.Connecting {
		t.Fatalf("channel %v with the only unejected endpoint connecting, want CONNECTING (calls wait)", st)
	}
	errs, longest := callAll(cc, 8, 5*time.Second)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("call %d (wait-for-ready %v): %v; want it answered by the ejected backend", i, i%2 == 1, err)
		}
	}
	if n := bad.calls.Load() - before; n != 16 {
		t.Fatalf("ejected backend answered %d calls, want 16", n)
	}
	t.Logf("16 calls answered by the ejected backend, the slowest after %v", longest)
}

// TestIntegrationConnectWaitEndsWithoutCalls: the picker that holds calls
// back is replaced when connectWait ends even if no call comes (the loop
// asleep): the channel goes from CONNECTING back to READY by itself.
func TestIntegrationConnectWaitEndsWithoutCalls(t *testing.T) {
	cc, r, bad, _ := ejectedBackend(t, Name, "")
	hung := hungListener(t, "127.0.0.1:0")
	r.UpdateState(state(nil, bad.addr, hung))
	if st := cc.GetState(); st != connectivity.Connecting {
		t.Fatalf("channel %v just after a connecting endpoint was added beside the ejected one, want CONNECTING", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for st := cc.GetState(); st != connectivity.Ready; st = cc.GetState() {
		if !cc.WaitForStateChange(ctx, st) {
			t.Fatalf("channel still %v 10 s after the connect wait began, want READY after connectWait", st)
		}
	}
}

// TestConnectWaitWakesSleepingLoop: a loop with nothing else to do sleeps
// until the connect wait ends, not for maxSleep.
func TestConnectWaitWakesSleepingLoop(t *testing.T) {
	h := newHarness(t, 11)
	cfg := mustConfig(t, `{"ejection":{"consecutiveFailures":3,"maxEjectionPercent":100}}`)
	if err := h.update(cfg, endpoints("a:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	for range 3 {
		h.pick().Done(grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "down")})
	}
	h.clock.advance(100 * time.Millisecond)
	h.tick()
	if len(h.obs.ejections("a:1")) != 1 {
		t.Fatalf("a:1 ejections %v, want one", h.obs.ejections("a:1"))
	}
	h.clock.advance(100 * time.Millisecond)
	h.tick() // samples the window with the failures
	if err := h.update(cfg, endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{}); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Fatalf("pick error %v with b:1 just added, want ErrNoSubConnAvailable", err)
	}
	select {
	case <-h.lb.sh.kick:
	default:
		t.Fatal("a picker that holds calls back did not wake the loop")
	}
	for i := range 3 {
		h.clock.advance(100 * time.Millisecond)
		next := h.lb.tick()
		if left := connectWait - time.Duration(i+1)*100*time.Millisecond; next > left {
			t.Fatalf("idle loop sleeps %v with %v of the connect wait left", next, left)
		}
	}
	h.clock.advance(connectWait - 300*time.Millisecond)
	h.tick()
	if a := h.addrOf(h.pick()); a != "a:1" {
		t.Fatalf("picked %s after connectWait, want the ejected a:1", a)
	}
}

// TestIntegrationConnectWaitCallsEndOnChange: calls that wait for a
// connecting endpoint (the clock frozen, so the wait cannot end by itself)
// are answered at once when the resolver removes that endpoint, fail fast
// (or keep waiting, for wait-for-ready) when it removes every endpoint,
// and end when the channel is closed; the loop exits (TestMain's leak
// check).
func TestIntegrationConnectWaitCallsEndOnChange(t *testing.T) {
	for _, tc := range []string{"remove connecting", "remove all", "close"} {
		t.Run(tc, func(t *testing.T) {
			cc, r, bad, heal := ejectedBackend(t, frozenName, "")
			heal()
			hung := hungListener(t, "127.0.0.1:0")
			r.UpdateState(state(nil, bad.addr, hung))
			client := testpb.NewTestServiceClient(cc)
			type result struct {
				wfr bool
				err error
			}
			results := make(chan result, 8)
			var started sync.WaitGroup
			for i := range 8 {
				started.Add(1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					started.Done()
					_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(i%2 == 1))
					results <- result{i%2 == 1, err}
				}()
			}
			started.Wait()
			// The calls wait: nothing ends them while the clock is frozen.
			select {
			case res := <-results:
				t.Fatalf("a call ended during the frozen connect wait: %v", res.err)
			case <-time.After(50 * time.Millisecond):
			}
			switch tc {
			case "remove connecting":
				r.UpdateState(state(nil, bad.addr))
			case "remove all":
				r.UpdateState(state(nil))
			case "close":
				cc.Close()
			}
			ended := 8
			if tc == "remove all" {
				ended = 4 // the fail-fast ones
			}
			deadline := time.After(10 * time.Second)
			for range ended {
				select {
				case res := <-results:
					want := codes.OK
					switch tc {
					case "remove all":
						want = codes.Unavailable
					case "close":
						want = codes.Canceled
					}
					if status.Code(res.err) != want || (tc == "remove all" && res.wfr) {
						t.Fatalf("%s: call (wait-for-ready %v) ended with %v, want %v (fail-fast calls only, for remove all)", tc, res.wfr, res.err, want)
					}
				case <-deadline:
					t.Fatalf("%s: calls still waiting 10 s later", tc)
				}
			}
			if tc != "remove all" {
				return
			}
			// Wait-for-ready calls keep waiting with no endpoint at all,
			// as grpc specifies, and end when the channel closes.
			select {
			case res := <-results:
				t.Fatalf("wait-for-ready call ended with %v with every endpoint removed; want it waiting", res.err)
			case <-time.After(50 * time.Millisecond):
			}
			cc.Close()
			for range 4 {
				select {
				case res := <-results:
					if status.Code(res.err) != codes.Canceled {
						t.Fatalf("wait-for-ready call ended with %v on Close, want Canceled", res.err)
					}
				case <-deadline:
					t.Fatal("wait-for-ready calls still waiting 10 s after Close")
				}
			}
		})
	}
}

// notAnsweringHealth is a health service whose Watch never answers: the
// connection is READY, its health check not yet.
type notAnsweringHealth struct {
	healthpb.UnimplementedHealthServer
}

func (notAnsweringHealth) Watch(_ *healthpb.HealthCheckRequest, s grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	<-s.Context().Done()
	return s.Context().Err()
}

func startNotAnsweringHealth(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, notAnsweringHealth{})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String()
}

// TestIntegrationConnectWaitHealthCheck: with healthCheckConfig, calls
// wait connectWait at most for an endpoint whose health check has not
// answered (CONNECTING after its connection is READY), then go to the
// ejected backend; and they do not wait for a NOT_SERVING one at all (the
// clock frozen: no wait can end, yet the calls are answered).
func TestIntegrationConnectWaitHealthCheck(t *testing.T) {
	cfg := `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"60s","maxEjectionPercent":100}}`
	t.Run("not answering", func(t *testing.T) {
		cc, r, bad, heal := ejectedBackend(t, Name, healthSC(Name, cfg))
		heal()
		silent := startNotAnsweringHealth(t)
		r.UpdateState(state(nil, bad.addr, silent))
		errs, longest := callAll(cc, 8, 5*time.Second)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("call %d (wait-for-ready %v): %v; want it answered by the ejected backend", i, i%2 == 1, err)
			}
		}
		t.Logf("16 calls answered beside a silent health check, the slowest after %v", longest)
	})
	t.Run("NOT_SERVING", func(t *testing.T) {
		cc, r, bad, heal := ejectedBackend(t, frozenName, healthSC(frozenName, cfg))
		heal()
		sick := startFieldServer(t, "", 0, 0)
		sick.setServing(false)
		r.UpdateState(state(nil, bad.addr, sick.addr))
		errs, longest := callAll(cc, 8, 5*time.Second)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("call %d (wait-for-ready %v): %v; want it answered by the ejected backend", i, i%2 == 1, err)
			}
		}
		if n := sick.calls.Load(); n != 0 {
			t.Fatalf("NOT_SERVING backend got %d calls", n)
		}
		t.Logf("16 calls answered beside a NOT_SERVING endpoint, the slowest after %v", longest)
	})
}

// TestIntegrationConnectWaitGoesToConnected: calls held back for an
// endpoint that is connecting go to it once it connects, not to the
// ejected backend. The endpoint's listener exists (the kernel completes
// TCP handshakes) but its server starts serving only after the calls are
// waiting; the clock is frozen, so the wait cannot end before.
func TestIntegrationConnectWaitGoesToConnected(t *testing.T) {
	cc, r, bad, heal := ejectedBackend(t, frozenName, "")
	heal()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	late := &fieldServer{addr: lis.Addr().String(), srv: grpc.NewServer()}
	testpb.RegisterTestServiceServer(late.srv, &fieldService{s: late})
	done := make(chan struct{})
	var serving atomic.Bool
	t.Cleanup(func() {
		late.srv.Stop()
		lis.Close() // in case it never served
		if serving.Load() {
			<-done
		}
	})
	r.UpdateState(state(nil, bad.addr, late.addr))
	before := bad.calls.Load()
	results := make(chan error, 16)
	client := testpb.NewTestServiceClient(cc)
	for i := range 16 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(i%2 == 1))
			results <- err
		}()
	}
	select {
	case err := <-results:
		t.Fatalf("a call ended (%v) before the connecting endpoint served, with the clock frozen", err)
	case <-time.After(50 * time.Millisecond):
	}
	serving.Store(true)
	go func() { defer close(done); _ = late.srv.Serve(lis) }()
	for range 16 {
		if err := <-results; err != nil {
			t.Fatalf("call: %v", err)
		}
	}
	if n, m := bad.calls.Load()-before, late.calls.Load(); n != 0 || m != 16 {
		t.Fatalf("ejected backend got %d calls and the one that connected %d; want 0 and 16", n, m)
	}
}
