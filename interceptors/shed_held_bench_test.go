package interceptors_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// BenchmarkShedHeldMemory measures what the server's heap keeps after a
// flood of shed requests with 1-minute deadlines, per shed (after a GC,
// while the deadlines still run), in one run: grpc-go with a tap of its
// own that refuses every request (grpc-go never cancels the context of a
// request its tap refused, so its timer stays until the deadline), the
// Shedder's tap (which leaves requests to the interceptor past heldMost
// held answers) and its interceptor path. Report: held-B/shed, and held-MB in all.
//
//	go test -run '^$' -bench BenchmarkShedHeldMemory -benchtime 200000x -count 2 ./interceptors/
func BenchmarkShedHeldMemory(b *testing.B) {
	const deadline = time.Minute
	refuse := status.Error(codes.ResourceExhausted, "shed")
	for _, side := range []string{"grpc-go-tap", "tap", "interceptor"} {
		b.Run(side, func(b *testing.B) {
			var opts []grpc.ServerOption
			var shed *interceptors.Shedder
			release := make(chan struct{})
			defer close(release)
			switch side {
			case "grpc-go-tap":
				opts = []grpc.ServerOption{grpc.InTapHandle(func(ctx context.Context, _ *tap.Info) (context.Context, error) { return ctx, refuse })}
			default:
				shed = makeShedder(b, telemetry.Nop{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait, c.LogInterval = 1, 0, 0 })
				interceptors.SetShedderServiceTime(shed, "/grpc.testing.TestService/UnaryCall", time.Millisecond, 10)
				opts = shedPaths[0].opts(shed)
				if side == "interceptor" {
					opts = shedPaths[1].opts(shed)
				}
			}
			be := testutil.StartBackend(b, testutil.BackendOptions{ServerOptions: opts,
				Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
					select { // the only slot, held
					case <-release:
					case <-ctx.Done():
					}
					return &testpb.SimpleResponse{}, nil
				}})
			c := dial(b, be.Addr)
			if side != "grpc-go-tap" {
				go func() { _, _ = c.UnaryCall(context.Background(), &testpb.SimpleRequest{}) }()
				testutil.Eventually(b, 10*time.Second, func() bool { _, n := shed.InFlight(); return n == 1 }, "a call holds the only slot")
				deadline := time.Now().Add(10 * time.Second)
				for { // until calls are shed (the interceptor has seen the method)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
					cancel()
					if err != nil && strings.Contains(err.Error(), "in-flight limit") {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("calls are not shed: %v", err)
					}
				}
			}
			var m0, m1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&m0)
			b.ResetTimer()
			var next, wrong atomic.Int64
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						ctx, cancel := context.WithTimeout(context.Background(), deadline)
						_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
						cancel()
						if status.Code(err) != codes.ResourceExhausted {
							wrong.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&m1)
			if wrong.Load() > 0 {
				b.Fatalf("%d calls were not shed", wrong.Load())
			}
			heap := float64(int64(m1.HeapInuse) - int64(m0.HeapInuse))
			b.ReportMetric(heap/float64(b.N), "held-B/shed")
			b.ReportMetric(heap/1e6, "held-MB")
		})
	}
}
