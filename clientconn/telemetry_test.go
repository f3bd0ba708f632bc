package clientconn_test

import (
	"context"
	"crypto/tls"
	"math"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// point is one data point: its attributes and its value (a counter's sum,
// a gauge's value, a histogram's count).
type point struct {
	set   attribute.Set
	value float64
}

// metricPoints returns the data points of one instrument by attribute set.
func metricPoints(t *testing.T, reader *sdkmetric.ManualReader, name string) map[attribute.Distinct]point {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[attribute.Distinct]point{}
	add := func(set attribute.Set, v float64) { out[set.Equivalent()] = point{set, v} }
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Value))
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Value))
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					add(p.Attributes, float64(p.Count))
				}
			}
		}
	}
	return out
}

// sumWhere adds the values of points whose attributes include every kv.
func sumWhere(t *testing.T, reader *sdkmetric.ManualReader, name string, kv ...attribute.KeyValue) float64 {
	t.Helper()
	var total float64
	for _, p := range metricPoints(t, reader, name) {
		match := true
		for _, want := range kv {
			if got, ok := p.set.Value(want.Key); !ok || got != want.Value {
				match = false
			}
		}
		if match {
			total += p.value
		}
	}
	return total
}

func TestFactoryTelemetry(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	// The server sheds beyond one call in flight and reports to the same provider.
	serverTel, err := opentelemetry.New(opentelemetry.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	shedCfg := interceptors.DefaultShedderConfig()
	shedCfg.Limit = 1
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(shedCfg), interceptors.WithShedderObserver(serverTel))
	if err != nil {
		t.Fatal(err)
	}
	var faults testutil.Faults
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	b := startTLSBackend(t, pki, tls.VersionTLS13, grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor(), faults.UnaryServerInterceptor()))
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0),
		clientconn.WithMeterProvider(mp), clientconn.WithTracerProvider(tp), clientconn.WithServiceConfig(breakerServiceConfig))
	defer f.Close()

	// A new TLS connection, then a resumed one (each closed with its handle).
	connectOnce(t, f, b.Addr)
	connectOnce(t, f, b.Addr)
	// A shared-connection hit, with the calls inside spans of the caller's.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c1 := get(t, f, b.Addr)
	c2 := get(t, f, b.Addr)
	tracer := tp.Tracer("test")
	for i, c := range []*clientconn.Conn{c1, c2} {
		callCtx, span := tracer.Start(ctx, "call")
		if _, err := testpb.NewTestServiceClient(c).UnaryCall(callCtx, &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		span.End()
	}

	// A shed call: one call holds the server's only slot, the next is shed.
	faults.SetDelay(300 * time.Millisecond)
	held := make(chan error, 1)
	go func() { held <- unary(ctx, c1) }()
	testutil.Eventually(t, 5*time.Second, func() bool { _, n := shed.InFlight(); return n == 1 }, "one call in flight")
	if err := unary(ctx, c2); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call beyond the server's limit: %v, want ResourceExhausted", err)
	}
	if err := <-held; err != nil {
		t.Fatalf("held call: %v", err)
	}
	faults.SetDelay(0)
	// An open breaker: three failures, then a call failed fast.
	faults.FailEvery(1, codes.Unavailable)
	for i := 0; i < 4; i++ {
		_ = unary(ctx, c1)
	}
	c1.Close()
	c2.Close()

	target := attribute.String(opentelemetry.AttrTarget, "dns:///"+b.Addr) // the channel target, not the server name
	success := attribute.String(opentelemetry.AttrTLSResult, opentelemetry.HandshakeSuccess)
	if got := sumWhere(t, reader, opentelemetry.MetricTLSHandshakes, success, target, attribute.String(opentelemetry.AttrTLSResumed, opentelemetry.FullHandshake)); got != 1 {
		t.Errorf("full handshakes = %v, want 1", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricTLSHandshakes, success, attribute.String(opentelemetry.AttrTLSResumed, opentelemetry.ResumedHandshake)); got != 2 {
		t.Errorf("resumed handshakes = %v, want 2 (second connection and the shared one)", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricTLSHandshakeDuration, attribute.String(opentelemetry.AttrTLSVersion, "1.3")); got != 3 {
		t.Errorf("handshake duration samples = %v, want 3", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricConnectDuration); got != 3 {
		t.Errorf("connect duration samples = %v, want 3", got)
	}
	if hits, misses := sumWhere(t, reader, opentelemetry.MetricPoolGets, attribute.Bool(opentelemetry.AttrPoolHit, true)),
		sumWhere(t, reader, opentelemetry.MetricPoolGets, attribute.Bool(opentelemetry.AttrPoolHit, false)); hits != 1 || misses != 3 {
		t.Errorf("pool gets: %v hits, %v misses; want 1 and 3", hits, misses)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		return sumWhere(t, reader, opentelemetry.MetricPoolConnectionLifetime, attribute.String(opentelemetry.AttrReason, telemetry.CloseEvicted)) == 3
	}, "three connection lifetimes recorded")
	if got := sumWhere(t, reader, opentelemetry.MetricPoolOpenConnections); got != 0 {
		t.Errorf("open connections = %v after all closed, want 0", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricSessionCacheLookups, attribute.Bool(opentelemetry.AttrSessionHit, true)); got != 2 {
		t.Errorf("session cache hits = %v, want 2", got)
	}

	if got := sumWhere(t, reader, opentelemetry.MetricBreakerTransitions, attribute.String(opentelemetry.AttrTo, "open")); got != 1 {
		t.Errorf("breaker transitions to open = %v, want 1", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricBreakersOpen); got != 1 {
		t.Errorf("open breakers = %v, want 1", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricBreakerRejections); got != 1 {
		t.Errorf("breaker rejections = %v, want 1", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricLimiterRejections, attribute.String(opentelemetry.AttrReason, interceptors.ReasonLimit)); got != 1 {
		t.Errorf("shed calls = %v, want 1", got)
	}

	// Snapshot gauges: the policy's limiter and the session cache.
	if got := len(metricPoints(t, reader, opentelemetry.MetricLimiterInFlight)); got != 1 {
		t.Errorf("limiter in-flight gauges = %d, want 1 (the policy's limiter)", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricLimiterQueued); got != 0 {
		t.Errorf("queued = %v with no load, want 0", got)
	}
	if got := sumWhere(t, reader, opentelemetry.MetricSessionCacheSize); got < 1 {
		t.Errorf("session cache size = %v, want at least 1", got)
	}

	// Spans: one per handshake, and the calls' spans marked.
	var handshakes, calls int
	var reused []bool
	for _, s := range spans.Ended() {
		switch s.Name() {
		case "grpcreuse.tls.handshake":
			handshakes++
		case "call":
			calls++
			for _, kv := range s.Attributes() {
				if kv.Key == opentelemetry.AttrConnReused {
					reused = append(reused, kv.Value.AsBool())
				}
			}
		}
	}
	if handshakes != 3 || calls != 2 {
		t.Errorf("spans: %d handshakes, %d calls; want 3 and 2", handshakes, calls)
	}
	if len(reused) != 2 || reused[0] || !reused[1] {
		t.Errorf("calls marked reused = %v, want [false true]: the first call is the new connection's first", reused)
	}
}

// TestMetricsAddNothingPerCall: with metrics only, or a no-op tracer, a
// call costs what it costs without telemetry.
func TestMetricsAddNothingPerCall(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	allocs := func(opts ...clientconn.Option) float64 {
		f := newFactory(t, opts...)
		c := get(t, f, b.Addr)
		defer c.Close()
		mustUnary(t, c)
		client := testpb.NewTestServiceClient(c)
		req := &testpb.SimpleRequest{}
		// AllocsPerRun counts every allocation in the process, so a
		// goroutine another test left winding down can add to one
		// measurement; the least of three is what a call costs.
		least := math.Inf(1)
		for range 3 {
			least = min(least, testing.AllocsPerRun(300, func() {
				if _, err := client.UnaryCall(context.Background(), req); err != nil {
					t.Fatal(err)
				}
			}))
		}
		return least
	}
	base := allocs()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	for name, opts := range map[string][]clientconn.Option{
		"meter provider": {clientconn.WithMeterProvider(mp)},
		"no-op tracer":   {clientconn.WithMeterProvider(mp), clientconn.WithTracerProvider(tracenoop.NewTracerProvider())},
	} {
		slack := 0.5
		if testutil.RaceEnabled {
			slack = 1.5 // sync.Pool drops items under -race; see testutil.RaceEnabled
		}
		if got := allocs(opts...); got > base+slack {
			t.Errorf("%s: %.1f allocations per call, %.1f without telemetry", name, got, base)
		}
	}
}
