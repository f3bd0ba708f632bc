package opentelemetry_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"

	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/connectivity"
)

func TestTLSResult(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, "SUCCESS"},
		{&tls.CertificateVerificationError{Err: x509.HostnameError{Host: "x"}}, "CERTIFICATE_HOSTNAME_MISMATCH"},
		{&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, "CERTIFICATE_AUTHORITY_INVALID"},
		{x509.CertificateInvalidError{Reason: x509.Expired}, "CERTIFICATE_EXPIRED"},
		{x509.CertificateInvalidError{Reason: x509.NotAuthorizedToSign}, "CERTIFICATE_VERIFICATION_FAILED"},
		{fmt.Errorf("handshake: %w", context.DeadlineExceeded), "HANDSHAKE_TIMEOUT"},
		{io.EOF, "PEER_CONNECTION_CLOSED"},
		{tls.AlertError(70), "PROTOCOL_VERSION_UNSUPPORTED"},
		{tls.AlertError(120), "NO_APPLICATION_PROTOCOL"},
		{errors.New("something else"), "UNKNOWN_FAILURE"},
		// What a server sees when the client refuses its certificate.
		{&net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}, "CERTIFICATE_REJECTED_BY_PEER"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: unknown certificate authority")}, "CERTIFICATE_REJECTED_BY_PEER"},
		{&net.OpError{Op: "remote error", Err: errors.New("tls: protocol version not supported")}, "PROTOCOL_VERSION_UNSUPPORTED"},
	}
	for _, tt := range tests {
		if got := opentelemetry.TLSResult(tt.err); got != tt.want {
			t.Errorf("TLSResult(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestNewRejectsNilProviders(t *testing.T) {
	if _, err := opentelemetry.New(opentelemetry.WithMeterProvider(nil)); err == nil {
		t.Error("New(WithMeterProvider(nil)) succeeded")
	}
	if _, err := opentelemetry.New(opentelemetry.WithTracerProvider(nil)); err == nil {
		t.Error("New(WithTracerProvider(nil)) succeeded")
	}
}

// TestEveryObserverEventIsRecorded drives each telemetry.Observer method once and
// checks the instrument and attributes it lands in.
func TestEveryObserverEventIsRecorded(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	tel, err := opentelemetry.New(opentelemetry.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
		opentelemetry.WithTracerProvider(tracenoop.NewTracerProvider()))
	if err != nil {
		t.Fatal(err)
	}
	tel.PoolGet("dns:///a:1", true)
	tel.PoolEvicted("dns:///a:1", telemetry.EvictIdle)
	tel.ConnOpened("dns:///a:1")
	tel.ConnClosed("dns:///a:1", telemetry.CloseEvicted, time.Second)
	tel.Dialed("dns:///a:1", "10.0.0.1:1", time.Millisecond, &net.OpError{Op: "dial", Err: errors.New("refused")})
	tel.Handshake(telemetry.HandshakeInfo{Authority: "a", Duration: time.Millisecond, Resumed: true, Version: tls.VersionTLS12})
	tel.SubchannelState("dns:///a:1", "10.0.0.1:1", connectivity.Ready)
	tel.EndpointEjected("dns:///a:1", "10.0.0.1:1", time.Second)
	tel.EndpointReturned("dns:///a:1", "10.0.0.1:1")
	tel.EndpointLoad("dns:///a:1", "10.0.0.1:1", 7, time.Millisecond)
	tel.EndpointState("dns:///a:1", "10.0.0.1:1", connectivity.Ready, 3)
	tel.EndpointCalls("dns:///a:1", "10.0.0.1:1", telemetry.EndpointCalls{OK: 5})
	tel.BreakerStateChanged("", "svc", telemetry.BreakerClosed, telemetry.BreakerOpen)
	tel.BreakerRejected("", "svc")
	tel.BreakerRejected("", "svc")
	tel.LimiterLimitChanged("", "svc", 42)
	tel.LimiterRejected("", "svc", "queue_full")
	tel.SessionCacheLookup("acme", false)
	tel.SessionCacheEvicted("acme")
	tel.SessionCacheResumption("acme", true)
	tel.ServerShed("/pkg.S/M", "limit")
	tel.ServerHandshake(telemetry.ServerHandshakeInfo{Server: "127.0.0.1:8443", Duration: time.Millisecond, Version: tls.VersionTLS13,
		Err: &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}})

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					got[m.Name] += fmt.Sprintf("%d %s;", p.Value, p.Attributes.Encoded(attribute.DefaultEncoder()))
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					got[m.Name] += fmt.Sprintf("%d %s;", p.Value, p.Attributes.Encoded(attribute.DefaultEncoder()))
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					got[m.Name] += fmt.Sprintf("n=%d %s;", p.Count, p.Attributes.Encoded(attribute.DefaultEncoder()))
				}
			}
		}
	}
	want := map[string]string{
		opentelemetry.MetricPoolGets:                "1 grpc.target=dns:///a:1,grpcreuse.pool.hit=true;",
		opentelemetry.MetricPoolEvictions:           "1 grpc.target=dns:///a:1,grpcreuse.reason=idle;",
		opentelemetry.MetricPoolOpenConnections:     "0 grpc.target=dns:///a:1;",
		opentelemetry.MetricPoolConnectionLifetime:  "n=1 grpc.target=dns:///a:1,grpcreuse.reason=evicted;",
		opentelemetry.MetricConnectDuration:         "n=1 error.type=dial,grpc.target=dns:///a:1;",
		opentelemetry.MetricTLSHandshakes:           "1 grpc.target=a,grpc.tls.handshake.result=SUCCESS,grpc.tls.handshake.resumed=RESUMED_HANDSHAKE;",
		opentelemetry.MetricTLSHandshakeDuration:    "n=1 grpc.target=a,grpc.tls.handshake.result=SUCCESS,grpc.tls.handshake.resumed=RESUMED_HANDSHAKE,tls.protocol.version=1.2;",
		opentelemetry.MetricSubchannelStateChanges:  "1 grpc.target=dns:///a:1,grpcreuse.state=READY;",
		opentelemetry.MetricEjections:               "1 grpc.target=dns:///a:1;",
		opentelemetry.MetricEjectedEndpoints:        "0 grpc.target=dns:///a:1;",
		opentelemetry.MetricEndpointInFlight:        "7 grpc.target=dns:///a:1,grpcreuse.endpoint=10.0.0.1:1;",
		opentelemetry.MetricEndpointConnections:     "3 grpc.target=dns:///a:1,grpcreuse.endpoint=10.0.0.1:1;",
		opentelemetry.MetricEndpointCalls:           "5 grpc.target=dns:///a:1,grpcreuse.endpoint=10.0.0.1:1,grpcreuse.lb.outcome=ok;",
		opentelemetry.MetricBreakerTransitions:      "1 grpcreuse.breaker.key=svc,grpcreuse.from=closed,grpcreuse.to=open;",
		opentelemetry.MetricBreakersOpen:            "1 ;",
		opentelemetry.MetricBreakerRejections:       "2 grpcreuse.breaker.key=svc;",
		opentelemetry.MetricLimiterLimit:            "42 grpcreuse.limiter.key=svc;",
		opentelemetry.MetricLimiterRejections:       "1 grpcreuse.limiter.key=svc,grpcreuse.reason=queue_full;",
		opentelemetry.MetricSessionCacheLookups:     "1 grpcreuse.tenant=acme,grpcreuse.tls.session_cache.hit=false;",
		opentelemetry.MetricSessionCacheEvictions:   "1 grpcreuse.tenant=acme;",
		opentelemetry.MetricSessionCacheResumptions: "1 grpcreuse.tenant=acme,grpcreuse.tls.session_cache.resumed=true;",
		opentelemetry.MetricServerShed:              "1 grpcreuse.reason=limit,rpc.method=/pkg.S/M;",
		opentelemetry.MetricServerTLSHandshakes: "1 grpc.tls.handshake.result=CERTIFICATE_REJECTED_BY_PEER,grpc.tls.handshake.resumed=FULL_HANDSHAKE," +
			"network.local.address=127.0.0.1,network.local.port=8443,tls.protocol.version=1.3;",
		opentelemetry.MetricServerTLSHandshakeDuration: "n=1 grpc.tls.handshake.result=CERTIFICATE_REJECTED_BY_PEER,grpc.tls.handshake.resumed=FULL_HANDSHAKE," +
			"network.local.address=127.0.0.1,network.local.port=8443,tls.protocol.version=1.3;",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %q, want %q", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("recorded %d instruments, want %d: %v", len(got), len(want), got)
	}
}

