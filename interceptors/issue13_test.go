package interceptors_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
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

// Regression tests for issue 13 (client side), one per item, each named
// for what it proves.

// TestLimiterIgnoresCallersOwnDeadline is item 2: calls that end because
// the caller's own deadline expired are not overload, so AIMD keeps its
// limit (the breaker already excludes them); a DeadlineExceeded the
// server chose on its own still lowers it.
func TestLimiterIgnoresCallersOwnDeadline(t *testing.T) {
	be := startGated(t)
	defer close(be.gate)
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) {
		c.Algorithm, c.Limit, c.MinLimit, c.MaxLimit = interceptors.AIMD, 20, 1, 100
	})
	c := dial(t, be.Addr, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	target := "passthrough:///" + be.Addr
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := unary(ctx, c)
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("call %d = %v, want the caller's DeadlineExceeded", i, err)
		}
	}
	if got := lim.Stats(target, "").Limit; got != 20 {
		t.Fatalf("limit after 10 calls that hit their own deadline = %d, want 20 (not a drop)", got)
	}

	// The server's own DeadlineExceeded (the caller had time left) is a drop.
	srv := testutil.StartBackend(t, testutil.BackendOptions{Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		return nil, status.Error(codes.DeadlineExceeded, "downstream timed out")
	}})
	c2 := dial(t, srv.Addr, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	_ = unary(context.Background(), c2)
	if got := lim.Stats("passthrough:///"+srv.Addr, "").Limit; got != 18 {
		t.Errorf("limit after the server's own DeadlineExceeded = %d, want 18 (20 × 0.9)", got)
	}
}

// startEnding starts a backend whose streams end (OK) as soon as they
// start, so the client's SendMsg soon returns io.EOF.
func startEnding(t *testing.T) *testutil.Backend {
	return testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: []grpc.ServerOption{
		grpc.StreamInterceptor(func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error { return nil }),
	}})
}

// sendUntilEOF sends on s until SendMsg returns io.EOF (bounded).
func sendUntilEOF(t *testing.T, s testpb.TestService_FullDuplexCallClient) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := s.Send(&testpb.StreamingOutputCallRequest{}); err == io.EOF {
			return
		} else if err != nil {
			t.Fatalf("Send %d = %v, want nil or io.EOF", i, err)
		}
		if i%16 == 15 {
			time.Sleep(time.Millisecond) // let the server's end arrive; not synchronisation, a bounded retry
		}
	}
	t.Fatal("SendMsg never returned io.EOF")
}

// TestAbandonedStreamAfterEOFReleasesLimiterSlot is item 3 (limiter): a
// stream whose SendMsg returned io.EOF and that the caller drops without
// reading or cancelling frees its slot, so a limit of 1 does not reject
// every later call.
func TestAbandonedStreamAfterEOFReleasesLimiterSlot(t *testing.T) {
	be := startEnding(t)
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) { c.Limit, c.MaxQueued = 1, 0 })
	c := dial(t, be.Addr, grpc.WithStreamInterceptor(lim.StreamClientInterceptor()), grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // only at the end: until then the stream is abandoned, not cancelled
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sendUntilEOF(t, s)
	if n := lim.Stats("passthrough:///"+be.Addr, "").InFlight; n != 0 {
		t.Fatalf("%d calls hold a slot after the abandoned stream's SendMsg returned io.EOF, want 0", n)
	}
	for i := range 3 {
		if err := unary(context.Background(), c); err != nil {
			t.Fatalf("call %d after the abandoned stream = %v, want OK", i, err)
		}
	}
}

// TestAbandonedStreamProbeLetsBreakerLeaveHalfOpen is item 3 (breaker): a
// half-open probe that is a stream nobody reads or cancels holds the
// breaker half-open only for ProbeTimeout.
func TestAbandonedStreamProbeLetsBreakerLeaveHalfOpen(t *testing.T) {
	be := startEnding(t)
	reg := newBreakers(t, telemetry.Nop{}, func(c *breaker.Config) {
		c.ConsecutiveFailures, c.OpenTimeout, c.ProbeTimeout = 1, 20*time.Millisecond, 100*time.Millisecond
	})
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg))
	if err != nil {
		t.Fatal(err)
	}
	cc := dialConn(t, be.Addr, chain.DialOptions()...)
	c := testpb.NewTestServiceClient(cc)
	target, method := "passthrough:///"+be.Addr, "/grpc.testing.TestService/FullDuplexCall"
	tok, err := reg.Allow(target, method)
	if err != nil {
		t.Fatal(err)
	}
	tok.Done(context.Background(), status.Error(codes.Unavailable, "down")) // open it
	testutil.Eventually(t, 5*time.Second, func() bool { return reg.State(target, method) == breaker.StateHalfOpen }, "half-open")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.FullDuplexCall(ctx) // the probe
	if err != nil {
		t.Fatal(err)
	}
	sendUntilEOF(t, s) // ... and abandon it
	testutil.Eventually(t, 5*time.Second, func() bool {
		return streamEcho(context.Background(), c) == nil
	}, "a later stream gets through once the abandoned probe timed out")
	if st := reg.State(target, method); st != breaker.StateClosed {
		t.Errorf("breaker %v after a successful fresh probe, want closed", st)
	}
}

