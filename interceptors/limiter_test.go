package interceptors_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// gated is a backend whose calls wait until the test opens the gate (or
// the caller gives up), and which tracks how many run at once.
type gated struct {
	gate     chan struct{}
	inflight atomic.Int64
	peak     atomic.Int64
	*testutil.Backend
}

func startGated(t *testing.T, opts ...grpc.ServerOption) *gated {
	g := &gated{gate: make(chan struct{})}
	g.Backend = testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: opts,
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			n := g.inflight.Add(1)
			defer g.inflight.Add(-1)
			for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
			}
			select {
			case <-g.gate:
				return &testpb.SimpleResponse{}, nil
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		},
	})
	return g
}

func newLimiter(t *testing.T, obs telemetry.LimiterObserver, edit func(*interceptors.LimiterConfig)) *interceptors.Limiter {
	t.Helper()
	c := interceptors.DefaultLimiterConfig()
	if edit != nil {
		edit(&c)
	}
	l, err := interceptors.NewLimiter(interceptors.WithLimiterConfig(c), interceptors.WithLimiterObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLimiterQueueAndReject(t *testing.T) {
	be := startGated(t)
	ev := &events{}
	lim := newLimiter(t, ev, func(c *interceptors.LimiterConfig) {
		c.Limit, c.MaxQueued, c.MaxWait = 2, 1, 10*time.Second
	})
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	ctx := context.Background()
	results := make(chan error, 3)
	for range 2 {
		go func() { results <- unary(ctx, c) }()
	}
	testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 2 }, "two calls in flight")
	go func() { results <- unary(ctx, c) }() // queued
	target := "passthrough:///" + be.Addr
	testutil.Eventually(t, 2*time.Second, func() bool {
		st := lim.Stats(target, "")
		return st.InFlight == 2 && st.Queued == 1
	}, "third call queued")
	// The queue (1) is full: the fourth call is rejected at once.
	err := unary(ctx, c)
	if status.Code(err) != codes.ResourceExhausted || !errors.Is(err, interceptors.ErrLimited) {
		t.Fatalf("fourth call = %v, want ResourceExhausted wrapping ErrLimited", err)
	}
	if msg := err.Error(); !strings.Contains(msg, `"`+target+`"`) || !strings.Contains(msg, "concurrency limit of 2") || !strings.Contains(msg, "queue is full") {
		t.Errorf("message %q does not name the key, the limit and the reason", msg)
	}
	if ev.rejections(interceptors.ReasonQueueFull) != 1 {
		t.Errorf("observer: %v", ev.rejected)
	}
	close(be.gate)
	for range 3 {
		if err := <-results; err != nil {
			t.Fatalf("admitted call = %v", err)
		}
	}
	if p := be.peak.Load(); p > 2 {
		t.Fatalf("server saw %d calls at once, limit 2", p)
	}
	if got := be.Calls.Load(); got != 3 {
		t.Fatalf("server saw %d calls, want 3", got)
	}
}