// The events that can come once per call (fail-fast rejections, shed
// calls, Gets) must not allocate once their attribute set is cached.
func TestFrequentEventsDoNotAllocate(t *testing.T) {
	tel, err := opentelemetry.New(opentelemetry.WithMeterProvider(metricnoop.NewMeterProvider()))
	if err != nil {
		t.Fatal(err)
	}
	tel.BreakerRejected("", "svc")
	tel.LimiterRejected("", "svc", "queue_full")
	tel.PoolGet("t", true)
	if n := testing.AllocsPerRun(100, func() {
		tel.BreakerRejected("", "svc")
		tel.LimiterRejected("", "svc", "queue_full")
		tel.PoolGet("t", true)
	}); n != 0 {
		t.Errorf("allocations per event round = %v, want 0", n)
	}
}

// TestTenantsAreSeparateSeries: breakers and limiters are kept per tenant,
// so their instruments are too; one tenant's rejections never land in
// another's series, and a tenant's fail-fast events still allocate nothing.
func TestTenantsAreSeparateSeries(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	tel, err := opentelemetry.New(opentelemetry.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		t.Fatal(err)
	}
	tel.BreakerRejected("a", "svc")
	tel.BreakerRejected("a", "svc")
	tel.BreakerRejected("b", "svc")
	tel.LimiterRejected("b", "svc", "limit")
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if d, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, p := range d.DataPoints {
					tenant, _ := p.Attributes.Value(opentelemetry.AttrTenant)
					got[m.Name+" "+tenant.AsString()] += p.Value
				}
			}
		}
	}
	want := map[string]int64{
		opentelemetry.MetricBreakerRejections + " a": 2,
		opentelemetry.MetricBreakerRejections + " b": 1,
		opentelemetry.MetricLimiterRejections + " b": 1,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], w, got)
		}
	}
	if n := testing.AllocsPerRun(100, func() { tel.BreakerRejected("a", "svc"); tel.LimiterRejected("a", "svc", "limit") }); n != 0 {
		t.Errorf("tenant fail-fast events allocate %.1f times", n)
	}
}
