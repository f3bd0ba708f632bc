package opentelemetry_test

import (
	"context"
	"net"
	"testing"

	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/test/bufconn"
)

// nopHandler stands in for a per-call stats handler such as otelgrpc's.
type nopHandler struct{}

func (nopHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (nopHandler) HandleRPC(context.Context, stats.RPCStats)                         {}
func (nopHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (nopHandler) HandleConn(context.Context, stats.ConnStats)                       {}

// BenchmarkStatsHandler measures what the telemetry stats handler adds to
// a unary call (no-op providers, bufconn), next to the same call without it.
func BenchmarkStatsHandler(b *testing.B) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()
	tel, err := opentelemetry.New(opentelemetry.WithMeterProvider(metricnoop.NewMeterProvider()),
		opentelemetry.WithTracerProvider(tracenoop.NewTracerProvider()))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		opts []grpc.DialOption
	}{
		{"none", nil},
		{"telemetry", []grpc.DialOption{grpc.WithStatsHandler(tel.StatsHandler())}},
		// Anyone tracing gRPC already runs a per-call stats handler (otelgrpc
		// or grpc's stats/opentelemetry); grpc-go builds its events once for
		// all handlers, so this pair shows what telemetry adds beside one.
		{"other-handler", []grpc.DialOption{grpc.WithStatsHandler(nopHandler{})}},
		{"other-handler+telemetry", []grpc.DialOption{grpc.WithStatsHandler(nopHandler{}), grpc.WithStatsHandler(tel.StatsHandler())}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			opts := append([]grpc.DialOption{
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			}, bc.opts...)
			cc, err := grpc.NewClient("passthrough:///bufnet", opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			client := healthpb.NewHealthClient(cc)
			ctx := context.Background()
			req := &healthpb.HealthCheckRequest{}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := client.Check(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