func TestLimiterWaitIsBounded(t *testing.T) {
	be := startGated(t)
	defer close(be.gate)
	ev := &events{}
	lim := newLimiter(t, ev, func(c *interceptors.LimiterConfig) {
		c.Limit, c.MaxQueued, c.MaxWait = 1, 10, 30*time.Millisecond
	})
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	hold, cancelHold := context.WithCancel(context.Background())
	held := make(chan error, 1)
	go func() { held <- unary(hold, c) }()
	testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 1 }, "slot taken")

	tests := []struct {
		name       string
		timeout    time.Duration
		cancel     bool
		wantCode   codes.Code
		wantReason string
		wantMsg    string // the reason's part of the message
		maxTook    time.Duration
	}{
		{name: "max wait", timeout: 10 * time.Second, wantCode: codes.ResourceExhausted, wantReason: interceptors.ReasonMaxWait, wantMsg: "; no slot freed within 30ms", maxTook: time.Second},
		{name: "deadline shorter than max wait", timeout: 5 * time.Millisecond, wantCode: codes.ResourceExhausted, wantReason: interceptors.ReasonDeadline, wantMsg: "; the call's deadline leaves no time to wait for a slot", maxTook: 25 * time.Millisecond * 20},
		{name: "deadline already passed", timeout: -time.Millisecond, wantCode: codes.ResourceExhausted, wantReason: interceptors.ReasonDeadline, wantMsg: "; the call's deadline leaves no time to wait for a slot", maxTook: time.Second},
		{name: "caller cancels while queued", timeout: 10 * time.Second, cancel: true, wantCode: codes.Canceled, maxTook: time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			if tt.cancel {
				cancel()
			}
			before := ev.rejections(tt.wantReason)
			start := time.Now()
			err := unary(ctx, c)
			took := time.Since(start)
			if status.Code(err) != tt.wantCode {
				t.Fatalf("call = %v, want %v", err, tt.wantCode)
			}
			if tt.wantMsg != "" {
				want := `interceptors: "passthrough:///` + be.Addr + `" is at its concurrency limit of 1` + tt.wantMsg
				if msg := status.Convert(err).Message(); msg != want || !errors.Is(err, interceptors.ErrLimited) {
					t.Errorf("message %q (wrapping ErrLimited: %v), want %q", msg, errors.Is(err, interceptors.ErrLimited), want)
				}
			}
			if took > tt.maxTook {
				t.Errorf("call took %v, want at most %v", took, tt.maxTook)
			}
			if tt.wantReason != "" && ev.rejections(tt.wantReason) != before+1 {
				t.Errorf("observer: %v, want one more %q", ev.rejected, tt.wantReason)
			}
		})
	}
	// Nobody is left in the queue and the held call still owns the slot.
	if st := lim.Stats("passthrough:///"+be.Addr, ""); st.Limit != 1 || st.InFlight != 1 || st.Queued != 0 {
		t.Errorf("Stats() = %+v; want limit 1, 1 in flight, none queued", st)
	}
	cancelHold()
	if err := <-held; status.Code(err) != codes.Canceled {
		t.Fatalf("held call = %v", err)
	}
	testutil.Eventually(t, 2*time.Second, func() bool { return lim.Stats("passthrough:///"+be.Addr, "").InFlight == 0 }, "slot released")
}

func TestLimiterStreamHoldsSlotUntilEnd(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) { c.Limit, c.MaxQueued = 1, 0 })
	c := dial(t, be.Addr, grpc.WithStreamInterceptor(lim.StreamClientInterceptor()))
	target := "passthrough:///" + be.Addr
	ctx := context.Background()
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FullDuplexCall(ctx); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second stream = %v, want ResourceExhausted", err)
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err == nil {
		t.Fatal("Recv after CloseSend returned a message")
	}
	if n := lim.Stats(target, "").InFlight; n != 0 {
		t.Fatalf("%d in flight after the stream ended", n)
	}
	// A stream whose caller cancels, and never reads again, frees its slot too.
	cctx, cancel := context.WithCancel(ctx)
	if _, err := c.FullDuplexCall(cctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	testutil.Eventually(t, 2*time.Second, func() bool { return lim.Stats(target, "").InFlight == 0 }, "slot freed on cancel")
	if err := streamEcho(ctx, c); err != nil {
		t.Fatalf("stream after = %v", err)
	}
}

