package interceptors_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

func newShedder(t testing.TB, obs telemetry.LimiterObserver, edit func(*interceptors.ShedderConfig)) (*interceptors.Shedder, []grpc.ServerOption) {
	t.Helper()
	c := interceptors.DefaultShedderConfig()
	if edit != nil {
		edit(&c)
	}
	s, err := interceptors.NewShedder(interceptors.WithShedderConfig(c), interceptors.WithShedderObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	return s, []grpc.ServerOption{grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(s.StreamServerInterceptor())}
}

func TestShedderInFlightLimit(t *testing.T) {
	ev := &events{}
	shed, sopts := newShedder(t, ev, func(c *interceptors.ShedderConfig) { c.Limit = 2 })
	be := startGated(t, sopts...)
	cc := dialConn(t, be.Addr)
	c := testpb.NewTestServiceClient(cc)
	ctx := context.Background()
	results := make(chan error, 2)
	for range 2 {
		go func() { results <- unary(ctx, c) }()
	}
	testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 2 }, "two requests running")
	err := unary(ctx, c)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "in-flight limit of 2") {
		t.Fatalf("third request = %v, want ResourceExhausted naming the limit", err)
	}
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream at the limit = %v, want ResourceExhausted", err)
	}
	if got := be.Calls.Load(); got != 2 {
		t.Fatalf("handlers ran %d times, want 2: shed requests must not reach them", got)
	}
	// Health checks are never shed.
	hc := healthpb.NewHealthClient(cc)
	for range 3 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("health check at the limit = %v", err)
		}
	}
	if ev.rejections(interceptors.ReasonLimit) != 2 {
		t.Errorf("observer: %v", ev.rejected)
	}
	close(be.gate)
	for range 2 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if l, n := shed.InFlight(); l != 2 || n != 0 {
		t.Errorf("InFlight() = %d, %d; want 2, 0", l, n)
	}
}

func TestShedderDeadlineShorterThanServiceTime(t *testing.T) {
	ev := &events{}
	_, sopts := newShedder(t, ev, func(c *interceptors.ShedderConfig) { c.MinSamples = 3 })
	be := testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: sopts,
		Unary:         working(func() time.Duration { return 50 * time.Millisecond }),
	})
	c := dial(t, be.Addr)
	short := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Millisecond)
		defer cancel()
		return unary(ctx, c)
	}
	// Before MinSamples, a short deadline is not shed: it simply expires.
	if err := short(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("short call without samples = %v, want DeadlineExceeded", err)
	}
	for range 3 {
		if err := unary(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	calls := be.Calls.Load()
	err := short()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "recent service time") {
		t.Fatalf("short call with 50ms service time = %v, want ResourceExhausted", err)
	}
	if be.Calls.Load() != calls {
		t.Fatal("shed request reached the handler")
	}
	if ev.rejections(interceptors.ReasonDeadline) != 1 {
		t.Errorf("observer: %v", ev.rejected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := unary(ctx, c); err != nil {
		t.Fatalf("call with enough deadline = %v", err)
	}
}

// working returns a handler that works for d() (a timer, cut short when
// the caller goes away) and answers OK.
func working(d func() time.Duration) func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		t := time.NewTimer(d()) // simulated work
		defer t.Stop()
		select {
		case <-t.C:
			return &testpb.SimpleResponse{}, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// TestShedderRecoversFromInflatedEstimate is the regression test for a
// shedder that, once its service-time estimate rose above the callers'
// deadlines, shed every request forever: only admitted requests measure
// the service time. Found by examples/bench's overload scenario.
func TestShedderRecoversFromInflatedEstimate(t *testing.T) {
	_, sopts := newShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.MinSamples = 3 })
	var work atomic.Int64
	work.Store(int64(50 * time.Millisecond))
	be := testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: sopts,
		Unary:         working(func() time.Duration { return time.Duration(work.Load()) }),
	})
	c := dial(t, be.Addr)
	for range 3 { // the estimate learns 50ms
		if err := unary(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	work.Store(int64(time.Millisecond)) // the backend got fast again
	short := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Millisecond)
		defer cancel()
		return unary(ctx, c)
	}
	if err := short(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("first short call = %v, want shed on the 50ms estimate", err)
	}
	for i := 1; i <= 500; i++ {
		if short() == nil {
			t.Logf("served again after %d shed calls", i)
			return
		}
	}
	t.Fatal("500 calls with a 25ms deadline to a 1ms backend were all shed: the estimate never came down")
}

// TestOverload runs 4× more concurrent callers than the server's in-flight
// limit through the full client chain: every call ends OK or with
// ResourceExhausted/Unavailable, none hangs or is lost, the server never
// runs more than its limit, and its goroutines return to the baseline.
func TestOverload(t *testing.T) {
	const serverLimit, callers, perCaller = 4, 16, 10
	_, sopts := newShedder(t, telemetry.Nop{}, func(c *interceptors.ShedderConfig) { c.Limit = serverLimit })
	var running, peak atomic.Int64
	be := testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: sopts,
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			t := time.NewTimer(2 * time.Millisecond) // simulated work
			defer t.Stop()
			select {
			case <-t.C:
				return &testpb.SimpleResponse{}, nil
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		},
	})
	reg, err := breaker.New()
	if err != nil {
		t.Fatal(err)
	}
	lc := interceptors.DefaultLimiterConfig()
	lc.Limit, lc.MaxQueued, lc.MaxWait = 2*serverLimit, serverLimit, 20*time.Millisecond
	lim, err := interceptors.NewLimiter(interceptors.WithLimiterConfig(lc))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, be.Addr, chain.DialOptions()...)
	if err := unary(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	baseline := runtime.NumGoroutine()

	var mu sync.Mutex
	byCode := map[codes.Code]int{}
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perCaller {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := unary(ctx, c)
				cancel()
				mu.Lock()
				byCode[status.Code(err)]++
				mu.Unlock()
			}
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		t.Fatal("overload: calls still running after 20s")
	}
	total := 0
	for code, n := range byCode {
		total += n
		if code != codes.OK && code != codes.ResourceExhausted && code != codes.Unavailable {
			t.Errorf("%d calls ended %v", n, code)
		}
	}
	if total != callers*perCaller {
		t.Errorf("%d results for %d calls", total, callers*perCaller)
	}
	if byCode[codes.OK] == 0 {
		t.Error("no call succeeded under overload")
	}
	if p := peak.Load(); p > serverLimit {
		t.Errorf("server ran %d requests at once, limit %d", p, serverLimit)
	}
	t.Logf("results: %v; server peak %d", byCode, peak.Load())
	testutil.Eventually(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= baseline }, "goroutines back to baseline")
}
