// Command demo shows what sharing connections buys: several logical
// services of one process call the same loopback backends, first each
// with its own grpc.NewClient per backend (what services do on their own),
// then through one grpcreuse Factory. The backends count the TCP
// connections they accept.
//
//	go run ./examples/demo
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/grpcreuse/grpcreuse/clientconn"
)

func main() {
	services := flag.Int("services", 6, "logical services in the process")
	backends := flag.Int("backends", 3, "loopback backends every service calls")
	calls := flag.Int("calls", 20, "calls per service per backend")
	flag.Parse()
	if *services < 1 || *backends < 1 || *calls < 1 {
		log.Fatalf("demo: -services, -backends and -calls must be at least 1 (got %d, %d, %d)", *services, *backends, *calls)
	}
	if err := run(*services, *backends, *calls); err != nil {
		log.Fatalf("demo: %v", err)
	}
}

// countingListener counts accepted TCP connections: the server's view of
// what clients opened.
type countingListener struct {
	net.Listener
	accepts *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

type result struct {
	conns int64
	wall  time.Duration
	calls int
}

func run(services, backends, calls int) error {
	var accepts atomic.Int64
	addrs := make([]string, backends)
	for i := range addrs {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(countingListener{lis, &accepts})
		defer srv.Stop()
		addrs[i] = lis.Addr().String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fmt.Printf("grpcreuse demo: %d services × %d loopback backends, %d health checks each\n\n", services, backends, calls)

	// measure runs every service against every backend with dial, and
	// reports what the backends saw.
	measure := func(dial func(string) (grpc.ClientConnInterface, func(), error)) (result, error) {
		before := accepts.Load()
		start := time.Now()
		var closers []func()
		defer func() {
			for _, c := range closers {
				c()
			}
		}()
		n := 0
		for s := 0; s < services; s++ {
			for _, addr := range addrs {
				cc, closeFn, err := dial(addr)
				if err != nil {
					return result{}, err
				}
				closers = append(closers, closeFn)
				client := healthpb.NewHealthClient(cc)
				for c := 0; c < calls; c++ {
					if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
						return result{}, fmt.Errorf("service %d → %s: %w", s, addr, err)
					}
					n++
				}
			}
		}
		return result{conns: accepts.Load() - before, wall: time.Since(start), calls: n}, nil
	}

	plain, err := measure(func(addr string) (grpc.ClientConnInterface, func(), error) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		return cc, func() { cc.Close() }, nil
	})
	if err != nil {
		return err
	}

	f := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()))
	defer f.Close()
	pooled, err := measure(func(addr string) (grpc.ClientConnInterface, func(), error) {
		c, err := f.Get(ctx, addr)
		if err != nil {
			return nil, nil, err
		}
		return c, func() { c.Close() }, nil
	})
	if err != nil {
		return err
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "\tconnections opened\tcalls\twall time\t")
	fmt.Fprintf(w, "grpc.NewClient per service per backend\t%d\t%d\t%v\t\n", plain.conns, plain.calls, plain.wall.Round(time.Millisecond))
	fmt.Fprintf(w, "one grpcreuse Factory\t%d\t%d\t%v\t\n", pooled.conns, pooled.calls, pooled.wall.Round(time.Millisecond))
	w.Flush()
	st := f.Stats()
	fmt.Printf("\nThe Factory shared %d connections among %d service handles (%d hits, %d misses): %d fewer connections.\n",
		st.Misses, services*backends, st.Hits, st.Misses, plain.conns-pooled.conns)
	fmt.Println("Coming next: TLS session resumption, the grpcreuse balancer, breakers and limiters (see README).")
	return nil
}
