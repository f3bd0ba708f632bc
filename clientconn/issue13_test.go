package clientconn_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Regression tests for issue 13 (client side, clientconn) and the
// WithWarmUp points of issue 15, one per item, each named for what it
// proves.

// badTenantKey marks a request the misbehaving tenant sends: the backend
// fails it (or holds it, or answers ResourceExhausted) as told.
const badTenantKey = "x-misbehave"

// startTenantBackend answers UnaryCall OK unless the request carries
// badTenantKey: "fail" (Unavailable), "overload" (ResourceExhausted) or
// "hang" (waits for the caller to give up).
func startTenantBackend(t *testing.T) *testutil.Backend {
	return testutil.StartBackend(t, testutil.BackendOptions{Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		switch v := md.Get(badTenantKey); {
		case len(v) == 0:
			return &testpb.SimpleResponse{}, nil
		case v[0] == "fail":
			return nil, status.Error(codes.Unavailable, "bad tenant's backend down")
		case v[0] == "overload":
			return nil, status.Error(codes.ResourceExhausted, "bad tenant over quota")
		}
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}})
}

func misbehave(ctx context.Context, how string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, badTenantKey, how)
}

const tenantPolicy = `{"grpcreuse":{"methodConfig":[{"name":[{}],
  "circuitBreaker":{"consecutiveFailures":5,"openTimeout":"3600s"},
  "concurrencyLimit":{"algorithm":"aimd","limit":20,"minLimit":1,"maxLimit":100,"maxQueued":0}}]}}`

// rotations counts max-age replacements (ConnClosed with CloseMaxAge).
type rotations struct {
	telemetry.Nop
	n atomic.Int64
}

func (r *rotations) ConnClosed(_ string, reason string, _ time.Duration) {
	if reason == telemetry.CloseMaxAge {
		r.n.Add(1)
	}
}

// TestTenantsNeverShareBreakersOrLimiters is item 1: tenant A's failures
// open only A's breaker and A's overload lowers only A's limit; B's calls
// all go through. A's open breaker survives max-age rotations of A's
// connection, and the Factory's policy status names each tenant.
func TestTenantsNeverShareBreakersOrLimiters(t *testing.T) {
	be := startTenantBackend(t)
	rot := &rotations{}
	f := newFactory(t, clientconn.WithServiceConfig(tenantPolicy), clientconn.WithMaxConnectionAge(100*time.Millisecond),
		clientconn.NoJitter(), clientconn.WithObserver(rot))
	a := get(t, f, be.Addr, clientconn.WithTenant("a"))
	defer a.Close()
	b := get(t, f, be.Addr, clientconn.WithTenant("b"))
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for range 4 {
		if err := unary(misbehave(ctx, "overload"), a); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("A's overloaded call = %v", err)
		}
	}
	for range 5 {
		_ = unary(misbehave(ctx, "fail"), a)
	}
	if err := unary(ctx, a); !errors.Is(err, breaker.ErrOpen) || !strings.Contains(err.Error(), `(tenant "a")`) {
		t.Fatalf("A's call after 5 failures = %v, want ErrOpen naming tenant a", err)
	}
	// B: 10 concurrent healthy calls, none rejected.
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- unary(ctx, b) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("B's call = %v; A's failures or overload reached B", err)
		}
	}
	st := f.Policies()
	for _, l := range st.Limiters {
		switch l.Tenant {
		case "a":
			if l.Limit >= 20 {
				t.Errorf("A's limiter %+v: A's overload should have lowered it", l)
			}
		case "b":
			if l.Limit < 20 {
				t.Errorf("B's limiter %+v: lowered by A's overload", l)
			}
		default:
			t.Errorf("limiter %+v has no tenant", l)
		}
	}
	var open []string
	for _, s := range st.Breakers {
		if s.State == breaker.StateOpen {
			open = append(open, s.Tenant)
		}
	}
	if len(open) != 1 || open[0] != "a" {
		t.Errorf("open breakers by tenant = %v, want only [a]", open)
	}

	// A's breaker state survives rotations of A's connection.
	testutil.Eventually(t, 10*time.Second, func() bool { return rot.n.Load() >= 4 }, "both tenants' connections rotated twice")
	if err := unary(ctx, a); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("A's call after rotations = %v, want its breaker still open", err)
	}
	if err := unary(ctx, b); err != nil {
		t.Fatalf("B's call after rotations = %v", err)
	}
}

// sliceCreds is comparable as a type but not as a value: comparing it
// compares the slice in extra, which panics.
type sliceCreds struct {
	credentials.TransportCredentials
	extra any
}

