package opentelemetry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/connectivity"
)

// scope is the instrumentation scope name of every instrument and span.
const scope = "github.com/grpcreuse/grpcreuse/telemetry"

// Option configures New.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	mp  metric.MeterProvider
	tp  trace.TracerProvider
	err error
}

// WithMeterProvider sets where instruments are created. Default: the
// global provider (otel.GetMeterProvider).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) {
		if mp == nil {
			o.err = errors.New("opentelemetry: WithMeterProvider: provider is nil")
			return
		}
		o.mp = mp
	})
}

// WithTracerProvider sets where handshake spans go. Default: the global
// provider (otel.GetTracerProvider).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) {
		if tp == nil {
			o.err = errors.New("opentelemetry: WithTracerProvider: provider is nil")
			return
		}
		o.tp = tp
	})
}

// Telemetry records what grpcreuse reports as OpenTelemetry metrics and
// spans. It implements telemetry.Observer; hand it to clientconn.WithObserver, or to
// a single package's observer option. It is safe for concurrent use.
//
// It complements grpc-go's own stats/opentelemetry plugin, which records
// per-call latency and sizes: Telemetry records only what grpc-go does
// not (handshakes, pooling, balancing, breakers, limiters, session caches).
type Telemetry struct {
	// Nop answers the events this implementation records nothing for, so a
	// new telemetry.Observer method never breaks the build here.
	telemetry.Nop

	meter  metric.Meter
	tracer trace.Tracer

	tlsHandshakes, poolGets, poolEvictions, subchannelChanges, ejections metric.Int64Counter
	breakerTransitions, breakerRejections, limiterRejections             metric.Int64Counter
	sessionLookups, sessionEvictions, sessionResumptions                 metric.Int64Counter
	serverHandshakes, serverShed                                         metric.Int64Counter
	serverHandshakeDuration                                              metric.Float64Histogram
	tlsDuration, connectDuration, connLifetime                           metric.Float64Histogram
	openConns, ejected, breakersOpen                                     metric.Int64UpDownCounter
	limiterLimit, endpointInFlight, endpointConns                        metric.Int64Gauge
	endpointCalls                                                        metric.Int64Counter

	attrs attrCache
	conns sync.Map // net.Addr (local address of a client transport) -> *connRecord
}

var (
	_ telemetry.Observer                = (*Telemetry)(nil)
	_ telemetry.ServerHandshakeObserver = (*Telemetry)(nil)
	_ telemetry.ShedObserver            = (*Telemetry)(nil)
)

