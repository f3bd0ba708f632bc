package interceptors_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestShedderHealthExemptionIsTheHealthMethods: a server with
// grpc.UnknownServiceHandler (a proxy) hands every method it does not
// serve, even one under a service it has, to that handler, through the
// stream interceptors. Health was exempt by its service's prefix, so a
// client that named its calls "/grpc.health.v1.Health/<anything>" had
// them proxied past StreamLimit, never shed nor counted. Only the health
// service's own methods are exempt now; a made-up one under its name is
// counted as any other stream.
func TestShedderHealthExemptionIsTheHealthMethods(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.StreamLimit = 1 })
			var running atomic.Int64
			gate := make(chan struct{})
			proxy := grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
				running.Add(1)
				defer running.Add(-1)
				select {
				case <-gate:
				case <-ss.Context().Done():
				}
				return nil
			})
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: append(path.opts(shed), proxy)})
			defer close(gate)
			cc := dialConn(t, be.Addr)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			desc := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
			// open opens a stream to method and reports its error, or nil
			// once the proxy handler runs it (want running).
			open := func(method string, want int64) error {
				s, err := cc.NewStream(ctx, desc, method)
				if err != nil {
					return err
				}
				// A SendMsg racing the tap's early answer returns io.EOF;
				// the answer is RecvMsg's to tell.
				if err := s.SendMsg(&healthpb.HealthCheckRequest{}); err != nil && err != io.EOF {
					return err
				}
				if err := s.CloseSend(); err != nil { // Watch reads one request, then its end
					return err
				}
				errc := make(chan error, 1)
				go func() { errc <- s.RecvMsg(&healthpb.HealthCheckResponse{}) }()
				deadline := time.Now().Add(5 * time.Second)
				for time.Now().Before(deadline) {
					select {
					case err := <-errc:
						return err
					case <-time.After(time.Millisecond):
					}
					if running.Load() >= want {
						return nil
					}
				}
				t.Fatalf("%s: neither an answer nor the handler within 5s", method)
				return nil
			}
			if err := open("/pkg.Proxied/Call", 1); err != nil {
				t.Fatalf("the first proxied stream: %v", err)
			}
			if err := open("/grpc.health.v1.Health/Anything", 2); status.Code(err) != codes.ResourceExhausted {
				t.Errorf("a made-up health method at the stream limit: %v (handlers running: %d); want ResourceExhausted", err, running.Load())
			}
			if err := open("/grpc.health.v1.Health/Watch", 2); err != nil {
				t.Errorf("the health service's Watch at the stream limit: %v; want it exempt", err)
			}
		})
	}
}
