package interceptors_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// flaky is a backend whose unary and stream calls fail with Unavailable
// while failing is set.
type flaky struct {
	failing atomic.Bool
	streams atomic.Int64 // streams the server saw
	*testutil.Backend
}

func startFlaky(t *testing.T) *flaky {
	f := &flaky{}
	f.Backend = testutil.StartBackend(t, testutil.BackendOptions{
		Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if f.failing.Load() {
				return nil, status.Error(codes.Unavailable, "backend down")
			}
			return &testpb.SimpleResponse{}, nil
		},
		ServerOptions: []grpc.ServerOption{grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			f.streams.Add(1)
			if f.failing.Load() {
				return status.Error(codes.Unavailable, "backend down")
			}
			return h(srv, ss)
		})},
	})
	return f
}

func newBreakers(t *testing.T, obs telemetry.BreakerObserver, edit func(*breaker.Config)) *breaker.Registry {
	t.Helper()
	c := breaker.DefaultConfig()
	c.ConsecutiveFailures = 3
	c.OpenTimeout = 50 * time.Millisecond
	if edit != nil {
		edit(&c)
	}
	reg, err := breaker.New(breaker.WithConfig(c), breaker.WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestBreakerOpensAndServerSeesNoCalls(t *testing.T) {
	be := startFlaky(t)
	be.failing.Store(true)
	ev := &events{}
	reg := newBreakers(t, ev, func(c *breaker.Config) { c.OpenTimeout = time.Hour })
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(interceptors.BreakerUnaryClientInterceptor(reg)))
	ctx := context.Background()
	for i := range 3 {
		if err := unary(ctx, c); status.Code(err) != codes.Unavailable || errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("call %d = %v, want the backend's Unavailable", i, err)
		}
	}
	if got := be.Calls.Load(); got != 3 {
		t.Fatalf("server saw %d calls, want 3", got)
	}
	for i := range 20 {
		start := time.Now()
		err := unary(ctx, c)
		if status.Code(err) != codes.Unavailable || !errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("call %d after trip = %v, want Unavailable wrapping breaker.ErrOpen", i, err)
		}
		if !strings.Contains(err.Error(), "/grpc.testing.TestService/UnaryCall") || !strings.Contains(err.Error(), "probing again in") {
			t.Fatalf("message %q does not name the key and the next probe", err)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Errorf("fail-fast took %v", d)
		}
	}
	if got := be.Calls.Load(); got != 3 {
		t.Fatalf("server saw %d calls with the breaker open, want still 3", got)
	}
	if n := ev.rejections("breaker"); n != 20 {
		t.Errorf("observer saw %d rejections, want 20", n)
	}
}

func TestBreakerHalfOpenProbeAndRecovery(t *testing.T) {
	be := startFlaky(t)
	be.failing.Store(true)
	ev := &events{}
	reg := newBreakers(t, ev, nil)
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(interceptors.BreakerUnaryClientInterceptor(reg)))
	ctx := context.Background()
	for range 3 {
		_ = unary(ctx, c)
	}
	const m = "/grpc.testing.TestService/UnaryCall"
	if reg.State("passthrough:///"+be.Addr, m) != breaker.StateOpen {
		t.Fatal("breaker not open")
	}
	// Half-open: one probe goes through, fails, the breaker reopens.
	testutil.Eventually(t, 2*time.Second, func() bool { return reg.State("passthrough:///"+be.Addr, m) == breaker.StateHalfOpen }, "half-open")
	before := be.Calls.Load()
	if err := unary(ctx, c); errors.Is(err, breaker.ErrOpen) || status.Code(err) != codes.Unavailable {
		t.Fatalf("probe = %v, want the backend's Unavailable", err)
	}
	if got := be.Calls.Load(); got != before+1 {
		t.Fatalf("probe: server saw %d new calls, want 1", got-before)
	}
	if err := unary(ctx, c); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("after failed probe = %v, want ErrOpen", err)
	}
	// The backend recovers; the next probe closes the breaker.
	be.failing.Store(false)
	testutil.Eventually(t, 2*time.Second, func() bool { return reg.State("passthrough:///"+be.Addr, m) == breaker.StateHalfOpen }, "half-open again")
	if err := unary(ctx, c); err != nil {
		t.Fatalf("probe after recovery = %v", err)
	}
	for i := range 5 {
		if err := unary(ctx, c); err != nil {
			t.Fatalf("call %d after close = %v", i, err)
		}
	}
	ev.mu.Lock()
	got := strings.Join(ev.states, ",")
	ev.mu.Unlock()
	if want := "closed->open,open->half_open,half_open->open,open->half_open,half_open->closed"; got != want {
		t.Errorf("transitions %s, want %s", got, want)
	}
}