// New creates the instruments. It fails only if the meter provider
// refuses one.
func New(opts ...Option) (*Telemetry, error) {
	o := &options{mp: otel.GetMeterProvider(), tp: otel.GetTracerProvider()}
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("opentelemetry: New: option %d is nil", i)
		}
		opt.apply(o)
	}
	if o.err != nil {
		return nil, o.err
	}
	m := o.mp.Meter(scope)
	t := &Telemetry{meter: m, tracer: o.tp.Tracer(scope)}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	updown := func(name, unit, desc string) metric.Int64UpDownCounter {
		c, err := m.Int64UpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	seconds := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(latencyBuckets...))
		errs = append(errs, err)
		return h
	}
	t.tlsHandshakes = counter(MetricTLSHandshakes, "{handshake}", "Client TLS handshakes by result and resumption.")
	t.tlsDuration = seconds(MetricTLSHandshakeDuration, "Client TLS handshake duration.")
	t.connectDuration = seconds(MetricConnectDuration, "TCP connect duration.")
	t.poolGets = counter(MetricPoolGets, "{get}", "Connection pool Gets by hit.")
	t.poolEvictions = counter(MetricPoolEvictions, "{connection}", "Connections evicted from the pool.")
	t.openConns = updown(MetricPoolOpenConnections, "{connection}", "Open pooled connections.")
	t.connLifetime = seconds(MetricPoolConnectionLifetime, "Lifetime of closed pooled connections.")
	t.subchannelChanges = counter(MetricSubchannelStateChanges, "{change}", "Balancer subchannel state changes.")
	t.ejections = counter(MetricEjections, "{ejection}", "Endpoint ejections.")
	t.ejected = updown(MetricEjectedEndpoints, "{endpoint}", "Endpoints ejected now.")
	t.breakerTransitions = counter(MetricBreakerTransitions, "{transition}", "Circuit breaker state changes.")
	t.breakersOpen = updown(MetricBreakersOpen, "{breaker}", "Open circuit breakers.")
	t.breakerRejections = counter(MetricBreakerRejections, "{call}", "Calls failed fast by an open breaker.")
	t.limiterRejections = counter(MetricLimiterRejections, "{call}", "Calls rejected or shed by a limiter.")
	t.sessionLookups = counter(MetricSessionCacheLookups, "{lookup}", "TLS session cache lookups by hit.")
	t.sessionEvictions = counter(MetricSessionCacheEvictions, "{session}", "TLS sessions evicted for capacity or age.")
	t.sessionResumptions = counter(MetricSessionCacheResumptions, "{handshake}", "Client handshakes offered a cached session, by whether the server resumed it.")
	t.serverShed = counter(MetricServerShed, "{call}", "Requests a server shed without running their handler, by reason.")
	t.serverHandshakes = counter(MetricServerTLSHandshakes, "{handshake}", "Server TLS handshakes by result, resumption and version.")
	t.serverHandshakeDuration = seconds(MetricServerTLSHandshakeDuration, "Server TLS handshake duration, from accept.")
	g, err := m.Int64Gauge(MetricLimiterLimit, metric.WithUnit("{call}"), metric.WithDescription("Current concurrency limit."))
	errs = append(errs, err)
	t.limiterLimit = g
	g, err = m.Int64Gauge(MetricEndpointInFlight, metric.WithUnit("{call}"), metric.WithDescription("Calls in flight per balancer endpoint."))
	errs = append(errs, err)
	t.endpointInFlight = g
	g, err = m.Int64Gauge(MetricEndpointConnections, metric.WithUnit("{connection}"), metric.WithDescription("Open connections per balancer endpoint."))
	errs = append(errs, err)
	t.endpointConns = g
	t.endpointCalls = counter(MetricEndpointCalls, "{call}", "Finished calls per balancer endpoint, by outcome.")
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("opentelemetry: creating instruments: %w", err)
	}
	return t, nil
}

// Gauges is what ObserveGauges reads at every collection: the values only
// their owner knows at that moment.
type Gauges struct {
	// Limiters are the concurrency limiters' slots in use and waiters.
	Limiters []LimiterGauge
	// SessionCaches are the TLS session caches' sizes.
	SessionCaches []SessionCacheGauge
}

// LimiterGauge is one limiter's calls in flight and queued.
type LimiterGauge struct {
	Tenant, Key      string // Tenant is "" for none
	InFlight, Queued int
}

// SessionCacheGauge is one session cache's size, in sessions.
type SessionCacheGauge struct {
	Name string
	Size int
}

// ObserveGauges records, at every collection, the gauges that only a
// snapshot knows: limiters' calls in flight and queued, and session cache
// sizes. clientconn's Factory registers its source here; call unregister
// when the source goes away. read must be cheap and must not block.
func (t *Telemetry) ObserveGauges(read func() Gauges) (unregister func() error, err error) {
	inFlight, err1 := t.meter.Int64ObservableGauge(MetricLimiterInFlight, metric.WithUnit("{call}"), metric.WithDescription("Calls holding a limiter slot."))
	queued, err2 := t.meter.Int64ObservableGauge(MetricLimiterQueued, metric.WithUnit("{call}"), metric.WithDescription("Calls waiting for a limiter slot."))
	size, err3 := t.meter.Int64ObservableGauge(MetricSessionCacheSize, metric.WithUnit("{session}"), metric.WithDescription("TLS sessions held."))
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("opentelemetry: creating instruments: %w", err)
	}
	reg, err := t.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		g := read()
		for _, l := range g.Limiters {
			attrs := metric.WithAttributes(withTenant([]attribute.KeyValue{attribute.String(AttrLimiterKey, l.Key)}, l.Tenant)...)
			o.ObserveInt64(inFlight, int64(l.InFlight), attrs)
			o.ObserveInt64(queued, int64(l.Queued), attrs)
		}
		for _, c := range g.SessionCaches {
			o.ObserveInt64(size, int64(c.Size), metric.WithAttributes(attribute.String(AttrSessionCache, c.Name)))
		}
		return nil
	}, inFlight, queued, size)
	if err != nil {
		return nil, fmt.Errorf("opentelemetry: registering gauges: %w", err)
	}
	return reg.Unregister, nil
}

