package interceptors_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// TestPanickingStreamerFreesSlotAndProbe: the unary path already treats a
// panic further in as a failure, so a probe is never stuck; the stream
// path kept the limiter slot for ever (limit 1: every later call
// rejected) and left a half-open probe to its timeout.
func TestPanickingStreamerFreesSlotAndProbe(t *testing.T) {
	cc, err := grpc.NewClient("passthrough:///attack", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) { c.Limit, c.MaxQueued = 1, 0 })
	reg, err := breaker.New()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		t.Fatal(err)
	}
	si := chain.StreamClientInterceptor()
	const method = "/pkg.Svc/Stream"
	boom := func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
		panic("bug further in")
	}
	for range 3 {
		func() {
			defer func() {
				if r := recover(); r == nil {
					t.Fatal("the panic did not reach the caller")
				}
			}()
			_, _ = si(context.Background(), &grpc.StreamDesc{ServerStreams: true}, cc, method, boom)
		}()
	}
	if st := lim.Stats(cc.Target(), method); st.InFlight != 0 || st.Rejected != 0 {
		t.Fatalf("limiter after panicking streams = %+v, want its slot free and no rejection", st)
	}
	if s := reg.Snapshot(); len(s) != 1 || s[0].Failures != 3 {
		t.Fatalf("breaker after 3 panicking streams = %+v, want 3 failures counted", s)
	}
}

// TestLimiterStressNeverExceedsAndAlwaysReturns: many callers with random
// deadlines, cancellations and queueing race on a limit of 3 (AIMD, so
// the limit moves too). The invoker never sees more calls at once than the
// limit allows, and when all is done nothing is in flight or queued.
func TestLimiterStressNeverExceedsAndAlwaysReturns(t *testing.T) {
	cc, err := grpc.NewClient("passthrough:///attack", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) {
		c.Algorithm, c.Limit, c.MinLimit, c.MaxLimit = interceptors.AIMD, 3, 1, 3
		c.MaxQueued, c.MaxWait = 8, 20*time.Millisecond
	})
	u := lim.UnaryClientInterceptor()
	var inflight, peak atomic.Int64
	invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-time.After(time.Duration(rand.IntN(3)) * time.Millisecond):
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		if rand.IntN(4) == 0 {
			return status.Error(codes.Unavailable, "overloaded")
		}
		return nil
	}
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+rand.IntN(30))*time.Millisecond)
				if (w+i)%7 == 0 {
					time.AfterFunc(time.Duration(rand.IntN(2))*time.Millisecond, cancel)
				}
				_ = u(ctx, "/pkg.Svc/M", nil, nil, cc, invoker)
				cancel()
			}
		}()
	}
	wg.Wait()
	if p := peak.Load(); p > 3 {
		t.Errorf("invoker saw %d calls at once, limit is at most 3", p)
	}
	st := lim.Stats(cc.Target(), "")
	if st.InFlight != 0 || st.Queued != 0 {
		t.Errorf("after the storm: %+v, want nothing in flight or queued", st)
	}
	t.Logf("after the storm: %+v", st)
}

// TestPolicyMarshalsBackToItsJSON: DESIGN says parsed configs marshal
// back to the JSON they came from. json.Marshal of a parsed Policy gave Go
// field names and nanosecond integers, which ParsePolicy then rejected.
func TestPolicyMarshalsBackToItsJSON(t *testing.T) {
	for _, doc := range []string{
		`{"methodConfig":[{"name":[{}],"circuitBreaker":{"consecutiveFailures":3,"openTimeout":"1.5s","failureCodes":["UNAVAILABLE",13]},"concurrencyLimit":{"limit":5,"maxWait":"0.25s"}}]}`,
		`{"methodConfig":[{"name":[{"service":"s","method":"m"},{"service":"t"}],"circuitBreaker":{"scope":"target","failureRatio":0.5,"consecutiveFailures":0}},{"name":[{"service":"u"}]}]}`,
		`{"methodConfig":[{"name":[{"service":"s"}],"concurrencyLimit":{"algorithm":"aimd","limit":10,"maxLimit":20,"latencyThreshold":"0.010s","scope":"method"}}]}`,
		`{"methodConfig":[]}`,
	} {
		p, err := interceptors.ParsePolicy([]byte(doc))
		if err != nil {
			t.Fatalf("ParsePolicy(%s): %v", doc, err)
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		back, err := interceptors.ParsePolicy(out)
		if err != nil {
			t.Fatalf("ParsePolicy(json.Marshal(p)) = %v\nmarshalled: %s", err, out)
		}
		if !reflect.DeepEqual(p, back) {
			t.Errorf("round trip of %s changed the policy:\nparsed        %+v\nround-tripped %+v\nmarshalled: %s", doc, p, back, out)
		}
	}
	if out, _ := json.Marshal((*interceptors.Policy)(nil)); string(out) != "null" {
		t.Errorf("nil policy marshals as %s, want null", out)
	}
}
