package opentelemetry_test

import (
	"context"
	"fmt"
	"log"
	"net"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"
)

// Enable both: grpc-go's stats/opentelemetry plugin records per-call
// metrics (latency, sizes); grpcreuse records what grpc-go does not
// (pooling, handshakes, breakers, limiters). One MeterProvider serves both.
func ExampleNew() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	f, err := clientconn.New(
		clientconn.WithTransportCredentials(insecure.NewCredentials()),
		clientconn.WithMeterProvider(mp), // grpcreuse's instruments (opentelemetry.New)
		clientconn.WithDialOptions(grpcotel.DialOption(grpcotel.Options{ // grpc-go's per-call metrics
			MetricsOptions: grpcotel.MetricsOptions{MeterProvider: mp},
		})),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	conn, err := f.Get(context.Background(), lis.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		log.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	have := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			have[m.Name] = true
		}
	}
	fmt.Println("grpc-go per-call latency:", have["grpc.client.attempt.duration"])
	fmt.Println("grpcreuse pool gets:", have[opentelemetry.MetricPoolGets])
	fmt.Println("grpcreuse TCP connects:", have[opentelemetry.MetricConnectDuration])
	// Output:
	// grpc-go per-call latency: true
	// grpcreuse pool gets: true
	// grpcreuse TCP connects: true
}
