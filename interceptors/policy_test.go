package interceptors_test

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

const exampleDoc = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}], "timeout": "1s"}],
  "grpcreuse": {
    "methodConfig": [
      {
        "name": [{}],
        "circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "30s", "failureCodes": ["UNAVAILABLE", 13]},
        "concurrencyLimit": {"algorithm": "aimd", "limit": 50, "maxLimit": 200, "maxQueued": 10, "maxWait": "0.05s"}
      },
      {
        "name": [{"service": "grpc.testing.TestService", "method": "FullDuplexCall"}],
        "circuitBreaker": {"scope": "target", "consecutiveFailures": 0, "failureRatio": 0.5, "minimumRequests": 10, "window": "20s", "windowBuckets": 4}
      }
    ]
  }
}`

func TestSplitServiceConfig(t *testing.T) {
	grpcDoc, p, err := interceptors.SplitServiceConfig(exampleDoc)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(grpcDoc, "grpcreuse") || !strings.Contains(grpcDoc, "round_robin") {
		t.Errorf("grpc part = %s", grpcDoc)
	}
	// What is left must be a service config grpc accepts.
	cc, err := grpc.NewClient("passthrough:///unused", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(grpcDoc))
	if err != nil {
		t.Fatalf("grpc rejects the rest: %v", err)
	}
	cc.Close()
	cb0 := breaker.DefaultConfig()
	cb0.ConsecutiveFailures, cb0.OpenTimeout, cb0.FailureCodes = 3, 30*time.Second, []codes.Code{codes.Unavailable, codes.Internal}
	cl0 := interceptors.DefaultLimiterConfig()
	cl0.Algorithm, cl0.Limit, cl0.MaxLimit, cl0.MaxQueued, cl0.MaxWait = interceptors.AIMD, 50, 200, 10, 50*time.Millisecond
	cb1 := breaker.DefaultConfig()
	cb1.Scope, cb1.ConsecutiveFailures, cb1.FailureRatio, cb1.MinimumRequests, cb1.Window, cb1.WindowBuckets =
		breaker.ScopeTarget, 0, 0.5, 10, 20*time.Second, 4
	want := &interceptors.Policy{MethodConfig: []interceptors.MethodPolicy{
		{Name: []interceptors.MethodName{{}}, CircuitBreaker: &cb0, ConcurrencyLimit: &cl0},
		{Name: []interceptors.MethodName{{Service: "grpc.testing.TestService", Method: "FullDuplexCall"}}, CircuitBreaker: &cb1},
	}}
	if !reflect.DeepEqual(p, want) {
		got, _ := json.MarshalIndent(p, "", " ")
		exp, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("policy\n got %s\nwant %s", got, exp)
	}
	for _, doc := range []string{"", `{"methodConfig": []}`, `{"grpcreuse": null}`} {
		g, p, err := interceptors.SplitServiceConfig(doc)
		if err != nil || p != nil {
			t.Errorf("SplitServiceConfig(%q) = %q, %v, %v; want no policy", doc, g, p, err)
		}
	}
}

func TestPolicyErrors(t *testing.T) {
	entry := func(body string) string {
		return `{"grpcreuse": {"methodConfig": [{"name": [{}]}, {"name": [{"service": "s"}], ` + body + `}]}}`
	}
	tests := []struct {
		name, doc, wantErr string
	}{
		{"syntax", `{"grpcreuse": `, `grpcreuse: service config is not valid JSON`},
		{"not an object", `[1]`, `grpcreuse: service config is [1]; must be a JSON object`},
		{"policy not an object", `{"grpcreuse": 5}`, `grpcreuse: "grpcreuse" is 5; must be a JSON object`},
		{"methodConfig not a list", `{"grpcreuse": {"methodConfig": {}}}`, `grpcreuse: "methodConfig" is {}; must be a JSON array`},
		{"entry not an object", `{"grpcreuse": {"methodConfig": ["x"]}}`, `grpcreuse: "methodConfig[0]" is "x"; must be a JSON object`},
		{"ratio", entry(`"circuitBreaker": {"failureRatio": 1.5}`), `grpcreuse: "circuitBreaker.failureRatio" is 1.5; must be between 0 and 1 (methodConfig[1])`},
		{"ratio string", entry(`"circuitBreaker": {"failureRatio": "half"}`), `grpcreuse: "circuitBreaker.failureRatio" is "half"; must be a number (methodConfig[1])`},
		{"count fraction", entry(`"circuitBreaker": {"consecutiveFailures": 2.5}`), `"circuitBreaker.consecutiveFailures" is 2.5; must be a whole number (methodConfig[1])`},
		{"count huge", entry(`"circuitBreaker": {"consecutiveFailures": 99999999999999999999}`), `"circuitBreaker.consecutiveFailures" is 99999999999999999999; must be within the field's range (none goes beyond ±1073741824)`},
		{"count negative", entry(`"circuitBreaker": {"halfOpenProbes": -1}`), `"circuitBreaker.halfOpenProbes" is -1; must be between 1 and`},
		{"no trip rule", entry(`"circuitBreaker": {"consecutiveFailures": 0}`), `"circuitBreaker.consecutiveFailures" is 0; must be at least 1 when "failureRatio" is 0`},
		{"duration number", entry(`"circuitBreaker": {"openTimeout": 30}`), `grpcreuse: "circuitBreaker.openTimeout" is 30; must be a duration string such as "30s" or "0.25s" (methodConfig[1])`},
		{"duration negative", entry(`"circuitBreaker": {"openTimeout": "-1s"}`), `"circuitBreaker.openTimeout" is "-1s"; must be positive (methodConfig[1])`},
		{"window short", entry(`"circuitBreaker": {"window": "0.001s"}`), `"circuitBreaker.window" is "0.001s"; must be at least 1ms per bucket`},
		{"bad code", entry(`"circuitBreaker": {"failureCodes": ["UNAVAILABLE", "NOPE"]}`), `"circuitBreaker.failureCodes[1]" is "NOPE"; must be a gRPC code name such as "UNAVAILABLE"`},
		{"cancelled code", entry(`"circuitBreaker": {"failureCodes": ["CANCELLED"]}`), `"circuitBreaker.failureCodes[0]" is "CANCELLED"; must be a gRPC code other than OK and CANCELLED`},
		{"codes not list", entry(`"circuitBreaker": {"failureCodes": "UNAVAILABLE"}`), `"circuitBreaker.failureCodes" is "UNAVAILABLE"; must be a JSON array`},
		{"empty codes", entry(`"circuitBreaker": {"failureCodes": []}`), `"circuitBreaker.failureCodes" is []; must list at least one gRPC code`},
		{"breaker scope", entry(`"circuitBreaker": {"scope": "host"}`), `"circuitBreaker.scope" is "host"; must be "method" or "target"`},
		{"breaker not object", entry(`"circuitBreaker": true`), `"circuitBreaker" is true; must be a JSON object (methodConfig[1])`},
		{"algorithm", entry(`"concurrencyLimit": {"algorithm": "vegas"}`), `"concurrencyLimit.algorithm" is "vegas"; must be "fixed" or "aimd"`},
		{"limit 0", entry(`"concurrencyLimit": {"limit": 0}`), `grpcreuse: "concurrencyLimit.limit" is 0; must be between 1 and 1073741824 (methodConfig[1])`},
		{"aimd min", entry(`"concurrencyLimit": {"algorithm": "aimd", "limit": 5, "minLimit": 6}`), `"concurrencyLimit.minLimit" is 6; must be between 1 and "limit" (5)`},
		{"backoff", entry(`"concurrencyLimit": {"algorithm": "aimd", "backoffRatio": 0}`), `"concurrencyLimit.backoffRatio" is 0; must be between 0 and 1, exclusive`},
		{"max wait", entry(`"concurrencyLimit": {"maxWait": "0s"}`), `"concurrencyLimit.maxWait" is "0s"; must be positive`},
		{"max queued", entry(`"concurrencyLimit": {"maxQueued": -2}`), `"concurrencyLimit.maxQueued" is -2; must be between 0 and`},
		{"limiter scope", entry(`"concurrencyLimit": {"scope": 1}`), `"concurrencyLimit.scope" is 1; must be "target" or "method"`},
		{"names missing", `{"grpcreuse": {"methodConfig": [{"circuitBreaker": {}}]}}`, `grpcreuse: "name" is []; must list at least one {service, method} selector (methodConfig[0])`},
		{"names not list", `{"grpcreuse": {"methodConfig": [{"name": {}}]}}`, `grpcreuse: "name" is {}; must be a JSON array (methodConfig[0])`},
		{"service not string", `{"grpcreuse": {"methodConfig": [{"name": [{"service": 1}]}]}}`, `grpcreuse: "name[0].service" is 1; must be a string (methodConfig[0])`},
		{"method without service", `{"grpcreuse": {"methodConfig": [{"name": [{"method": "M"}]}]}}`, `grpcreuse: "name[0].method" is "M"; must be empty when "service" is empty (methodConfig[0])`},
		{"duplicate name", `{"grpcreuse": {"methodConfig": [{"name": [{"service": "s"}]}, {"name": [{}, {"service": "s"}]}]}}`, `grpcreuse: "name[1]" is {"service":"s"}; must not repeat a name of methodConfig[0] (methodConfig[1])`},
		{"duplicate default", `{"grpcreuse": {"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}}`, `"name[0]" is {}; must not repeat a name of methodConfig[0]`},
		// Issue 13 item 9: typos and duplicates are errors naming the field
		// and the nearest known name, at every level.
		{"typo in breaker field", entry(`"circuitBreaker": {"consecutiveFailure": 3}`), `grpcreuse: "circuitBreaker.consecutiveFailure" is not a known field; did you mean "consecutiveFailures"? (methodConfig[1])`},
		{"typo in limiter field", entry(`"concurrencyLimit": {"maxQueue": 3}`), `grpcreuse: "concurrencyLimit.maxQueue" is not a known field; did you mean "maxQueued"? (methodConfig[1])`},
		{"typo in entry field", entry(`"circuitBreakr": {}`), `grpcreuse: "circuitBreakr" is not a known field; did you mean "circuitBreaker"? (methodConfig[1])`},
		{"typo in name field", `{"grpcreuse": {"methodConfig": [{"name": [{"service": "s", "mehtod": "M"}]}]}}`, `grpcreuse: "name[0].mehtod" is not a known field; did you mean "method"? (methodConfig[0])`},
		{"typo in policy field", `{"grpcreuse": {"methodConfg": []}}`, `grpcreuse: "methodConfg" is not a known field; did you mean "methodConfig"?`},
		{"unknown policy field", `{"grpcreuse": {"futureField": true}}`, `grpcreuse: "futureField" is not a known field; known fields: methodConfig`},
		{"top-level near miss", `{"GrpcReuse": {"methodConfig": []}}`, `grpcreuse: "GrpcReuse" is not a known field; did you mean "grpcreuse"?`},
		{"top-level near miss 2", `{"grpcreuse_": {}}`, `did you mean "grpcreuse"?`},
		{"top-level gRPC near miss", `{"methodConfg": []}`, `grpcreuse: "methodConfg" is not a known field; did you mean "methodConfig"?`},
		{"duplicate top-level", `{"grpcreuse": {}, "grpcreuse": {"methodConfig": []}}`, `grpcreuse: "grpcreuse" appears more than once`},
		{"duplicate policy field", `{"grpcreuse": {"methodConfig": [], "methodConfig": []}}`, `grpcreuse: "methodConfig" appears more than once`},
		{"duplicate entry field", entry(`"circuitBreaker": {}, "circuitBreaker": {}`), `grpcreuse: "circuitBreaker" appears more than once (methodConfig[1])`},
		{"duplicate breaker field", entry(`"circuitBreaker": {"window": "1s", "window": "2s"}`), `grpcreuse: "circuitBreaker.window" appears more than once (methodConfig[1])`},
		{"duplicate name field", `{"grpcreuse": {"methodConfig": [{"name": [{"service": "a", "service": "b"}]}]}}`, `grpcreuse: "name[0].service" appears more than once (methodConfig[0])`},
		{"probe timeout", entry(`"circuitBreaker": {"probeTimeout": "0s"}`), `grpcreuse: "circuitBreaker.probeTimeout" is "0s"; must be positive (methodConfig[1])`},
		{"long value clipped", entry(`"circuitBreaker": {"scope": "` + strings.Repeat("x", 100) + `"}`), `"circuitBreaker.scope" is "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…; must be`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := interceptors.SplitServiceConfig(tt.doc)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SplitServiceConfig() error = %v\nwant containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestPolicyRouting proves gRPC's matching rules: exact method, then
// service, then default; the matching entry applies whole.
func TestPolicyRouting(t *testing.T) {
	be := startFlaky(t)
	be.failing.Store(true)
	doc := `{"grpcreuse": {"methodConfig": [
	  {"name": [{}], "circuitBreaker": {"consecutiveFailures": 1, "openTimeout": "3600s", "failureCodes": ["UNIMPLEMENTED"]}},
	  {"name": [{"service": "grpc.testing.TestService"}], "circuitBreaker": {"consecutiveFailures": 2, "openTimeout": "3600s"}},
	  {"name": [{"service": "grpc.testing.TestService", "method": "FullDuplexCall"}]}
	]}}`
	_, p, err := interceptors.SplitServiceConfig(doc)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := interceptors.NewClientChain(interceptors.WithPolicy(p))
	if err != nil {
		t.Fatal(err)
	}
	opts := chain.DialOptions()
	c := dial(t, be.Addr, opts...)
	ctx := context.Background()
	// UnaryCall matches the service entry: the second failure trips.
	for i := range 2 {
		if err := unary(ctx, c); errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("unary %d = %v; tripped before the service entry's threshold of 2", i, err)
		}
	}
	if err := unary(ctx, c); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("unary 3 = %v, want ErrOpen", err)
	}
	// FullDuplexCall matches its exact entry, which has no breaker.
	for i := range 4 {
		if err := streamEcho(ctx, c); errors.Is(err, breaker.ErrOpen) || status.Code(err) != codes.Unavailable {
			t.Fatalf("stream %d = %v, want the backend's Unavailable", i, err)
		}
	}
	// Another service falls to the default entry (threshold 1).
	cc := dialConn(t, be.Addr, opts...)
	for i, want := range []bool{false, true} {
		err := cc.Invoke(ctx, "/other.Service/Call", &testpb.SimpleRequest{}, &testpb.SimpleResponse{})
		if errors.Is(err, breaker.ErrOpen) != want {
			t.Fatalf("default-entry call %d = %v, want ErrOpen %v", i, err, want)
		}
	}
}

