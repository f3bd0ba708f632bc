package opentelemetry

import (
	"context"
	"net"
	"sync/atomic"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
)

// connRecord is what the stats handler knows of one client transport.
type connRecord struct {
	addr      net.Addr
	used      atomic.Bool // a call has started on it
	tls       bool
	resumed   bool
	handshake time.Duration
}

type connKey struct{}

// StatsHandler returns a grpc stats.Handler for client connections
// (grpc.WithStatsHandler; clientconn installs it with WithMeterProvider or
// WithTracerProvider). It learns of each connection at its begin, with the
// handshake result from the peer's AuthInfo, forgets it at its end, and
// marks the span of every call (the span an OpenTelemetry stats handler
// installed before it put in the call's context) with AttrConnReused and,
// for the first call on a new TLS connection, AttrTLSResumed and
// AttrHandshakeDuration. A call whose span is not recording costs two map
// lookups and no allocation.
func (t *Telemetry) StatsHandler() stats.Handler { return (*statsHandler)(t) }

type statsHandler Telemetry

func (h *statsHandler) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	rec := &connRecord{addr: info.LocalAddr}
	if p, ok := peer.FromContext(ctx); ok {
		if r, ok := p.AuthInfo.(telemetry.HandshakeReporter); ok {
			rec.tls = true
			rec.resumed, rec.handshake = r.HandshakeReport()
		}
	}
	if rec.addr != nil {
		h.conns.Store(rec.addr, rec)
	}
	return context.WithValue(ctx, connKey{}, rec)
}

func (h *statsHandler) HandleConn(ctx context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		if rec, ok := ctx.Value(connKey{}).(*connRecord); ok && rec.addr != nil {
			h.conns.Delete(rec.addr)
		}
	}
}

func (h *statsHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (h *statsHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	oh, ok := s.(*stats.OutHeader)
	if !ok || !oh.Client || oh.LocalAddr == nil {
		return
	}
	v, ok := h.conns.Load(oh.LocalAddr)
	if !ok {
		return
	}
	rec := v.(*connRecord)
	first := !rec.used.Load() && rec.used.CompareAndSwap(false, true)
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	if !first || !rec.tls {
		span.SetAttributes(attribute.Bool(AttrConnReused, !first))
		return
	}
	resumed := FullHandshake
	if rec.resumed {
		resumed = ResumedHandshake
	}
	span.SetAttributes(attribute.Bool(AttrConnReused, false), attribute.String(AttrTLSResumed, resumed),
		attribute.Float64(AttrHandshakeDuration, rec.handshake.Seconds()))
}
