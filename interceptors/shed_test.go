package interceptors_test

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

func newShedder(t testing.TB, obs telemetry.LimiterObserver, edit func(*interceptors.ShedderConfig)) (*interceptors.Shedder, []grpc.ServerOption) {
	t.Helper()
	s := makeShedder(t, obs, edit)
	return s, s.ServerOptions()
}

func makeShedder(t testing.TB, obs telemetry.LimiterObserver, edit func(*interceptors.ShedderConfig)) *interceptors.Shedder {
	t.Helper()
	c := interceptors.DefaultShedderConfig()
	if edit != nil {
		edit(&c)
	}
	s, err := interceptors.NewShedder(interceptors.WithShedderConfig(c), interceptors.WithShedderObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// shedPaths are the two ways to install a Shedder: the tap path with the
// interceptors (ServerOptions, the default), and the interceptors alone.
var shedPaths = []struct {
	name string
	opts func(*interceptors.Shedder) []grpc.ServerOption
}{
	{"tap", (*interceptors.Shedder).ServerOptions},
	{"interceptor", func(s *interceptors.Shedder) []grpc.ServerOption {
		return []grpc.ServerOption{grpc.ChainUnaryInterceptor(s.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(s.StreamServerInterceptor())}
	}},
}

// shedInfo returns the ErrorInfo and RetryInfo details of a shed.
func shedInfo(err error) (*errdetails.ErrorInfo, *errdetails.RetryInfo) {
	var info *errdetails.ErrorInfo
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	return info, retry
}

// TestShedderInFlightLimit: beyond the limit, unary calls are shed on both
// paths with the stable message, the limit in an ErrorInfo, the pushback
// in a RetryInfo and (interceptor path) the grpc-retry-pushback-ms
// trailer; streams are not counted against the unary limit (issue 13
// item 11: they used to be); health checks are never shed.
func TestShedderInFlightLimit(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			ev := &events{}
			shed := makeShedder(t, ev, func(c *interceptors.ShedderConfig) { c.Limit = 2 })
			be := startGated(t, path.opts(shed)...)
			cc := dialConn(t, be.Addr)
			c := testpb.NewTestServiceClient(cc)
			ctx := context.Background()
			results := make(chan error, 2)
			for range 2 {
				go func() { results <- unary(ctx, c) }()
			}
			testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 2 }, "two requests running")
			for i := range 2 {
				var trailer metadata.MD
				_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
				if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
					t.Fatalf("request %d at the limit = %v, want ResourceExhausted %q", i, err, interceptors.MessageShedLimit)
				}
				info, retry := shedInfo(err)
				if info == nil || info.Reason != interceptors.ErrorInfoReasonLimit || info.Metadata["limit"] != "2" || info.Domain != interceptors.ErrorInfoDomain {
					t.Errorf("ErrorInfo = %v, want reason %s, limit 2", info, interceptors.ErrorInfoReasonLimit)
				}
				if retry == nil || retry.RetryDelay.AsDuration() != 20*time.Millisecond {
					t.Errorf("RetryInfo = %v, want 20ms", retry)
				}
				wantTrailer := []string{"20"}
				if path.name == "tap" {
					wantTrailer = nil // grpc-go's early abort writes no trailers
				}
				if got := trailer.Get(interceptors.PushbackTrailer); !slices.Equal(got, wantTrailer) {
					t.Errorf("pushback trailer = %q, want %q", got, wantTrailer)
				}
			}
			// Streams have their own limit: one opens and works at the unary limit.
			s := streamOnce(t, ctx, c, "stream at the unary limit")
			_ = s.CloseSend()
			if _, err := s.Recv(); err != io.EOF {
				t.Fatalf("stream end = %v", err)
			}
			if got := be.Calls.Load(); got != 3 {
				t.Fatalf("handlers ran %d times, want 3 (2 unary, 1 stream): shed requests must not reach them", got)
			}
			hc := healthpb.NewHealthClient(cc)
			for range 3 {
				if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					t.Fatalf("health check at the limit = %v", err)
				}
			}
			if ev.rejections(interceptors.ReasonLimit) != 2 || ev.shedCount(interceptors.ReasonLimit) != 2 {
				t.Errorf("observer: rejected %v, shed %v", ev.rejected, ev.shed)
			}
			close(be.gate)
			for range 2 {
				if err := <-results; err != nil {
					t.Fatal(err)
				}
			}
			snap := shed.Snapshot()
			if snap.Limit != 2 || snap.InFlight != 0 || snap.Streams != 0 || snap.Shed[interceptors.ReasonLimit] != 2 {
				t.Errorf("Snapshot() = %+v; want limit 2, nothing in flight, 2 shed for limit", snap)
			}
		})
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
	if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedDeadline {
		t.Fatalf("short call with 50ms service time = %v, want ResourceExhausted %q", err, interceptors.MessageShedDeadline)
	}
	if info, retry := shedInfo(err); info == nil || info.Reason != interceptors.ErrorInfoReasonDeadline || info.Metadata["serviceTimeMs"] == "" || retry != nil {
		t.Errorf("details = %v, %v; want the service time and no RetryInfo (the same deadline will not do better)", info, retry)
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

// TestShedderExempt: a method listed in Exempt (a long poll) is served as
// plain grpc-go serves it: three calls held open at a limit of 1 all run,
// none is shed and none holds a slot; an exempt service's streams open
// past StreamLimit.
func TestShedderExempt(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			ev := &events{}
			shed := makeShedder(t, ev, func(c *interceptors.ShedderConfig) {
				c.Limit, c.StreamLimit = 1, 1
				c.Exempt = []string{"/grpc.testing.TestService/UnaryCall", "/grpc.testing.TestService/FullDuplexCall"}
			})
			be := startGated(t, path.opts(shed)...)
			c := testpb.NewTestServiceClient(dialConn(t, be.Addr))
			ctx := context.Background()
			results := make(chan error, 3)
			for range 3 {
				go func() { results <- unary(ctx, c) }()
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 3 }, "three exempt calls running at a limit of 1")
			if limit, n := shed.InFlight(); limit != 1 || n != 0 {
				t.Errorf("InFlight() = %d, %d; want 1, 0 (exempt calls take no slot)", limit, n)
			}
			for i := range 2 {
				s := streamOnce(t, ctx, c, fmt.Sprintf("exempt stream %d at a stream limit of 1", i))
				_ = s.CloseSend()
			}
			close(be.gate)
			for range 3 {
				if err := <-results; err != nil {
					t.Errorf("exempt call: %v", err)
				}
			}
			if n := ev.shedCount(interceptors.ReasonLimit) + ev.shedCount(interceptors.ReasonStreamLimit); n != 0 {
				t.Errorf("%d sheds; want none", n)
			}
		})
	}
}