// TestMethodScopeLimitHoldsUnderKeyFlood is item 4: with method scope,
// limit 2 and a small key bound, a flood of other method names never
// evicts the limiter of a method with calls in flight: the server sees
// at most 2 concurrent calls of it.
func TestMethodScopeLimitHoldsUnderKeyFlood(t *testing.T) {
	be := startGated(t)
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) {
		c.Scope, c.Limit, c.MaxKeys, c.MaxQueued, c.MaxWait = interceptors.ScopeMethod, 2, 16, 0, time.Second
	})
	cc := dialConn(t, be.Addr, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
	c := testpb.NewTestServiceClient(cc)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A deadline that expired while the server still held the call
				// would free the client's slot early (a client limiter counts
				// what the client sees), so the held calls get one longer than
				// the test; closing the gate ends them.
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err := unary(ctx, c)
				cancel()
				if code := status.Code(err); err != nil && !errors.Is(err, interceptors.ErrLimited) && code != codes.Canceled {
					t.Errorf("held call = %v", err)
					return
				}
			}
		}()
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 2 }, "two calls hold the limit")
	for i := range 500 {
		err := cc.Invoke(context.Background(), "/grpc.testing.TestService/Flood"+strconv.Itoa(i), &testpb.SimpleRequest{}, &testpb.SimpleResponse{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("flood call %d = %v, want Unimplemented", i, err)
		}
	}
	close(stop)
	close(be.gate)
	wg.Wait()
	if p := be.peak.Load(); p > 2 {
		t.Fatalf("server saw %d concurrent calls of one method with limit 2", p)
	}
}

// TestNewClientChainOptions: one way to build the chain, and its misuses
// are errors.
func TestNewClientChainOptions(t *testing.T) {
	reg := newBreakers(t, telemetry.Nop{}, nil)
	_, p, err := interceptors.SplitServiceConfig(`{"grpcreuse":{"methodConfig":[{"name":[{}],"circuitBreaker":{}}]}}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		opts    []interceptors.ChainOption
		wantErr string
	}{
		{"nil option", []interceptors.ChainOption{nil}, "option 0 is nil"},
		{"nil registry", []interceptors.ChainOption{interceptors.WithBreakers(nil)}, "WithBreakers(nil)"},
		{"nil limiter", []interceptors.ChainOption{interceptors.WithLimiter(nil)}, "WithLimiter(nil)"},
		{"nil policy", []interceptors.ChainOption{interceptors.WithPolicy(nil)}, "WithPolicy(nil)"},
		{"tenant without policy", []interceptors.ChainOption{interceptors.WithTenant("a")}, "WithTenant needs WithPolicy"},
		{"policy and registry", []interceptors.ChainOption{interceptors.WithPolicy(p), interceptors.WithBreakers(reg)}, "excludes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := interceptors.NewClientChain(tt.opts...); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewClientChain() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	ch, err := interceptors.NewClientChain(interceptors.WithPolicy(p), interceptors.WithTenant("acme"))
	if err != nil {
		t.Fatal(err)
	}
	if ch.Tenant() != "acme" || len(ch.Breakers()) != 0 || ch.Limiters() == nil {
		t.Errorf("fresh chain: tenant %q, %d breakers, limiters %v", ch.Tenant(), len(ch.Breakers()), ch.Limiters())
	}
}

// FuzzParsePolicy: any input either parses or fails with a message that
// starts with "grpcreuse: "; a policy that parses builds, and the same
// policy with an unknown field added at any object level is rejected,
// naming that field.
func FuzzParsePolicy(f *testing.F) {
	f.Add(`{"methodConfig":[{"name":[{}],"circuitBreaker":{"consecutiveFailures":3},"concurrencyLimit":{"limit":5}}]}`)
	f.Add(`{"methodConfig":[{"name":[{"service":"s","method":"m"}],"circuitBreaker":{"failureCodes":["UNAVAILABLE",13]}}]}`)
	f.Add(`{"methodConfig":[{"name":[{"service":"s"}],"concurrencyLimit":{"algorithm":"aimd","limit":10,"maxLimit":20}}]}`)
	f.Add(`{"methodConfig":[]}`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := interceptors.ParsePolicy([]byte(raw))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "grpcreuse: ") {
				t.Fatalf("error %q does not start with the policy name", err)
			}
			return
		}
		if p == nil {
			return
		}
		if _, err := interceptors.NewClientChain(interceptors.WithPolicy(p)); err != nil {
			t.Fatalf("parsed policy does not build: %v", err)
		}
		// It marshals back to JSON that parses to the same policy.
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("json.Marshal(policy): %v", err)
		}
		if back, err := interceptors.ParsePolicy(out); err != nil || !reflect.DeepEqual(back, p) {
			t.Fatalf("round trip of %s through %s: %+v, %v; want %+v", raw, out, back, err, p)
		}
		// An unknown member in the policy object is always an error.
		trimmed := strings.TrimSpace(raw)
		bad := `{"zzUnknownField":1,` + strings.TrimPrefix(trimmed, "{")
		if strings.TrimSpace(strings.TrimPrefix(trimmed, "{")) == "}" {
			bad = `{"zzUnknownField":1}`
		}
		if _, err := interceptors.ParsePolicy([]byte(bad)); err == nil || !strings.Contains(err.Error(), "zzUnknownField") {
			t.Fatalf("policy with an unknown field parsed: %s (err %v)", bad, err)
		}
	})
}