func TestBreakerHalfOpenLetsOneProbeThrough(t *testing.T) {
	release := make(chan struct{})
	var block atomic.Bool
	be := testutil.StartBackend(t, testutil.BackendOptions{
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if block.Load() {
				select {
				case <-release:
				case <-ctx.Done():
				}
				return &testpb.SimpleResponse{}, nil
			}
			return nil, status.Error(codes.Internal, "broken")
		},
	})
	reg := newBreakers(t, telemetry.Nop{}, nil)
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(interceptors.BreakerUnaryClientInterceptor(reg)))
	ctx := context.Background()
	for range 3 {
		_ = unary(ctx, c)
	}
	block.Store(true)
	testutil.Eventually(t, 2*time.Second, func() bool {
		return reg.State("passthrough:///"+be.Addr, "/grpc.testing.TestService/UnaryCall") == breaker.StateHalfOpen
	}, "half-open")
	probe := make(chan error, 1)
	go func() { probe <- unary(ctx, c) }()
	testutil.Eventually(t, 2*time.Second, func() bool { return be.Calls.Load() == 4 }, "probe reaches the server")
	for range 5 {
		if err := unary(ctx, c); !errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("call during the probe = %v, want ErrOpen", err)
		}
	}
	if got := be.Calls.Load(); got != 4 {
		t.Fatalf("server saw %d calls, want 4 (3 + one probe)", got)
	}
	close(release)
	if err := <-probe; err != nil {
		t.Fatalf("probe = %v", err)
	}
	if err := unary(ctx, c); err != nil {
		t.Fatalf("after successful probe = %v", err)
	}
}

func streamEcho(ctx context.Context, c testpb.TestServiceClient) error {
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil && err != io.EOF {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	return recvAll(s.Recv)
}

func TestBreakerCountsStreams(t *testing.T) {
	be := startFlaky(t)
	reg := newBreakers(t, telemetry.Nop{}, func(c *breaker.Config) { c.OpenTimeout = time.Hour })
	c := dial(t, be.Addr, grpc.WithStreamInterceptor(interceptors.BreakerStreamClientInterceptor(reg)))
	ctx := context.Background()
	// Healthy streams are successes: many of them do not trip anything.
	for i := range 5 {
		if err := streamEcho(ctx, c); err != nil {
			t.Fatalf("stream %d = %v", i, err)
		}
	}
	// A stream the caller cancels mid-way counts neither way.
	for range 5 {
		cctx, cancel := context.WithCancel(ctx)
		s, err := c.FullDuplexCall(cctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Send(&testpb.StreamingOutputCallRequest{})
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel() // and never read again: the breaker learns it from the context
	}
	be.failing.Store(true)
	for i := range 3 {
		if err := streamEcho(ctx, c); status.Code(err) != codes.Unavailable || errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("failing stream %d = %v, want the backend's Unavailable", i, err)
		}
	}
	seen := be.streams.Load()
	_, err := c.FullDuplexCall(ctx)
	if !errors.Is(err, breaker.ErrOpen) || status.Code(err) != codes.Unavailable {
		t.Fatalf("stream on open breaker = %v, want Unavailable wrapping ErrOpen", err)
	}
	if got := be.streams.Load(); got != seen {
		t.Fatalf("server saw %d new streams with the breaker open", got-seen)
	}
}

func TestBreakerIgnoresCallerCancellation(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			<-ctx.Done() // never answers: callers give up
			return nil, status.FromContextError(ctx.Err()).Err()
		},
	})
	reg := newBreakers(t, telemetry.Nop{}, func(c *breaker.Config) { c.ConsecutiveFailures = 1 })
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(interceptors.BreakerUnaryClientInterceptor(reg)))
	for i := range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		if err := unary(ctx, c); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call %d = %v, want DeadlineExceeded", i, err)
		}
		cancel()
	}
	for i := range 4 {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		n := be.Calls.Load()
		go func() { errc <- unary(ctx, c) }()
		testutil.Eventually(t, 2*time.Second, func() bool { return be.Calls.Load() > n }, "call reaches server")
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Fatalf("cancelled call %d = %v", i, err)
		}
	}
	if s := reg.State("passthrough:///"+be.Addr, "/grpc.testing.TestService/UnaryCall"); s != breaker.StateClosed {
		t.Fatalf("breaker %v after only caller deadlines and cancellations", s)
	}
}
