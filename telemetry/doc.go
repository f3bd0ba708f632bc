// Package telemetry is the seam through which the rest of grpcreuse reports
// what it does: pool hits and misses, connections opened and closed,
// handshakes, subchannel states, breaker transitions, limiter decisions and
// session-cache lookups.
//
// The other packages depend only on the small observer interfaces declared
// here, never on OpenTelemetry directly, so they can report from day one and
// stay cheap when nobody listens. [Nop] implements every interface and does
// nothing; embed it in your own observer to implement only the methods you
// care about, the way generated gRPC servers embed their Unimplemented type.
//
// This package imports nothing else of grpcreuse and nothing of
// OpenTelemetry: its implementation over OpenTelemetry is
// telemetry/opentelemetry, and the operators' page is telemetry/debugpage,
// so a package that only reports depends only on these interfaces. It
// starts no goroutines and registers nothing in init.
//
// Observers are called synchronously from connection setup, eviction and
// state-change paths (never from under a grpcreuse lock), so implementations
// must be safe for concurrent use and must return quickly: record and go.
package telemetry
