package clientconn_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// RetryServiceConfig is the retry policy the README recommends for
// idempotent methods.
const retryServiceConfig = `{"methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],
  "retryPolicy":{"maxAttempts":5,"initialBackoff":"0.05s","maxBackoff":"0.5s","backoffMultiplier":2,
  "retryableStatusCodes":["UNAVAILABLE"]}}]}`

// load runs workers that call c until stop closes, and returns the errors
// they saw (nil entries are not kept) and how many calls they made.
func load(c grpc.ClientConnInterface, workers int, stop <-chan struct{}) (wait func() ([]error, int64)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		calls atomic.Int64
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := testpb.NewTestServiceClient(c)
			for i := 0; i < 100000; i++ { // bounded; stop ends it long before
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
				cancel()
				calls.Add(1)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	return func() ([]error, int64) {
		wg.Wait()
		return errs, calls.Load()
	}
}

// TestBackendRestartUnderLoad kills a backend (no graceful stop) and
// starts it again on the same port while 4 workers call it.
func TestBackendRestartUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name          string
		serviceConfig string
		maxFailures   int
	}{
		// With the recommended retry policy no call fails.
		{name: "retries", serviceConfig: retryServiceConfig, maxFailures: 0},
		// Without, only calls in flight at the kill fail (at most one per
		// worker); calls made while it is down wait for it (waitForReady).
		{name: "no retries", serviceConfig: `{"methodConfig":[{"name":[{}],"waitForReady":true}]}`, maxFailures: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slow := func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				time.Sleep(2 * time.Millisecond) // keep calls in flight when the kill comes
				return &testpb.SimpleResponse{}, nil
			}
			b := testutil.StartBackend(t, testutil.BackendOptions{Unary: slow})
			f := newFactory(t, clientconn.WithServiceConfig(tc.serviceConfig))
			c := get(t, f, b.Addr)
			defer c.Close()
			mustUnary(t, c)

			stop := make(chan struct{})
			wait := load(c, 4, stop)
			testutil.Eventually(t, 10*time.Second, func() bool { return b.Calls.Load() > 50 }, "steady load")
			b.Server.Stop() // hard kill: in-flight calls see their connection die
			b2 := testutil.StartBackend(t, testutil.BackendOptions{Addr: b.Addr, Unary: slow})
			testutil.Eventually(t, 10*time.Second, func() bool { return b2.Calls.Load() > 50 }, "load on the restarted backend")
			close(stop)
			errs, calls := wait()
			for _, err := range errs {
				if status.Code(err) != codes.Unavailable {
					t.Errorf("failed call has code %v (%v), want Unavailable", status.Code(err), err)
				}
			}
			if len(errs) > tc.maxFailures {
				t.Errorf("%d of %d calls failed across the restart, want at most %d: %v", len(errs), calls, tc.maxFailures, errs)
			}
			t.Logf("%d calls, %d failed", calls, len(errs))
		})
	}
}

// TestServerMaxConnectionAgeUnderLoad: the server ends every connection
// after 1s (with grace) while calls flow for 10s; no call may fail.
func TestServerMaxConnectionAgeUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("10s of load")
	}
	t.Parallel()
	b := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: time.Second, MaxConnectionAgeGrace: 5 * time.Second}),
	}})
	f := newFactory(t)
	c := get(t, f, b.Addr)
	defer c.Close()
	stop := make(chan struct{})
	wait := load(c, 4, stop)
	time.Sleep(10 * time.Second) // the scenario's length, not synchronisation
	close(stop)
	errs, calls := wait()
	if len(errs) > 0 {
		t.Errorf("%d of %d calls failed across server max-age GOAWAYs: %v", len(errs), calls, errs[0])
	}
	if got := b.Listener.Accepts(); got < 5 {
		t.Errorf("server accepted %d connections in 10s with a 1s max age, want at least 5", got)
	}
	t.Logf("%d calls over %d connections, none failed", calls, b.Listener.Accepts())
}

// TestCloseDuringTraffic closes handles and then the Factory while unary
// calls and streams run: each call finishes or fails with a clear error,
// nothing panics, nothing leaks (leakcheck in TestMain).
func TestCloseDuringTraffic(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := mustNew(t, plaintext, clientconn.WithDrainTimeout(2*time.Second))
	conns := []*clientconn.Conn{get(t, f, b.Addr), get(t, f, b.Addr), get(t, f, b.Addr)}
	stop := make(chan struct{})
	var waits []func() ([]error, int64)
	for _, c := range conns {
		waits = append(waits, load(c, 2, stop))
	}
	// A stream that keeps echoing across the closes.
	stream, err := testpb.NewTestServiceClient(conns[0]).FullDuplexCall(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	streamErr := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if err := stream.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
				streamErr <- err
				return
			}
			if _, err := stream.Recv(); err != nil {
				streamErr <- err
				return
			}
			if i == 200 {
				streamErr <- stream.CloseSend()
				return
			}
		}
	}()
	testutil.Eventually(t, 10*time.Second, func() bool { return b.Calls.Load() > 100 }, "traffic")
	conns[1].Close()
	conns[2].Close()
	f.Close()
	close(stop)
	clear := func(err error) bool {
		return errors.Is(err, clientconn.ErrClosed) || status.Code(err) == codes.Canceled
	}
	for _, w := range waits {
		errs, _ := w()
		for _, err := range errs {
			if !clear(err) {
				t.Errorf("call failed with %v; want success or Canceled", err)
			}
		}
	}
	if err := <-streamErr; err != nil && err != io.EOF && !clear(err) {
		t.Errorf("stream ended with %v; want OK or Canceled", err)
	}
}
