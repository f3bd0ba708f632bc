// Command demo shows what grpcreuse saves. Several logical services of one
// process call the same TLS backends on loopback, three ways:
//
//  1. each service with its own grpc.NewClient per backend, as services
//     do on their own;
//  2. all services through one grpcreuse Factory;
//  3. a reconnect storm: every connection is dropped and made again
//     through a new Factory sharing the first one's TLS session cache.
//
// The backends count TCP connections and full vs resumed TLS handshakes
// on their side.
//
//	go run ./examples/demo
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"os"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/grpcreuse/grpcreuse/clientconn"
	grcreds "github.com/grpcreuse/grpcreuse/credentials"
)

func main() {
	services := flag.Int("services", 6, "logical services in the process")
	backends := flag.Int("backends", 3, "loopback TLS backends every service calls")
	calls := flag.Int("calls", 20, "health checks per service per backend")
	flag.Parse()
	if *services < 1 || *backends < 1 || *calls < 1 {
		log.Fatalf("demo: -services, -backends and -calls must be at least 1 (got %d, %d, %d)", *services, *backends, *calls)
	}
	if err := run(*services, *backends, *calls); err != nil {
		log.Fatalf("demo: %v", err)
	}
}

// row is one way of running the services, as the backends saw it.
type row struct {
	name                   string
	accepts, full, resumed int64
	calls                  int
	wall                   time.Duration
}

func run(services, backends, calls int) error {
	cert, pool, err := selfSigned()
	if err != nil {
		return err
	}
	view := &serverView{}
	addrs, stop, err := startBackends(backends, cert, view)
	if err != nil {
		return err
	}
	defer stop()
	clientTLS := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fmt.Printf("grpcreuse demo: %d services × %d TLS backends on 127.0.0.1, %d health checks each\n\n", services, backends, calls)

	// measure runs every service against every backend through dial.
	measure := func(name string, dial func(string) (grpc.ClientConnInterface, func(), error)) (row, error) {
		a0, f0, r0 := view.snapshot()
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
					return row{}, err
				}
				closers = append(closers, closeFn)
				client := healthpb.NewHealthClient(cc)
				for c := 0; c < calls; c++ {
					if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
						return row{}, fmt.Errorf("%s: service %d → %s: %w", name, s, addr, err)
					}
					n++
				}
			}
		}
		a, f, r := view.snapshot()
		return row{name: name, accepts: a - a0, full: f - f0, resumed: r - r0, calls: n, wall: time.Since(start)}, nil
	}
	factoryDial := func(f *clientconn.Factory) func(string) (grpc.ClientConnInterface, func(), error) {
		return func(addr string) (grpc.ClientConnInterface, func(), error) {
			c, err := f.Get(ctx, addr)
			if err != nil {
				return nil, nil, err
			}
			return c, func() { c.Close() }, nil
		}
	}

	plain, err := measure("grpc.NewClient per service per backend", func(addr string) (grpc.ClientConnInterface, func(), error) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
		if err != nil {
			return nil, nil, err
		}
		return cc, func() { cc.Close() }, nil
	})
	if err != nil {
		return err
	}

	sessions, err := grcreds.NewSessionCache()
	if err != nil {
		return err
	}
	f1 := clientconn.New(clientconn.WithTLS(clientTLS), clientconn.WithSessionCache(sessions))
	shared, err := measure("one grpcreuse Factory", factoryDial(f1))
	f1.Close() // drops every connection: the storm below reconnects
	if err != nil {
		return err
	}

	f2 := clientconn.New(clientconn.WithTLS(clientTLS), clientconn.WithSessionCache(sessions))
	defer f2.Close()
	storm, err := measure("reconnect storm, same session cache", factoryDial(f2))
	if err != nil {
		return err
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\tconnections\tTLS full\tTLS resumed\tcalls\twall time")
	for _, r := range []row{plain, shared, storm} {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%v\n", r.name, r.accepts, r.full, r.resumed, r.calls, r.wall.Round(time.Millisecond))
	}
	w.Flush()
	st := sessions.Stats()
	fmt.Printf("\nSharing saved %d of %d connections and handshakes; after the storm %d of %d handshakes resumed (session cache: %d hits, %d misses).\n",
		plain.accepts-shared.accepts, plain.accepts, storm.resumed, storm.full+storm.resumed, st.Hits, st.Misses)
	fmt.Println("Coming next: the grpcreuse balancer, breakers and limiters, telemetry (see README).")
	return nil
}
