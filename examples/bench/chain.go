package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/test/bufconn"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
)

// runChain measures what the toolkit's recommended client chain (breaker,
// then limiter) adds to a successful unary call, over bufconn so the
// network does not drown it: sequential calls without interceptors and
// through the chain, time and heap allocations (runtime.MemStats.Mallocs,
// whole process, server side included, so the difference is the chain's).
// It also times the chain alone around an invoker that does nothing, the
// exact cost, which one call's noise on a shared machine would hide.
func runChain(ctx context.Context, e *env) (*result, error) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	b := &backend{done: make(chan struct{})}
	testpb.RegisterTestServiceServer(srv, &testService{b: b})
	go func() {
		defer close(b.done)
		_ = srv.Serve(lis)
	}()
	defer func() { srv.Stop(); <-b.done }()
	dial := func(opts ...grpc.DialOption) (*grpc.ClientConn, error) {
		return grpc.NewClient("passthrough:///bench", append([]grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		}, opts...)...)
	}
	newChain := func() (grpc.UnaryClientInterceptor, error) {
		reg, err := breaker.New()
		if err != nil {
			return nil, err
		}
		lim, err := interceptors.NewLimiter()
		if err != nil {
			return nil, err
		}
		c, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
		if err != nil {
			return nil, err
		}
		return c.UnaryClientInterceptor(), nil
	}
	none, err := dial()
	if err != nil {
		return nil, err
	}
	defer none.Close()
	chain, err := newChain()
	if err != nil {
		return nil, err
	}
	with, err := dial(grpc.WithChainUnaryInterceptor(chain))
	if err != nil {
		return nil, err
	}
	defer with.Close()

	calls := func(cc *grpc.ClientConn) func(context.Context) (sample, error) {
		client := testpb.NewTestServiceClient(cc)
		req := &testpb.SimpleRequest{}
		return func(ctx context.Context) (sample, error) {
			cctx, cancel := context.WithTimeout(ctx, e.maxDrive)
			defer cancel()
			for range 100 { // warm
				if _, err := client.UnaryCall(cctx, req); err != nil {
					return sample{}, err
				}
			}
			lat := make([]time.Duration, 0, e.chainCalls)
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			start := time.Now()
			for range e.chainCalls {
				t0 := time.Now()
				if _, err := client.UnaryCall(cctx, req); err != nil {
					return sample{}, err
				}
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			runtime.ReadMemStats(&m1)
			n := float64(len(lat))
			return sample{lat: lat, m: map[string]float64{
				"ns":     float64(elapsed.Nanoseconds()) / n,
				"allocs": float64(m1.Mallocs-m0.Mallocs) / n,
			}}, nil
		}
	}

	// The chain alone: grpc chains interceptors outermost first.
	alone, err := newChain()
	if err != nil {
		return nil, err
	}
	noop := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	invoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
		return alone(ctx, method, req, reply, cc, noop, opts...)
	}
	pass := func(ctx context.Context) (sample, error) {
		const method = "/grpc.testing.TestService/UnaryCall"
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		start := time.Now()
		for range e.chainPasses {
			if err := invoker(ctx, method, nil, nil, none); err != nil {
				return sample{}, err
			}
		}
		elapsed := time.Since(start)
		runtime.ReadMemStats(&m1)
		n := float64(e.chainPasses)
		return sample{m: map[string]float64{
			"ns":     float64(elapsed.Nanoseconds()) / n,
			"allocs": float64(m1.Mallocs-m0.Mallocs) / n,
		}}, nil
	}
	sides := []side{
		{name: "no interceptors", measure: calls(none)},
		{name: "breaker + limiter chain", toolkit: true, measure: calls(with)},
		{name: "chain alone", toolkit: true, measure: pass},
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	const title = "5. Interceptor chain (bufconn, sequential unary calls)"
	nsP, nsT := res.median(sides[0].name, "ns"), res.median(sides[1].name, "ns")
	alP, alT := res.median(sides[0].name, "allocs"), res.median(sides[1].name, "allocs")
	nsA, alA := res.median(sides[2].name, "ns"), res.median(sides[2].name, "allocs")
	addedAllocs := alT - alP
	return &result{
		rows: []row{
			{title, "unary call: time, heap allocations per call",
				fmt.Sprintf("%s, %.1f allocs", fmtUS(nsP/1000), alP), fmt.Sprintf("%s, %.1f allocs", fmtUS(nsT/1000), alT),
				fmt.Sprintf("%+.2f µs (%s), %+.1f allocs", (nsT-nsP)/1000, fmtX(ratio(nsT, nsP)), addedAllocs),
				"≤ 2 allocations added per call (rounded)", verdict(math.Round(addedAllocs) <= 2, fmt.Sprintf("%+.1f allocs", addedAllocs))},
			{title, "the chain alone, no-op invoker: time, allocations per pass",
				"—", fmt.Sprintf("%.0f ns, %.1f allocs", nsA, alA), "—",
				"≤ 1 µs added per call", verdict(nsA <= 1000, fmt.Sprintf("%.0f ns", nsA))},
		},
		dists: distsOf("chain (bufconn unary)", res, sides[:2]),
	}, nil
}