// TestUncomparableCredentialsFailGetWithoutLockingTheFactory is item 5: a
// credentials value that would panic as a map key is rejected with an
// error, and the Factory keeps serving Gets.
func TestUncomparableCredentialsFailGetWithoutLockingTheFactory(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	bad := sliceCreds{TransportCredentials: insecure.NewCredentials(), extra: []int{1}}
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Get panicked: %v", r)
			}
		}()
		_, err = f.Get(context.Background(), be.Addr, clientconn.WithTargetCredentials(bad))
	}()
	if err == nil || !strings.Contains(err.Error(), "not comparable") {
		t.Fatalf("Get with uncomparable credentials = %v, want a 'not comparable' error", err)
	}
	if _, err := clientconn.New(clientconn.WithTransportCredentials(bad)); err == nil || !strings.Contains(err.Error(), "not comparable") {
		t.Fatalf("New with uncomparable credentials = %v", err)
	}
	done := make(chan error, 1)
	go func() {
		c, err := f.Get(context.Background(), be.Addr)
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("next Get = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the next Get blocked: the Factory lock was left held")
	}
}

// TestFailedGetsStoreNothing is item 8: Gets that fail (a bad per-Get
// service config, a closed Factory) with new tenants store no tenant
// credentials, documents or policy state.
func TestFailedGetsStoreNothing(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")))
	baseConfigs, basePolicies := clientconn.PolicyStateForTest(f)
	for i := range 2000 {
		_, err := f.Get(context.Background(), "127.0.0.1:1", clientconn.WithTenant("t"+strconv.Itoa(i)),
			clientconn.WithTargetServiceConfig(`{"grpcreuse":{"methodConfig":[{"name":[{}],"circuitBreaker":{"failureRatio":2}}]}}`))
		if err == nil {
			t.Fatal("Get with a bad service config succeeded")
		}
	}
	if n := clientconn.TenantCredsForTest(f); n != 0 {
		t.Errorf("after 2000 failed Gets the Factory keeps %d tenants' credentials, want 0", n)
	}
	if c, p := clientconn.PolicyStateForTest(f); c != baseConfigs || p != basePolicies {
		t.Errorf("after 2000 failed Gets: %d documents, %d policy states; want %d and %d", c, p, baseConfigs, basePolicies)
	}
	f.Close()
	for i := range 2000 {
		if _, err := f.Get(context.Background(), "127.0.0.1:1", clientconn.WithTenant("c"+strconv.Itoa(i))); !errors.Is(err, clientconn.ErrClosed) {
			t.Fatalf("Get on a closed Factory = %v, want ErrClosed", err)
		}
	}
	if n := clientconn.TenantCredsForTest(f); n != 0 {
		t.Errorf("after 2000 Gets on a closed Factory it keeps %d tenants' credentials, want 0", n)
	}
}

// TestServiceConfigCacheBoundedByUse is item 12: documents (and their
// policy state) are kept while connections use them, plus a few recent
// ones; hundreds of distinct documents do not stay.
func TestServiceConfigCacheBoundedByUse(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t, clientconn.WithMaxIdle(0))
	for i := range 300 {
		doc := `{"grpcreuse":{"methodConfig":[{"name":[{"service":"s` + strconv.Itoa(i) + `"}],"circuitBreaker":{}}]}}`
		c := get(t, f, be.Addr, clientconn.WithTargetServiceConfig(doc), clientconn.WithTenant("t"+strconv.Itoa(i%7)))
		c.Close()
	}
	if c, p := clientconn.PolicyStateForTest(f); c > 9 || p > 64 {
		t.Errorf("after 300 documents used once: %d documents and %d policy states kept, want at most 9 and 64", c, p)
	}
	// A document in use stays, with its breakers.
	c := get(t, f, be.Addr, clientconn.WithTargetServiceConfig(`{"grpcreuse":{"methodConfig":[{"name":[{}],"circuitBreaker":{}}]}}`))
	defer c.Close()
	mustUnary(t, c)
	if got := len(f.Policies().Breakers); got != 1 {
		t.Errorf("policy status lists %d breakers, want the one in use", got)
	}
}

// TestWarmUpSurvivesRotation is item 12: a Get waiting for READY while
// max-age rotation replaces the connection waits for the replacement
// instead of failing with "closed while waiting for READY".
func TestWarmUpSurvivesRotation(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	proxy := testutil.StartProxy(t, be.Addr)
	proxy.Refuse(true)
	rot := &rotations{}
	f := newFactory(t, clientconn.WithMaxConnectionAge(50*time.Millisecond), clientconn.NoJitter(),
		clientconn.WithDrainTimeout(50*time.Millisecond), clientconn.WithObserver(rot))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		c, err := f.Get(ctx, proxy.Addr, clientconn.WithWarmUp())
		if err == nil {
			c.Close()
		}
		got <- err
	}()
	testutil.Eventually(t, 10*time.Second, func() bool { return rot.n.Load() >= 2 }, "rotations while the Get waits")
	proxy.Refuse(false)
	if err := <-got; err != nil {
		t.Fatalf("Get(WithWarmUp) across rotations = %v, want READY", err)
	}
}

