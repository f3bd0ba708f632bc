package testutil

import (
	"context"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

func dial(t *testing.T, addr string) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

func call(c testpb.TestServiceClient, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

func TestProxyFaults(t *testing.T) {
	b := StartBackend(t, BackendOptions{})
	p := StartProxy(t, b.Addr)
	c := dial(t, p.Addr)
	if err := call(c, 5*time.Second); err != nil {
		t.Fatalf("call through proxy: %v", err)
	}

	p.SetLatency(50 * time.Millisecond)
	start := time.Now()
	if err := call(c, 5*time.Second); err != nil {
		t.Fatalf("call with latency: %v", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond { // request and response each delayed
		t.Errorf("call took %v with 50ms latency each way, want at least 100ms", d)
	}
	p.SetLatency(0)

	p.Blackhole(true)
	if err := call(c, 200*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("call into a blackhole: %v, want DeadlineExceeded", err)
	}
	p.Blackhole(false)

	// Reset every connection; with new ones refused the client cannot reconnect.
	p.Refuse(true)
	p.ResetAll()
	if err := call(c, 2*time.Second); status.Code(err) != codes.Unavailable {
		t.Errorf("call with connections reset and refused: %v, want Unavailable", err)
	}
	p.Refuse(false)
	Eventually(t, 10*time.Second, func() bool { return call(c, time.Second) == nil }, "calls work again after the faults clear")
}

func TestFaultsInterceptor(t *testing.T) {
	var f Faults
	b := StartBackend(t, BackendOptions{ServerOptions: f.ServerOptions()})
	c := dial(t, b.Addr)
	f.FailEvery(2, codes.Unavailable)
	var failed int
	for i := 0; i < 10; i++ {
		if err := call(c, 5*time.Second); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("injected failure has code %v", status.Code(err))
			}
			failed++
		}
	}
	if failed != 5 {
		t.Errorf("FailEvery(2): %d of 10 calls failed, want 5", failed)
	}
	f.FailEvery(0, codes.OK)
	f.SetDelay(time.Second)
	if err := call(c, 100*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("delayed call past its deadline: %v, want DeadlineExceeded", err)
	}
}
