package interceptors_test

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

const shedCPUEnv = "GRPCREUSE_SHED_CPU_SERVER"

// TestShedCPUServer is the server half of BenchmarkShedCPU, run by it in a
// child process so that the CPU it reports is the server's alone. It
// serves with a Shedder of limit 1 whose one slot a blocked call holds,
// prints "addr ADDR", answers each "cpu" line on stdin with "cpu NS" (its
// user+system CPU time) and stops when stdin closes.
func TestShedCPUServer(t *testing.T) {
	mode := os.Getenv(shedCPUEnv)
	if mode == "" {
		t.Skip("the server half of BenchmarkShedCPU")
	}
	shed := makeShedder(t, telemetry.Nop{}, func(c *interceptors.ShedderConfig) { c.Limit, c.LogInterval = 1, 0 })
	path, withOTel := strings.CutSuffix(mode, "+otel")
	opts := shedPaths[0].opts(shed)
	switch path {
	case "interceptor":
		opts = shedPaths[1].opts(shed)
	case "tap-details":
		// Every answer of the tap carries its details, as the interceptor
		// path's do: what the budget of tapDetailsPerSecond saves.
		interceptors.SetShedderTapDetails(shed, math.MaxUint64)
	case "tap-waiting":
		// A measured method (2 ms): at the limit one request at a time
		// waits its 2 ms for a slot that never frees, then is shed by the
		// interceptor; the others are shed by the tap.
		interceptors.SetShedderServiceTime(shed, unaryMethod, 2*time.Millisecond, 100)
	}
	if withOTel {
		// grpc-go's own OpenTelemetry metrics, as a production server has
		// them: a stats handler and interceptors that see every stream the
		// tap let through.
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		opts = append(opts, grpcotel.ServerOption(grpcotel.Options{MetricsOptions: grpcotel.MetricsOptions{MeterProvider: mp}}))
	}
	release := make(chan struct{})
	be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: opts,
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return &testpb.SimpleResponse{}, nil
		}})
	defer close(release)
	fmt.Printf("addr %s\n", be.Addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "inflight" {
			_, n := shed.InFlight()
			fmt.Printf("inflight %d\n", n)
			continue
		}
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("cpu %d\n", ru.Utime.Nano()+ru.Stime.Nano())
	}
}

