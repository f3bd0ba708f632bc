package clientconn_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/grpcreuse/grpcreuse/clientconn"
)

// Two services of one process ask for the same backend and share one
// connection.
func Example() {
	// A backend on loopback.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()

	f, err := clientconn.New(
		clientconn.WithTransportCredentials(insecure.NewCredentials()),
		clientconn.WithIdleTimeout(time.Minute),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, service := range []string{"billing", "search"} {
		conn, err := f.Get(ctx, lis.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %v\n", service, resp.GetStatus())
		conn.Close()
	}
	st := f.Stats()
	fmt.Printf("connections opened: %d, shared: %d\n", st.Misses, st.Hits)
	// Output:
	// billing: SERVING
	// search: SERVING
	// connections opened: 1, shared: 1
}

// Keepalive presets come in pairs: the client half goes to the Factory,
// the server half to grpc.NewServer, and the pair is checked for the
// too_many_pings GOAWAY a mismatch causes.
func ExampleKeepalive() {
	k := clientconn.KeepaliveDefault()
	srv := grpc.NewServer(k.ServerOptions()...)
	defer srv.Stop()
	f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithKeepalive(k))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()

	// A server left at grpc-go's defaults would not accept these pings.
	mismatched := clientconn.Keepalive{Client: k.Client}
	fmt.Println(mismatched.Validate() != nil)
	// Output: true
}
