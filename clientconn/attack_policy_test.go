package clientconn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// retryPolicyConfig retries UNAVAILABLE up to 3 attempts (gRFC A6) and
// trips the grpcreuse breaker after 3 consecutive failures.
const retryPolicyConfig = `{
  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.001s", "maxBackoff": "0.002s",
      "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}],
  "grpcreuse": {"methodConfig": [{"name": [{}],
    "circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "60s"},
    "concurrencyLimit": {"limit": 1, "maxQueued": 0}}]}
}`

// TestBreakerCountsCallsNotRetryAttempts pins what docs/policy.md says:
// the policy's interceptors sit above grpc's retries, so a call is one
// breaker outcome (its final status) however many attempts it took, and
// holds one limiter slot through all of them.
func TestBreakerCountsCallsNotRetryAttempts(t *testing.T) {
	var faults testutil.Faults
	b := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: faults.ServerOptions()})
	f := newFactory(t, clientconn.WithServiceConfig(retryPolicyConfig))
	c := get(t, f, b.Addr)
	defer c.Close()
	mustUnary(t, c)

	// A call that fails twice and then succeeds is one success.
	faults.FailEvery(1, codes.Unavailable)
	before := faults.Calls()
	for i := range 3 {
		err := unary(context.Background(), c)
		if status.Code(err) != codes.Unavailable || errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("call %d: %v, want the backend's Unavailable after its retries", i, err)
		}
	}
	if got := faults.Calls() - before; got != 9 {
		t.Fatalf("backend saw %d attempts for 3 calls, want 9 (3 attempts each)", got)
	}
	// 3 calls (9 attempts) trip a breaker of consecutiveFailures 3: calls, not attempts.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := unary(ctx, c); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("4th call: %v, want the breaker open after 3 failed calls", err)
	}
	st := f.Policies().Breakers
	if len(st) != 1 || st[0].State != breaker.StateOpen {
		t.Fatalf("breakers = %+v", st)
	}
}

// TestBreakerAndHungBackend pins what docs/policy.md says about a backend
// that stops answering (a black hole): calls that end at the caller's own
// deadline never count, so the breaker does not open on them; a
// methodConfig "timeout" shorter than the callers' deadlines makes the
// same hang a backend failure (DEADLINE_EXCEEDED with the caller's
// context alive), and the breaker opens.
func TestBreakerAndHungBackend(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	for _, tt := range []struct {
		name        string
		timeout     string // methodConfig timeout; "" for none
		callerLimit time.Duration
		wantOpen    bool
	}{
		{"caller deadlines only", "", 100 * time.Millisecond, false},
		{"methodConfig timeout", `"timeout": "0.1s",`, 5 * time.Second, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proxy := testutil.StartProxy(t, be.Addr)
			f := newFactory(t, clientconn.WithServiceConfig(`{
  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}], `+tt.timeout+` "waitForReady": false}],
  "grpcreuse": {"methodConfig": [{"name": [{}], "circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "60s"}}]}}`))
			c := get(t, f, proxy.Addr)
			defer c.Close()
			mustUnary(t, c)
			proxy.Blackhole(true)
			for range 4 {
				ctx, cancel := context.WithTimeout(context.Background(), tt.callerLimit)
				_ = unary(ctx, c)
				cancel()
			}
			st := f.Policies().Breakers
			open := len(st) == 1 && st[0].State == breaker.StateOpen
			if open != tt.wantOpen {
				t.Fatalf("breakers after 4 hung calls = %+v, want open=%v", st, tt.wantOpen)
			}
			proxy.Blackhole(false)
		})
	}
}
