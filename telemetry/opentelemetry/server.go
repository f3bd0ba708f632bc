package opentelemetry

import (
	"context"
	"net"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ServerHandshake records one TLS server handshake (hand the Telemetry to
// credentials.WithServerHandshakeObserver). Per handshake, never per call.
func (t *Telemetry) ServerHandshake(h telemetry.ServerHandshakeInfo) {
	resumed := FullHandshake
	if h.Resumed {
		resumed = ResumedHandshake
	}
	host, port, err := net.SplitHostPort(h.Server)
	if err != nil {
		host, port = h.Server, ""
	}
	attrs := metric.WithAttributes(
		attribute.String(AttrTLSResult, TLSResult(h.Err)),
		attribute.String(AttrTLSResumed, resumed),
		attribute.String(AttrTLSVersion, tlsVersion(h.Version)),
		attribute.String(AttrLocalAddress, host),
		attribute.String(AttrLocalPort, port),
	)
	ctx := context.Background()
	t.serverHandshakes.Add(ctx, 1, attrs)
	t.serverHandshakeDuration.Record(ctx, h.Duration.Seconds(), attrs)
}

// ServerShed records one shed request (hand the Telemetry to
// interceptors.WithShedderObserver). Shedding can come once per call, so
// the attribute set is cached per method and reason: no allocation.
func (t *Telemetry) ServerShed(method, reason string) {
	t.serverShed.Add(context.Background(), 1, t.attrs.get("shed", method, reason, func() attribute.Set {
		return attribute.NewSet(attribute.String(AttrRPCMethod, method), attribute.String(AttrReason, reason))
	})...)
}

// SessionCacheResumption records whether an offered session resumed.
func (t *Telemetry) SessionCacheResumption(tenant string, resumed bool) {
	t.sessionResumptions.Add(context.Background(), 1, t.attrs.get("resumption", tenant, boolString(resumed), func() attribute.Set {
		return attribute.NewSet(attribute.String(AttrTenant, tenant), attribute.Bool(AttrSessionResumed, resumed))
	})...)
}