func FuzzSplitServiceConfig(f *testing.F) {
	f.Add(exampleDoc)
	f.Add(`{"grpcreuse": {"methodConfig": [{"name": [{}], "circuitBreaker": {"failureRatio": 1e400}}]}}`)
	f.Add(`{"grpcreuse": {"methodConfig": [{"name": [{"service": "a", "method": "b"}], "concurrencyLimit": {"algorithm": "aimd", "limit": 1, "minLimit": 1, "maxLimit": 1, "backoffRatio": 0.5}}]}}`)
	f.Add(`{"grpcreuse": null, "x": [1, 2]}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, doc string) {
		grpcDoc, p, err := interceptors.SplitServiceConfig(doc)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "grpcreuse: ") {
				t.Fatalf("error %q does not start with the package name", err)
			}
			return
		}
		if p == nil {
			return
		}
		if strings.Contains(grpcDoc, `"grpcreuse"`) && json.Valid([]byte(grpcDoc)) {
			var m map[string]json.RawMessage
			if json.Unmarshal([]byte(grpcDoc), &m) == nil {
				if _, ok := m["grpcreuse"]; ok {
					t.Fatalf("grpc part still holds the policy: %s", grpcDoc)
				}
			}
		}
		// A policy that parses must build.
		if _, err := interceptors.NewClientChain(interceptors.WithPolicy(p)); err != nil {
			t.Fatalf("parsed policy does not build: %v", err)
		}
	})
}

// TestChainOrder proves the recommended order: telemetry sees every call
// including fast failures; the breaker ignores limiter rejections.
func TestChainOrder(t *testing.T) {
	be := startGated(t)
	reg, err := breaker.New(breaker.WithConfig(func() breaker.Config {
		c := breaker.DefaultConfig()
		c.ConsecutiveFailures = 1
		return c
	}()))
	if err != nil {
		t.Fatal(err)
	}
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) { c.Limit, c.MaxQueued = 1, 0 })
	var seen []codes.Code
	tel := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		seen = append(seen, status.Code(err))
		return err
	}
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		t.Fatal(err)
	}
	// The caller's own interceptors go outside the chain, to see every call.
	c := dial(t, be.Addr, append([]grpc.DialOption{grpc.WithChainUnaryInterceptor(tel)}, chain.DialOptions()...)...)
	held := make(chan error, 1)
	go func() { held <- unary(context.Background(), c) }()
	testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 1 }, "slot held")
	for range 3 {
		if err := unary(context.Background(), c); !errors.Is(err, interceptors.ErrLimited) {
			t.Fatalf("call at the limit = %v, want ErrLimited", err)
		}
	}
	close(be.gate)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if s := reg.State("passthrough:///"+be.Addr, "/grpc.testing.TestService/UnaryCall"); s.String() != "closed" {
		t.Fatalf("breaker %v: limiter rejections must not count", s)
	}
	if len(seen) != 4 {
		t.Fatalf("telemetry saw %v, want all 4 calls", seen)
	}
}