// latencyBuckets are gRFC A66's latency buckets, in seconds.
var latencyBuckets = []float64{0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002,
	0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065,
	0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100}

// PoolGet records a Get.
func (t *Telemetry) PoolGet(target string, hit bool) {
	t.poolGets.Add(context.Background(), 1, t.attrs.get("get", target, boolString(hit), func() attribute.Set {
		return attribute.NewSet(attribute.String(AttrTarget, target), attribute.Bool(AttrPoolHit, hit))
	})...)
}

// PoolEvicted records an eviction.
func (t *Telemetry) PoolEvicted(target, reason string) {
	t.poolEvictions.Add(context.Background(), 1, metric.WithAttributes(attribute.String(AttrTarget, target), attribute.String(AttrReason, reason)))
}

// ConnOpened records a new pooled connection.
func (t *Telemetry) ConnOpened(target string) {
	t.openConns.Add(context.Background(), 1, metric.WithAttributes(attribute.String(AttrTarget, target)))
}

// ConnClosed records a closed pooled connection and its lifetime.
func (t *Telemetry) ConnClosed(target, reason string, lifetime time.Duration) {
	ctx := context.Background()
	t.openConns.Add(ctx, -1, metric.WithAttributes(attribute.String(AttrTarget, target)))
	t.connLifetime.Record(ctx, lifetime.Seconds(), metric.WithAttributes(attribute.String(AttrTarget, target), attribute.String(AttrReason, reason)))
}

// Dialed records a TCP connect.
func (t *Telemetry) Dialed(target, _ string, d time.Duration, err error) {
	attrs := []attribute.KeyValue{attribute.String(AttrTarget, target)}
	if err != nil {
		attrs = append(attrs, attribute.String(AttrErrorType, connectErrorType(err)))
	}
	t.connectDuration.Record(context.Background(), d.Seconds(), metric.WithAttributes(attrs...))
}

// Handshake records a client TLS handshake as metrics and as a span that
// covers the handshake.
func (t *Telemetry) Handshake(h telemetry.HandshakeInfo) {
	resumed := FullHandshake
	if h.Resumed {
		resumed = ResumedHandshake
	}
	result := TLSResult(h.Err)
	target := h.Target
	if target == "" {
		target = h.Authority // credentials used without clientconn
	}
	base := []attribute.KeyValue{
		attribute.String(AttrTarget, target),
		attribute.String(AttrTLSResult, result),
		attribute.String(AttrTLSResumed, resumed),
	}
	ctx := context.Background()
	t.tlsHandshakes.Add(ctx, 1, metric.WithAttributes(base...))
	withVersion := append(base, attribute.String(AttrTLSVersion, tlsVersion(h.Version)))
	t.tlsDuration.Record(ctx, h.Duration.Seconds(), metric.WithAttributes(withVersion...))

	end := time.Now()
	_, span := t.tracer.Start(ctx, "grpcreuse.tls.handshake", trace.WithTimestamp(end.Add(-h.Duration)),
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(append(withVersion,
			attribute.String("server.address", h.Authority), attribute.String("network.peer.address", h.Addr),
			attribute.String(AttrTenant, h.Tenant))...))
	if h.Err != nil {
		span.RecordError(h.Err)
	}
	span.End(trace.WithTimestamp(end))
}

// SubchannelState records a subchannel state change.
func (t *Telemetry) SubchannelState(target, _ string, state connectivity.State) {
	t.subchannelChanges.Add(context.Background(), 1, metric.WithAttributes(attribute.String(AttrTarget, target), attribute.String(AttrState, state.String())))
}

// EndpointEjected records an ejection.
func (t *Telemetry) EndpointEjected(target, _ string, _ time.Duration) {
	ctx := context.Background()
	attrs := metric.WithAttributes(attribute.String(AttrTarget, target))
	t.ejections.Add(ctx, 1, attrs)
	t.ejected.Add(ctx, 1, attrs)
}

// EndpointReturned records an ejected endpoint's return.
func (t *Telemetry) EndpointReturned(target, _ string) {
	t.ejected.Add(context.Background(), -1, metric.WithAttributes(attribute.String(AttrTarget, target)))
}

