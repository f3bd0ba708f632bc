// Command server is a TLS gRPC server that uses grpcreuse's server side:
//
//   - session-ticket keys rotated by credentials.NewTicketKeyRotator, random
//     or from a key file shared by replicas (-ticket-key-file), so clients
//     resume TLS sessions instead of repeating full handshakes;
//   - keepalive enforcement matching the clients' clientconn.KeepaliveDefault;
//   - load shedding (interceptors.NewShedder, on the tap path): beyond
//     -max-in-flight calls (fixed, or -adaptive), or when a call's deadline
//     is shorter than the method's recent service time, requests fail at
//     once with ResourceExhausted; -criticality sets methods' default
//     criticality (sheddable requests may use -sheddable-share of the
//     limit); -work, -work-jitter and -work-slots give UnaryCall
//     simulated work so that a load test (ghz, see docs/overload.md)
//     shows shedding;
//   - the health service and server reflection;
//   - graceful stop on SIGINT and SIGTERM.
//
// It serves grpc.testing.TestService and grpc.health.v1.Health on
// 127.0.0.1:50051 with a self-signed certificate made at start, whose PEM it
// writes to -ca-out for clients to trust:
//
//	go run ./examples/server
//	go run ./examples/client          # in another terminal
//
// The logic lives in package exampleserver so that examples/client's test
// can run both in one process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/grpcreuse/grpcreuse/examples/server/exampleserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := exampleserver.Run(ctx, os.Args[1:], os.Stdout, nil)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "server:", err)
		stop()
		os.Exit(1)
	}
}
