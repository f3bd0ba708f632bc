// Package opentelemetry records what grpcreuse reports through the
// telemetry seam as OpenTelemetry metrics and spans: pool gets and
// evictions, TCP connects, TLS handshakes (named and labelled as gRFC
// A118's grpc.client.tls.handshakes), subchannel states and ejections,
// breaker transitions and rejections, limiter decisions, session-cache
// lookups. [New] builds a [Telemetry], which implements
// telemetry.Observer; clientconn's WithMeterProvider and
// WithTracerProvider build one for the Factory.
//
// It complements grpc-go's own google.golang.org/grpc/stats/opentelemetry
// plugin (per-call latency and sizes) and records nothing that plugin
// records; both can share one MeterProvider. Import one of the two under
// another name, as the package names match.
//
// Instrument names ([MetricTLSHandshakes] and the rest) and attribute
// keys are exported constants; units are UCUM.
//
// A Telemetry is safe for concurrent use, registers nothing in init and
// starts no goroutine. Frequent events (a Get, a handshake) reuse cached
// attribute sets and do not allocate.
package opentelemetry