func TestLimiterAIMD(t *testing.T) {
	var fail atomic.Bool
	be := testutil.StartBackend(t, testutil.BackendOptions{
		Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if fail.Load() {
				return nil, status.Error(codes.ResourceExhausted, "overloaded")
			}
			return &testpb.SimpleResponse{}, nil
		},
	})
	ev := &events{}
	lim := newLimiter(t, ev, func(c *interceptors.LimiterConfig) {
		c.Algorithm, c.Limit, c.MinLimit, c.MaxLimit, c.BackoffRatio = interceptors.AIMD, 10, 2, 12, 0.5
	})
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	target := "passthrough:///" + be.Addr
	ctx := context.Background()
	fail.Store(true)
	for range 5 {
		_ = unary(ctx, c)
	}
	if l := lim.Stats(target, "").Limit; l != 2 {
		t.Fatalf("limit after 5 drops = %d, want MinLimit 2 (10→5→2)", l)
	}
	fail.Store(false)
	// Sequential calls use 1 slot: the limit grows while at least half of
	// it is in use (2, then 3) and no further.
	for range 20 {
		if err := unary(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if l := lim.Stats(target, "").Limit; l != 3 {
		t.Fatalf("limit = %d after light load, want 3 (no increase below half use)", l)
	}
	ev.mu.Lock()
	got := append([]int(nil), ev.limits...)
	ev.mu.Unlock()
	if len(got) != 3 || got[0] != 5 || got[1] != 2 || got[2] != 3 {
		t.Errorf("limit changes %v, want [5 2 3]", got)
	}
}

func TestLimiterConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*interceptors.LimiterConfig)
		wantErr string
	}{
		{name: "defaults", edit: func(*interceptors.LimiterConfig) {}},
		{name: "limit 0", edit: func(c *interceptors.LimiterConfig) { c.Limit = 0 }, wantErr: `interceptors: "limit" is 0; must be between 1 and`},
		{name: "bad algorithm", edit: func(c *interceptors.LimiterConfig) { c.Algorithm = 9 }, wantErr: `"algorithm" is "Algorithm(9)"; must be "fixed" or "aimd"`},
		{name: "aimd min above limit", edit: func(c *interceptors.LimiterConfig) { c.Algorithm, c.MinLimit = interceptors.AIMD, 500 }, wantErr: `"minLimit" is 500; must be between 1 and "limit" (100)`},
		{name: "aimd max below limit", edit: func(c *interceptors.LimiterConfig) { c.Algorithm, c.MaxLimit = interceptors.AIMD, 5 }, wantErr: `"maxLimit" is 5; must be between "limit" (100)`},
		{name: "aimd backoff 1", edit: func(c *interceptors.LimiterConfig) { c.Algorithm, c.BackoffRatio = interceptors.AIMD, 1 }, wantErr: `"backoffRatio" is 1; must be between 0 and 1, exclusive`},
		{name: "aimd negative latency", edit: func(c *interceptors.LimiterConfig) { c.Algorithm, c.LatencyThreshold = interceptors.AIMD, -time.Second }, wantErr: `"latencyThreshold" is "-1s"; must not be negative`},
		{name: "fixed ignores aimd fields", edit: func(c *interceptors.LimiterConfig) { c.MinLimit = -4 }},
		{name: "negative queue", edit: func(c *interceptors.LimiterConfig) { c.MaxQueued = -1 }, wantErr: `"maxQueued" is -1; must be between 0 and`},
		{name: "zero wait", edit: func(c *interceptors.LimiterConfig) { c.MaxWait = 0 }, wantErr: `"maxWait" is "0s"; must be positive`},
		{name: "bad scope", edit: func(c *interceptors.LimiterConfig) { c.Scope = 3 }, wantErr: `"scope" is "Scope(3)"`},
		{name: "zero keys", edit: func(c *interceptors.LimiterConfig) { c.MaxKeys = 0 }, wantErr: `"maxKeys" is 0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := interceptors.DefaultLimiterConfig()
			tt.edit(&c)
			_, err := interceptors.NewLimiter(interceptors.WithLimiterConfig(c))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("NewLimiter() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewLimiter() = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := interceptors.NewShedder(interceptors.WithShedderConfig(interceptors.ShedderConfig{LimitConfig: interceptors.DefaultLimitConfig()})); err == nil || !strings.Contains(err.Error(), `"minSamples" is 0`) {
		t.Errorf("NewShedder(MinSamples 0) = %v", err)
	}
}
