package clientconn_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// One document: gRPC's methodConfig and grpcreuse's breaker policy.
const breakerServiceConfig = `{
  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}], "timeout": "5s"}],
  "grpcreuse": {"methodConfig": [{"name": [{}],
    "circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "60s"},
    "concurrencyLimit": {"limit": 100}}]}
}`

func TestServiceConfigPolicyOpensBreaker(t *testing.T) {
	var faults testutil.Faults
	b := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: faults.ServerOptions()})
	f := newFactory(t, clientconn.WithServiceConfig(breakerServiceConfig))
	c := get(t, f, b.Addr)
	defer c.Close()
	mustUnary(t, c)

	faults.FailEvery(1, codes.Unavailable)
	for i := 0; i < 3; i++ {
		if err := unary(context.Background(), c); status.Code(err) != codes.Unavailable || errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("failing call %d: %v, want the backend's Unavailable", i, err)
		}
	}
	seen := faults.Calls()
	if seen != 4 {
		t.Fatalf("server saw %d calls, want 4 (1 good, 3 failing)", seen)
	}
	for i := 0; i < 20; i++ {
		start := time.Now()
		err := unary(context.Background(), c)
		if status.Code(err) != codes.Unavailable || !errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("call %d after 3 failures: %v, want Unavailable wrapping breaker.ErrOpen", i, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("open breaker took %v to fail the call", d)
		}
	}
	if got := faults.Calls(); got != seen {
		t.Errorf("backend saw %d calls while the breaker was open, want 0", got-seen)
	}
}

func TestServiceConfigPolicyBadField(t *testing.T) {
	_, err := clientconn.New(plaintext, clientconn.WithServiceConfig(`{"grpcreuse":{"methodConfig":[{"name":[{}],"circuitBreaker":{"failureRatio":1.5}}]}}`))
	if err == nil || !strings.Contains(err.Error(), `"circuitBreaker.failureRatio" is 1.5`) {
		t.Fatalf("New with a bad policy: %v, want the field and value named", err)
	}
	// A bad per-Get policy fails that Get only.
	g := newFactory(t)
	if _, err := g.Get(context.Background(), "127.0.0.1:1", clientconn.WithTargetServiceConfig(`{"grpcreuse":{"methodConfig":[{"name":[{}],"concurrencyLimit":{"limit":-1}}]}}`)); err == nil || !strings.Contains(err.Error(), `"concurrencyLimit.limit" is -1`) {
		t.Fatalf("Get with a bad target policy: %v", err)
	}
}