// EndpointLoad records an endpoint's calls in flight (the latency
// estimate is for the debug page; per-call latency is grpc-go's metric).
func (t *Telemetry) EndpointLoad(target, endpoint string, inFlight int, _ time.Duration) {
	t.endpointInFlight.Record(context.Background(), int64(inFlight), metric.WithAttributes(
		attribute.String(AttrTarget, target), attribute.String(AttrEndpoint, endpoint)))
}

// EndpointState records an endpoint's open connections.
func (t *Telemetry) EndpointState(target, endpoint string, _ connectivity.State, connections int) {
	t.endpointConns.Record(context.Background(), int64(connections), metric.WithAttributes(
		attribute.String(AttrTarget, target), attribute.String(AttrEndpoint, endpoint)))
}

// EndpointCalls records an endpoint's finished calls by outcome; a
// control-loop sample, so building its attributes here is fine.
func (t *Telemetry) EndpointCalls(target, endpoint string, c telemetry.EndpointCalls) {
	ctx := context.Background()
	for _, o := range [...]struct {
		name string
		n    uint64
	}{{"ok", c.OK}, {"failed", c.Failed}, {"shed", c.Shed}, {"cancelled", c.Cancelled}, {"timed_out", c.TimedOut}} {
		if o.n > 0 {
			t.endpointCalls.Add(ctx, int64(o.n), metric.WithAttributes(attribute.String(AttrTarget, target),
				attribute.String(AttrEndpoint, endpoint), attribute.String(AttrOutcome, o.name)))
		}
	}
}

// withTenant appends the tenant attribute when there is a tenant, so a
// Factory without tenants keeps the attribute sets it always had.
func withTenant(kv []attribute.KeyValue, tenant string) []attribute.KeyValue {
	if tenant == "" {
		return kv
	}
	return append(kv, attribute.String(AttrTenant, tenant))
}

// BreakerStateChanged records a breaker transition.
func (t *Telemetry) BreakerStateChanged(tenant, key string, from, to telemetry.BreakerState) {
	ctx := context.Background()
	t.breakerTransitions.Add(ctx, 1, metric.WithAttributes(withTenant([]attribute.KeyValue{attribute.String(AttrBreakerKey, key),
		attribute.String(AttrFrom, from.String()), attribute.String(AttrTo, to.String())}, tenant)...))
	switch {
	case to == telemetry.BreakerOpen && from != telemetry.BreakerOpen:
		t.breakersOpen.Add(ctx, 1)
	case from == telemetry.BreakerOpen && to != telemetry.BreakerOpen:
		t.breakersOpen.Add(ctx, -1)
	}
}

// BreakerRejected records a call failed fast. It is on the fail-fast path,
// so its attribute set is built once per tenant and key.
func (t *Telemetry) BreakerRejected(tenant, key string) {
	t.breakerRejections.Add(context.Background(), 1, t.attrs.getc("breaker", key, "", tenant, func() attribute.Set {
		return attribute.NewSet(withTenant([]attribute.KeyValue{attribute.String(AttrBreakerKey, key)}, tenant)...)
	})...)
}

// LimiterLimitChanged records a new limit.
func (t *Telemetry) LimiterLimitChanged(tenant, key string, limit int) {
	t.limiterLimit.Record(context.Background(), int64(limit), metric.WithAttributes(
		withTenant([]attribute.KeyValue{attribute.String(AttrLimiterKey, key)}, tenant)...))
}

// LimiterRejected records a rejected or shed call; built once per tenant,
// key and reason, as it runs under overload.
func (t *Telemetry) LimiterRejected(tenant, key, reason string) {
	t.limiterRejections.Add(context.Background(), 1, t.attrs.getc("limiter", key, reason, tenant, func() attribute.Set {
		return attribute.NewSet(withTenant([]attribute.KeyValue{attribute.String(AttrLimiterKey, key), attribute.String(AttrReason, reason)}, tenant)...)
	})...)
}

// SessionCacheLookup records a session cache lookup.
func (t *Telemetry) SessionCacheLookup(tenant string, hit bool) {
	t.sessionLookups.Add(context.Background(), 1, t.attrs.get("session", tenant, boolString(hit), func() attribute.Set {
		return attribute.NewSet(attribute.String(AttrTenant, tenant), attribute.Bool(AttrSessionHit, hit))
	})...)
}

