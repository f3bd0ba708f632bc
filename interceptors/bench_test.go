package interceptors_test

import (
	"context"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
)

type benchServer struct {
	testpb.UnimplementedTestServiceServer
	unary func(ctx context.Context) error
}

func (s *benchServer) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s.unary != nil {
		if err := s.unary(ctx); err != nil {
			return nil, err
		}
	}
	return &testpb.SimpleResponse{}, nil
}

// bufServer serves a benchServer over bufconn and returns a dialer option.
func bufServer(b *testing.B, s *benchServer, sopts ...grpc.ServerOption) grpc.DialOption {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(sopts...)
	testpb.RegisterTestServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	b.Cleanup(srv.Stop)
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
}

func bufClient(b *testing.B, dialer grpc.DialOption, opts ...grpc.DialOption) testpb.TestServiceClient {
	cc, err := grpc.NewClient("passthrough:///bench", append([]grpc.DialOption{dialer, grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

func fullChain(b *testing.B) []grpc.DialOption {
	reg, err := breaker.New()
	if err != nil {
		b.Fatal(err)
	}
	lim, err := interceptors.NewLimiter()
	if err != nil {
		b.Fatal(err)
	}
	c, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		b.Fatal(err)
	}
	return c.DialOptions()
}

// BenchmarkUnaryCall compares a unary call over bufconn with no
// interceptors and through the full client chain (breaker + limiter).
func BenchmarkUnaryCall(b *testing.B) {
	for _, bc := range []struct {
		name  string
		chain bool
	}{{"none", false}, {"chain", true}} {
		b.Run(bc.name, func(b *testing.B) {
			dialer := bufServer(b, &benchServer{})
			var opts []grpc.DialOption
			if bc.chain {
				opts = fullChain(b)
			}
			c := bufClient(b, dialer, opts...)
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

// BenchmarkInterceptorPass measures the chain alone, around an invoker
// that does nothing: the exact time and allocations the chain adds.
func BenchmarkInterceptorPass(b *testing.B) {
	cc, err := grpc.NewClient("passthrough:///bench", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	reg, err := breaker.New()
	if err != nil {
		b.Fatal(err)
	}
	lim, err := interceptors.NewLimiter()
	if err != nil {
		b.Fatal(err)
	}
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		b.Fatal(err)
	}
	unary := chain.UnaryClientInterceptor()
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	call := func(ctx context.Context, method string) error { return unary(ctx, method, nil, nil, cc, invoker) }
	ctx := context.Background()
	const method = "/grpc.testing.TestService/UnaryCall"
	b.Run("breaker+limiter", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := call(ctx, method); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The same chain built from a JSON policy, so each call is also routed
	// by gRPC's methodConfig rules (a service entry and a default here).
	_, policy, err := interceptors.SplitServiceConfig(`{"grpcreuse":{"methodConfig":[
		{"name":[{"service":"other.Service"}],"circuitBreaker":{}},
		{"name":[{}],"circuitBreaker":{},"concurrencyLimit":{}}]}}`)
	if err != nil {
		b.Fatal(err)
	}
	pc, err := interceptors.NewClientChain(interceptors.WithPolicy(policy))
	if err != nil {
		b.Fatal(err)
	}
	pu := pc.UnaryClientInterceptor()
	b.Run("policy breaker+limiter", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := pu(ctx, method, nil, nil, cc, invoker); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("breaker+limiter/parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call(ctx, method); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkOpenBreaker compares the latency a caller sees from a failing
// backend without a breaker with the fail-fast of an open breaker.
func BenchmarkOpenBreaker(b *testing.B) {
	for _, bc := range []struct {
		name  string
		chain bool
	}{{"none", false}, {"open-breaker", true}} {
		b.Run(bc.name, func(b *testing.B) {
			dialer := bufServer(b, &benchServer{unary: func(context.Context) error { return status.Error(codes.Unavailable, "down") }})
			var opts []grpc.DialOption
			if bc.chain {
				c := breaker.DefaultConfig()
				c.ConsecutiveFailures, c.OpenTimeout = 1, time.Hour
				reg, err := breaker.New(breaker.WithConfig(c))
				if err != nil {
					b.Fatal(err)
				}
				opts = []grpc.DialOption{grpc.WithUnaryInterceptor(interceptors.BreakerUnaryClientInterceptor(reg))}
			}
			c := bufClient(b, dialer, opts...)
			ctx := context.Background()
			req := &testpb.SimpleRequest{}
			_, _ = c.UnaryCall(ctx, req)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.UnaryCall(ctx, req); status.Code(err) != codes.Unavailable {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOverload drives a server that can do 4 calls at once, 2ms each,
// with 16 closed-loop callers (4×) whose deadline is 5ms, with and without
// the Shedder (in-flight limit 4). Without shedding every call queues for
// the server's capacity and most miss their deadline after using it;
// with shedding the excess is refused at once. Reported: goodput (OK
// calls/s), p99 latency of the calls that succeeded, and the share of
// calls that succeeded.
func BenchmarkOverload(b *testing.B) {
	const capacity, callers = 4, 16
	const work, deadline, backoff = 2 * time.Millisecond, 5 * time.Millisecond, time.Millisecond
	for _, shed := range []bool{false, true} {
		name := "no-shedding"
		if shed {
			name = "shedding"
		}
		b.Run(name, func(b *testing.B) {
			cpu := make(chan struct{}, capacity)
			s := &benchServer{unary: func(context.Context) error {
				cpu <- struct{}{} // wait for capacity, as a busy server does
				t := time.NewTimer(work)
				<-t.C // the work, done whether or not the caller still waits
				<-cpu
				return nil
			}}
			var sopts []grpc.ServerOption
			if shed {
				cfg := interceptors.DefaultShedderConfig()
				cfg.Limit = capacity
				sh, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
				if err != nil {
					b.Fatal(err)
				}
				sopts = append(sopts, grpc.UnaryInterceptor(sh.UnaryServerInterceptor()))
			}
			c := bufClient(b, bufServer(b, s, sopts...))
			var ok atomic.Int64
			var mu sync.Mutex
			var lat []time.Duration
			b.SetParallelism((callers + 1) / 2)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					ctx, cancel := context.WithTimeout(context.Background(), deadline)
					t0 := time.Now()
					_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
					d := time.Since(t0)
					cancel()
					if err == nil {
						ok.Add(1)
						mine = append(mine, d)
						continue
					}
					t := time.NewTimer(backoff) // the caller backs off after a failure
					<-t.C
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.ReportMetric(float64(ok.Load())/elapsed.Seconds(), "goodput/s")
			b.ReportMetric(float64(ok.Load())/float64(b.N)*100, "ok%")
			if len(lat) > 0 {
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
