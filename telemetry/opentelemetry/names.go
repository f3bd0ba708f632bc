package opentelemetry

// Instrument names. Where gRPC defines a metric for the same thing (gRFC
// A118 for TLS handshakes) the name and labels are gRPC's; the rest are
// prefixed "grpcreuse.". Units are UCUM, as OpenTelemetry asks.
const (
	// MetricServerShed counts requests a server shed without running their
	// handler ({call}), by AttrRPCMethod and AttrReason.
	MetricServerShed = "grpcreuse.server.shed"
	// AttrRPCMethod is the full gRPC method ("/pkg.Service/Method"), as
	// OpenTelemetry's RPC conventions name it.
	AttrRPCMethod = "rpc.method"

	// MetricServerTLSHandshakes counts server TLS handshakes ({handshake}),
	// by AttrTLSResult, AttrTLSResumed, AttrTLSVersion, AttrLocalAddress
	// and AttrLocalPort: gRFC A118's client metric, server side.
	MetricServerTLSHandshakes = "grpcreuse.server.tls.handshakes"
	// MetricServerTLSHandshakeDuration is the server TLS handshake time (s),
	// from accept, by the same attributes.
	MetricServerTLSHandshakeDuration = "grpcreuse.server.tls.handshake.duration"
	// MetricSessionCacheResumptions counts client handshakes that were
	// offered a cached session ({handshake}), by AttrTenant and
	// AttrSessionResumed: the offers the server took.
	MetricSessionCacheResumptions = "grpcreuse.tls.session_cache.resumptions"

	// AttrLocalAddress and AttrLocalPort are the address and port a server
	// accepted the connection on (OpenTelemetry's network.local.*).
	AttrLocalAddress = "network.local.address"
	AttrLocalPort    = "network.local.port"
	// AttrSessionResumed says whether an offered session was resumed.
	AttrSessionResumed = "grpcreuse.tls.session_cache.resumed"
)

const (
	// MetricTLSHandshakes counts client TLS handshakes ({handshake}), by
	// AttrTLSResult, AttrTLSResumed and AttrTarget, as gRFC A118's.
	MetricTLSHandshakes = "grpc.client.tls.handshakes"
	// MetricTLSHandshakeDuration is the client TLS handshake time (s), by
	// AttrTLSResult, AttrTLSResumed, AttrTLSVersion and AttrTarget.
	MetricTLSHandshakeDuration = "grpcreuse.client.tls.handshake.duration"
	// MetricConnectDuration is the TCP connect time (s), by AttrTarget and,
	// on failure, AttrErrorType.
	MetricConnectDuration = "grpcreuse.client.tcp.connect.duration"
	// MetricPoolGets counts clientconn.Factory.Get calls ({get}), by
	// AttrTarget and AttrPoolHit.
	MetricPoolGets = "grpcreuse.pool.gets"
	// MetricPoolEvictions counts connections evicted from the pool
	// ({connection}), by AttrTarget and AttrReason.
	MetricPoolEvictions = "grpcreuse.pool.evictions"
	// MetricPoolOpenConnections is the number of open pooled connections
	// ({connection}), by AttrTarget.
	MetricPoolOpenConnections = "grpcreuse.pool.open_connections"
	// MetricPoolConnectionLifetime is how long pooled connections lived (s),
	// by AttrTarget and AttrReason, recorded when they close.
	MetricPoolConnectionLifetime = "grpcreuse.pool.connection.lifetime"
	// MetricSubchannelStateChanges counts balancer subchannel state changes
	// ({change}), by AttrTarget and AttrState.
	MetricSubchannelStateChanges = "grpcreuse.lb.subchannel.state_changes"
	// MetricEjections counts endpoint ejections ({ejection}), by AttrTarget.
	MetricEjections = "grpcreuse.lb.ejections"
	// MetricEjectedEndpoints is the number of endpoints ejected now
	// ({endpoint}), by AttrTarget.
	MetricEjectedEndpoints = "grpcreuse.lb.ejected_endpoints"
	// MetricEndpointInFlight is an endpoint's calls in flight as the
	// balancer last sampled them ({call}), by AttrTarget and AttrEndpoint.
	MetricEndpointInFlight = "grpcreuse.lb.endpoint.in_flight"
	// MetricEndpointConnections is an endpoint's open connections
	// ({connection}), by AttrTarget and AttrEndpoint, on every change.
	MetricEndpointConnections = "grpcreuse.lb.endpoint.connections"
	// MetricEndpointCalls counts an endpoint's finished calls ({call}) by
	// AttrTarget, AttrEndpoint and AttrOutcome, as the balancer classifies
	// them; reported by its control loop, not per call.
	MetricEndpointCalls = "grpcreuse.lb.endpoint.calls"
	// MetricBreakerTransitions counts breaker state changes ({transition}),
	// by AttrBreakerKey, AttrFrom and AttrTo.
	MetricBreakerTransitions = "grpcreuse.breaker.transitions"
	// MetricBreakersOpen is the number of open breakers ({breaker}).
	MetricBreakersOpen = "grpcreuse.breaker.open"
	// MetricBreakerRejections counts calls failed fast by an open breaker
	// ({call}), by AttrBreakerKey.
	MetricBreakerRejections = "grpcreuse.breaker.rejections"
	// MetricLimiterLimit is a limiter's current concurrency limit ({call}),
	// by AttrLimiterKey.
	MetricLimiterLimit = "grpcreuse.limiter.limit"
	// MetricLimiterInFlight and MetricLimiterQueued are a limiter's calls
	// holding a slot and waiting for one ({call}), by AttrLimiterKey; read
	// at collection from the snapshot given to ObserveSnapshots.
	MetricLimiterInFlight = "grpcreuse.limiter.in_flight"
	MetricLimiterQueued   = "grpcreuse.limiter.queued"
	// MetricSessionCacheSize is the number of TLS sessions a cache holds
	// ({session}), read at collection like MetricLimiterInFlight.
	MetricSessionCacheSize = "grpcreuse.tls.session_cache.size"
	// MetricLimiterRejections counts calls rejected or shed ({call}), by
	// AttrLimiterKey and AttrReason.
	MetricLimiterRejections = "grpcreuse.limiter.rejections"
	// MetricSessionCacheLookups counts TLS session cache lookups ({lookup}),
	// by AttrTenant and AttrSessionHit.
	MetricSessionCacheLookups = "grpcreuse.tls.session_cache.lookups"
	// MetricSessionCacheEvictions counts sessions evicted for capacity or
	// age ({session}), by AttrTenant.
	MetricSessionCacheEvictions = "grpcreuse.tls.session_cache.evictions"
)