// SessionCacheEvicted records a session eviction.
func (t *Telemetry) SessionCacheEvicted(tenant string) {
	t.sessionEvictions.Add(context.Background(), 1, metric.WithAttributes(attribute.String(AttrTenant, tenant)))
}

// TLSResult classifies a handshake error into gRFC A118's result values.
func TLSResult(err error) string {
	if err == nil {
		return HandshakeSuccess
	}
	var (
		hostErr  x509.HostnameError
		authErr  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		alertErr tls.AlertError
	)
	switch {
	case errors.As(err, &hostErr):
		return "CERTIFICATE_HOSTNAME_MISMATCH"
	case errors.As(err, &authErr):
		return "CERTIFICATE_AUTHORITY_INVALID"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "CERTIFICATE_EXPIRED"
	case errors.As(err, &verify), errors.As(err, &invalid):
		return "CERTIFICATE_VERIFICATION_FAILED"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "HANDSHAKE_TIMEOUT"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "PEER_CONNECTION_CLOSED"
	case isRemoteAlert(err):
		// The peer sent an alert: crypto/tls wraps its unexported alert
		// type in a *net.OpError, so only the alert's text tells which.
		return remoteAlertResult(err)
	case errors.As(err, &alertErr):
		switch alertErr {
		case 70: // protocol_version
			return "PROTOCOL_VERSION_UNSUPPORTED"
		case 40: // handshake_failure: no shared cipher suite or group
			return "CIPHER_SUITE_MISMATCH"
		case 120: // no_application_protocol
			return "NO_APPLICATION_PROTOCOL"
		}
	}
	return "UNKNOWN_FAILURE"
}

func isRemoteAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && op.Err != nil
}

// remoteAlertResult classifies an alert the peer sent, by crypto/tls's
// alert texts: on a server, a client that refused its certificate.
func remoteAlertResult(err error) string {
	var op *net.OpError
	errors.As(err, &op)
	switch op.Err.Error() {
	case "tls: bad certificate", "tls: unknown certificate authority", "tls: unsupported certificate",
		"tls: revoked certificate", "tls: expired certificate", "tls: unknown certificate", "tls: certificate required",
		"tls: access denied":
		return "CERTIFICATE_REJECTED_BY_PEER"
	case "tls: protocol version not supported":
		return "PROTOCOL_VERSION_UNSUPPORTED"
	case "tls: handshake failure", "tls: insufficient security level":
		return "CIPHER_SUITE_MISMATCH"
	case "tls: no application protocol":
		return "NO_APPLICATION_PROTOCOL"
	}
	return "UNKNOWN_FAILURE"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connectErrorType classifies a TCP connect failure with low cardinality.
func connectErrorType(err error) string {
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &op):
		return op.Op
	}
	return "_OTHER"
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "1.3"
	case tls.VersionTLS12:
		return "1.2"
	case 0:
		return ""
	}
	return tls.VersionName(v)
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// attrCache keeps measurement options of the events that can be frequent
// (Gets, fail-fast rejections, session lookups), so recording them neither
// builds an attribute set nor allocates. It stops growing at maxCached
// entries: past that, sets are built per event rather than kept forever.
type attrCache struct {
	mu sync.RWMutex
	m  map[attrKey][]metric.AddOption
}

type attrKey struct{ kind, a, b, c string }

const maxCached = 4096

// get returns the options ready to pass as Add(ctx, n, opts...): a slice
// built once, because a one-element variadic argument to an interface
// method is allocated on every call.
func (c *attrCache) get(kind, a, b string, build func() attribute.Set) []metric.AddOption {
	return c.getc(kind, a, b, "", build)
}

// getc is get with a third part of the key (the tenant).
func (c *attrCache) getc(kind, a, b, d string, build func() attribute.Set) []metric.AddOption {
	k := attrKey{kind, a, b, d}
	c.mu.RLock()
	o, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return o
	}
	o = []metric.AddOption{metric.WithAttributeSet(build())}
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[attrKey][]metric.AddOption)
	}
	if len(c.m) < maxCached {
		c.m[k] = o
	}
	c.mu.Unlock()
	return o
}