// TestWarmUpTimeoutKeepsTheCause is issue 15: a WithWarmUp timeout says
// why, for an unknown host and for a plaintext client against a TLS
// server, not only "context deadline exceeded".
func TestWarmUpTimeoutKeepsTheCause(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	tlsBe := testutil.StartBackend(t, testutil.BackendOptions{TLS: pki.ServerConfig(t)})
	f := newFactory(t)
	for _, tt := range []struct {
		name, target string
		want         []string
	}{
		{"unknown host", "dns:///nosuchhost.invalid:443", []string{"no such host", `resolving "dns:///nosuchhost.invalid:443"`}},
		{"plaintext to TLS", tlsBe.Addr, []string{"TLS"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := f.Get(ctx, tt.target, clientconn.WithWarmUp())
			t.Logf("error: %v", err)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Get = %v, want a DeadlineExceeded", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
	// The deprecated name still works.
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, be.Addr, clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestMultiTenantSoak: four tenants share a backend and one policy; one
// misbehaves (its calls fail, hang past their deadlines, overload, and it
// abandons streams after SendMsg returns io.EOF); the other three see no
// rejection, ever. Bounded by a call count and a deadline.
func TestMultiTenantSoak(t *testing.T) {
	be := startTenantBackend(t)
	f := newFactory(t, clientconn.WithServiceConfig(`{"grpcreuse":{"methodConfig":[{"name":[{}],
	  "circuitBreaker":{"consecutiveFailures":3,"openTimeout":"0.2s","probeTimeout":"0.2s"},
	  "concurrencyLimit":{"algorithm":"aimd","limit":8,"minLimit":1,"maxLimit":64,"maxQueued":16,"maxWait":"1s"}}]}}`),
		clientconn.WithMaxConnectionAge(300*time.Millisecond), clientconn.WithDrainTimeout(time.Second))
	deadline := time.Now().Add(3 * time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(10*time.Second))
	defer cancel()

	var wg sync.WaitGroup
	var goodCalls atomic.Int64
	goodErrs := make(chan error, 64)
	for _, tenant := range []string{"good1", "good2", "good3"} {
		c := get(t, f, be.Addr, clientconn.WithTenant(tenant))
		defer c.Close()
		client := testpb.NewTestServiceClient(c)
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
					var err error
					if i%10 == 9 {
						err = echoStream(ctx, client, 2)
					} else {
						_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{})
					}
					goodCalls.Add(1)
					if err != nil {
						select {
						case goodErrs <- err:
						default:
						}
						return
					}
				}
			}()
		}
	}
	bad := get(t, f, be.Addr, clientconn.WithTenant("bad"))
	defer bad.Close()
	badClient := testpb.NewTestServiceClient(bad)
	badCtx, badCancel := context.WithCancel(ctx)
	defer badCancel() // abandoned streams are released at the end only
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000 && time.Now().Before(deadline); i++ {
				switch (i + w) % 4 {
				case 0:
					_, _ = badClient.UnaryCall(misbehave(badCtx, "fail"), &testpb.SimpleRequest{})
				case 1:
					tctx, tcancel := context.WithTimeout(misbehave(badCtx, "hang"), 5*time.Millisecond)
					_, _ = badClient.UnaryCall(tctx, &testpb.SimpleRequest{})
					tcancel()
				case 2:
					_, _ = badClient.UnaryCall(misbehave(badCtx, "overload"), &testpb.SimpleRequest{})
				case 3:
					s, err := badClient.FullDuplexCall(badCtx)
					if err != nil {
						continue
					}
					_ = s.CloseSend() // the echo ends the stream; then abandon it unread
				}
			}
		}()
	}
	wg.Wait()
	close(goodErrs)
	for err := range goodErrs {
		t.Errorf("a well-behaved tenant saw %v", err)
	}
	if goodCalls.Load() < 50 {
		t.Errorf("well-behaved tenants made only %d calls", goodCalls.Load())
	}
	for _, l := range f.Policies().Limiters {
		if l.Tenant != "bad" && l.Limit < 8 {
			t.Errorf("well-behaved tenant's limiter %+v lowered", l)
		}
	}
}