// Attribute keys.
const (
	// AttrTarget is the channel target, as in gRFC A66.
	AttrTarget = "grpc.target"
	// AttrTLSResult is "SUCCESS" or a gRFC A118 failure class.
	AttrTLSResult = "grpc.tls.handshake.result"
	// AttrTLSResumed is "FULL_HANDSHAKE" or "RESUMED_HANDSHAKE" (gRFC A118).
	AttrTLSResumed = "grpc.tls.handshake.resumed"
	// AttrTLSVersion is the negotiated version, "1.2" or "1.3" (OTel semconv).
	AttrTLSVersion = "tls.protocol.version"
	// AttrErrorType classifies a failure (OTel semconv).
	AttrErrorType = "error.type"
	// AttrTenant is the tenant a connection or session belongs to.
	AttrTenant = "grpcreuse.tenant"
	// AttrPoolHit says whether a Get shared an existing connection.
	AttrPoolHit = "grpcreuse.pool.hit"
	// AttrReason says why a connection closed or a call was rejected.
	AttrReason = "grpcreuse.reason"
	// AttrEndpoint is a balancer endpoint (its first address).
	AttrEndpoint = "grpcreuse.endpoint"
	// AttrOutcome is a call's outcome as the balancer classifies it:
	// "ok", "failed", "shed", "cancelled" or "timed_out".
	AttrOutcome = "grpcreuse.lb.outcome"
	// AttrState is a connectivity state ("READY", ...).
	AttrState = "grpcreuse.state"
	// AttrBreakerKey and AttrLimiterKey name a breaker or limiter.
	AttrBreakerKey = "grpcreuse.breaker.key"
	AttrLimiterKey = "grpcreuse.limiter.key"
	// AttrFrom and AttrTo are the states of a breaker transition.
	AttrFrom = "grpcreuse.from"
	AttrTo   = "grpcreuse.to"
	// AttrSessionCache names a session cache.
	AttrSessionCache = "grpcreuse.tls.session_cache"
	// AttrSessionHit says whether a session cache lookup found a session.
	AttrSessionHit = "grpcreuse.tls.session_cache.hit"
	// AttrConnReused marks a call's span: false when the call was the first
	// on a newly established connection.
	AttrConnReused = "grpcreuse.conn.reused"
	// AttrHandshakeDuration marks the span of a call on a new connection
	// with its TLS handshake time in seconds.
	AttrHandshakeDuration = "grpcreuse.tls.handshake.duration"
)

// A118 values of AttrTLSResumed and AttrTLSResult.
const (
	FullHandshake    = "FULL_HANDSHAKE"
	ResumedHandshake = "RESUMED_HANDSHAKE"
	HandshakeSuccess = "SUCCESS"
)