// BenchmarkShedCPU measures the server's CPU time per shed call on the
// tap path and on the interceptor path, in one run: the server runs in a
// child process, one call holds its only slot, and the benchmark's callers
// (8 at a time over loopback; 64 on the ",64-callers" sides) are all shed;
// their requests are empty (1 KiB on the ",1KiB-requests" sides). The method's service time is
// not measured, so no request waits for a slot (MaxWait), except on
// "tap-waiting", where it is (2 ms): there one request at a time waits,
// and is shed by the interceptor after its wait. On "tap-details" every
// answer of the tap carries its status details, as the interceptor's do;
// on "tap" only the first 1,000 a second do (tapDetailsPerSecond). The "+otel" sides add
// grpc-go's OpenTelemetry metrics (stats/opentelemetry) to the server, as
// a production server has them: they see every stream the tap let
// through, and none it shed. Report: server-cpu-ns/shed.
//
//	go test -run '^$' -bench BenchmarkShedCPU -benchtime 20000x -count 3 ./interceptors/
func BenchmarkShedCPU(b *testing.B) {
	for _, side := range []string{"tap", "tap-details", "tap-waiting", "tap-retries", "interceptor", "tap+otel", "interceptor+otel",
		"tap,64-callers", "interceptor,64-callers", "tap,1KiB-requests", "interceptor,1KiB-requests"} {
		// 8 callers, or 64 (",64-callers"): more requests per read and
		// write, so grpc-go's per-syscall cost, which both paths pay,
		// weighs less beside what the interceptor path adds. Requests are
		// empty, or carry 1 KiB (",1KiB-requests"): the tap never decodes
		// a request, the interceptor path does before the Shedder sees it.
		mode, many := strings.CutSuffix(side, ",64-callers")
		mode, sized := strings.CutSuffix(mode, ",1KiB-requests")
		callers := 8
		if many {
			callers = 64
		}
		req := &testpb.SimpleRequest{}
		if sized {
			req.Payload = &testpb.Payload{Body: make([]byte, 1024)}
		}
		b.Run(side, func(b *testing.B) {
			args := []string{"-test.run=^TestShedCPUServer$", "-test.count=1"}
			if dir := os.Getenv("GRPCREUSE_SHED_CPU_PROFILE_DIR"); dir != "" { // pprof the server
				args = append(args, "-test.cpuprofile="+dir+"/"+mode+".pprof")
			}
			srv := startChild(b, shedCPUEnv+"="+mode, os.Args[0], args...)
			defer srv.close()
			addr := srv.read("addr")
			cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			c := testpb.NewTestServiceClient(cc)
			// One call takes the only slot and holds it. No other call is
			// made until the server says a call holds it: a probe made
			// earlier could take the slot itself (its handler ends only when
			// its deadline does), free it after the probes stopped, and let
			// a measured call, which has no deadline, take it for good.
			hold, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = unary(hold, c) }()
			inflight := func() int64 {
				n, err := strconv.ParseInt(srv.ask("inflight"), 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				return n
			}
			deadline := time.Now().Add(10 * time.Second)
			for inflight() != 1 {
				if time.Now().After(deadline) {
					b.Fatal("the holding call does not hold the slot")
				}
				time.Sleep(time.Millisecond) // polling the child, not synchronising with it
			}
			for { // until calls are shed (the method is known to the tap)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := unary(ctx, c)
				cancel()
				if err != nil && strings.Contains(err.Error(), "in-flight limit") {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("calls are not shed: %v", err)
				}
			}
			cpu := func() int64 {
				n, err := strconv.ParseInt(srv.ask("cpu"), 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				return n
			}
			callCtx := context.Background()
			if mode == "tap-retries" { // every request claims to be a retry attempt
				callCtx = metadata.AppendToOutgoingContext(callCtx, "grpc-previous-rpc-attempts", "1")
			}
			var next atomic.Int64
			var wrong atomic.Int64
			b.ResetTimer()
			cpu0 := cpu()
			var wg sync.WaitGroup
			for range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := c.UnaryCall(callCtx, req); err == nil || !strings.Contains(status.Convert(err).Message(), "in-flight limit") {
							wrong.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			cpu1 := cpu()
			b.StopTimer()
			if wrong.Load() > 0 {
				b.Fatalf("%d calls were not shed", wrong.Load())
			}
			b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "server-cpu-ns/shed")
		})
	}
}

// BenchmarkShedRetryAmplification measures, in one run, how many attempts
// grpc-go clients with a retry policy (5 attempts, 5 ms initial backoff,
// ResourceExhausted retryable) make per logical call against a shedding
// server (4 slots, 2 ms work, 16 closed-loop callers for 1 s): with the
// grpc-retry-pushback-ms trailer (interceptor path, Pushback 20ms),
// without it (interceptor path, Pushback 0), and on the tap path: with
// Pushback 20ms (first attempts shed by the tap with RetryInfo only, which
// grpc-go does not read; retry attempts passed to the interceptor, whose
// shed carries the trailer) and with Pushback 0 (every shed by the tap).
//
//	go test -run '^$' -bench BenchmarkShedRetryAmplification -benchtime 1x -count 3 ./interceptors/
func BenchmarkShedRetryAmplification(b *testing.B) {
	const slots, callers, work, run = 4, 16, 2 * time.Millisecond, time.Second
	const sc = `{"methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],"retryPolicy":{
		"maxAttempts":5,"initialBackoff":"0.005s","maxBackoff":"0.05s","backoffMultiplier":2,
		"retryableStatusCodes":["RESOURCE_EXHAUSTED"]}}]}`
	for _, side := range []struct {
		name     string
		pushback time.Duration
		path     int
	}{
		{"interceptor/pushback-20ms", 20 * time.Millisecond, 1},
		{"interceptor/no-pushback", 0, 1},
		{"tap/pushback-20ms-on-retries", 20 * time.Millisecond, 0},
		{"tap/no-pushback", 0, 0},
	} {
		b.Run(side.name, func(b *testing.B) {
			var attemptsPerCall, okPerSec float64
			for range b.N {
				shed := makeShedder(b, telemetry.Nop{}, func(c *interceptors.ShedderConfig) {
					c.Limit, c.Pushback, c.LogInterval = slots, side.pushback, 0
				})
				cpu := make(chan struct{}, slots)
				var handled atomic.Int64
				be := testutil.StartBackend(b, testutil.BackendOptions{ServerOptions: shedPaths[side.path].opts(shed),
					Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
						handled.Add(1)
						cpu <- struct{}{}
						t := time.NewTimer(work)
						<-t.C
						<-cpu
						return &testpb.SimpleResponse{}, nil
					}})
				c := dial(b, be.Addr, grpc.WithDefaultServiceConfig(sc))
				if err := unary(context.Background(), c); err != nil {
					b.Fatal(err)
				}
				h0, s0 := handled.Load(), shedTotal(shed)
				var calls, oks atomic.Int64
				var wg sync.WaitGroup
				stop := time.Now().Add(run)
				for range callers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for time.Now().Before(stop) {
							ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
							err := unary(ctx, c)
							cancel()
							calls.Add(1)
							if err == nil {
								oks.Add(1)
							}
						}
					}()
				}
				wg.Wait()
				attempts := handled.Load() - h0 + shedTotal(shed) - s0
				attemptsPerCall += float64(attempts) / float64(calls.Load())
				okPerSec += float64(oks.Load()) / run.Seconds()
			}
			b.ReportMetric(attemptsPerCall/float64(b.N), "attempts/call")
			b.ReportMetric(okPerSec/float64(b.N), "ok/s")
		})
	}
}

func shedTotal(s *interceptors.Shedder) int64 {
	var n int64
	for _, v := range s.Snapshot().Shed {
		n += v
	}
	return n
}

// BenchmarkShedderAdmitted is the cost of the Shedder on calls it admits,
// next to a server without it, in one run (bufconn, one caller): what
// each path adds per call in time and allocations.
//
//	go test -run '^$' -bench BenchmarkShedderAdmitted -benchmem -count 3 ./interceptors/
func BenchmarkShedderAdmitted(b *testing.B) {
	for _, side := range []struct {
		name string
		opts func(*interceptors.Shedder) []grpc.ServerOption
	}{
		{"none", func(*interceptors.Shedder) []grpc.ServerOption { return nil }},
		{"tap", shedPaths[0].opts},
		{"interceptor", shedPaths[1].opts},
	} {
		b.Run(side.name, func(b *testing.B) {
			shed := makeShedder(b, telemetry.Nop{}, nil)
			c := bufClient(b, bufServer(b, &benchServer{}, side.opts(shed)...))
			ctx := context.Background()
			req := &testpb.SimpleRequest{}
			if _, err := c.UnaryCall(ctx, req); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
