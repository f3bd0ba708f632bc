package clientconn_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// BenchmarkGetHit measures Get+Close of a live key: the cost a service
// pays to take a handle on a shared connection.
func BenchmarkGetHit(b *testing.B) {
	backend := testutil.StartBackend(b, testutil.BackendOptions{})
	f := mustNew(b, clientconn.WithTransportCredentials(insecure.NewCredentials()))
	defer f.Close()
	ctx := context.Background()
	keep, err := f.Get(ctx, backend.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer keep.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := f.Get(ctx, backend.Addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkServices runs N services × M unary calls to each of 3 backends,
// side by side: one grpc.NewClient per service per backend (what services
// do on their own) and one shared Factory. Compare ns/op between the two
// sub-benchmarks of one run; conns/op is connections the backends accepted.
func BenchmarkServices(b *testing.B) {
	const services, backends, calls = 8, 3, 10
	servers := make([]*testutil.Backend, backends)
	for i := range servers {
		servers[i] = testutil.StartBackend(b, testutil.BackendOptions{})
	}
	accepts := func() (n int64) {
		for _, s := range servers {
			n += s.Listener.Accepts()
		}
		return n
	}
	ctx := context.Background()
	work := func(b *testing.B, dial func(string) (grpc.ClientConnInterface, func())) {
		before := accepts()
		for i := 0; i < b.N; i++ {
			var closers []func()
			for s := 0; s < services; s++ {
				for _, srv := range servers {
					cc, closeFn := dial(srv.Addr)
					closers = append(closers, closeFn)
					for c := 0; c < calls; c++ {
						if err := unary(ctx, cc); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			for _, c := range closers {
				c()
			}
		}
		b.ReportMetric(float64(accepts()-before)/float64(b.N), "conns/op")
	}
	name := fmt.Sprintf("%dsvc×%dbackends×%dcalls", services, backends, calls)
	b.Run(name+"/plain-grpc", func(b *testing.B) {
		work(b, func(target string) (grpc.ClientConnInterface, func()) {
			cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			return cc, func() { cc.Close() }
		})
	})
	b.Run(name+"/factory", func(b *testing.B) {
		// One Factory per process lifetime, as in production: it outlives
		// the services' handles, so each iteration models a wave of
		// services starting, calling and stopping.
		f := mustNew(b, clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithMaxIdle(backends))
		defer f.Close()
		work(b, func(target string) (grpc.ClientConnInterface, func()) {
			c, err := f.Get(ctx, target)
			if err != nil {
				b.Fatal(err)
			}
			return c, func() { c.Close() }
		})
	})
}
