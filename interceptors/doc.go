// Package interceptors holds grpcreuse's gRPC interceptors: circuit
// breaking and backpressure for clients, load shedding for servers, and the
// JSON policy that configures the client side from a service config.
//
// Client side (plain grpc.UnaryClientInterceptor / StreamClientInterceptor
// values, composable with go-grpc-middleware v2 chains):
//   - BreakerUnaryClientInterceptor / BreakerStreamClientInterceptor fail
//     calls fast while the breaker.Registry's breaker for their key is open
//     (codes.Unavailable, errors.Is(err, breaker.ErrOpen)), and report each
//     call's outcome. A stream counts as one call: its establishment and
//     its final status.
//   - Limiter (NewLimiter) bounds concurrent calls per key with a fixed or
//     AIMD limit and a bounded FIFO wait queue (MaxQueued, MaxWait, never
//     past the call's deadline); rejections are codes.ResourceExhausted
//     (errors.Is(err, ErrLimited)) naming the key and the limit.
//   - NewClientChain is the one way to build the client chain, from a
//     breaker.Registry and a Limiter (WithBreakers, WithLimiter) or from a
//     Policy (WithPolicy, per tenant with WithTenant): breaker outside,
//     limiter inside, as one interceptor of each kind (Chain's
//     UnaryClientInterceptor, StreamClientInterceptor, DialOptions). Put
//     your own interceptors outside it to see every call, including those
//     it fails fast.
//
// Server side, Shedder (NewShedder, installed with its ServerOptions: a
// tap.ServerInHandle that rejects before grpc-go builds the stream, plus
// interceptors) sheds unary requests beyond a fixed, AIMD or adaptive
// (latency-gradient) in-flight limit, sheddable requests (header
// CriticalityHeader, or the method's default) beyond their share of it,
// streams beyond their own limit, and requests whose remaining deadline
// is shorter than their method's recent service time, with
// codes.ResourceExhausted, a stable message, ErrorInfo/RetryInfo details
// and (interceptor path) the grpc-retry-pushback-ms trailer; a request
// that arrives after its deadline gets codes.DeadlineExceeded, with no
// details. It never sheds nor counts health checks (grpc.health.v1.Health's
// Check, Watch and List) or the methods and services of
// ShedderConfig.Exempt. docs/overload.md has the details. The tap
// path only checks: the interceptors alone take and release slots, so a
// stream reset before its handler holds nothing. The Shedder's summary
// log line (grpclog warning) is written by the request path, not by a
// goroutine.
//
// The policy: SplitServiceConfig takes a service config document with a
// top-level "grpcreuse" object (see Policy), returns the rest for gRPC and
// the parsed Policy, which NewClientChain(WithPolicy(p)) builds. Parsing is
// strict: unknown and duplicate fields are errors naming the nearest known
// name (docs/policy.md lists every field).
//
// Streams are accounted exactly: each client stream passes grpc.OnFinish,
// which grpc calls once when the stream ends (final status, cancellation,
// or its connection closing); a SendMsg that returns io.EOF also frees the
// stream's limiter slot, since the stream is over on the wire even if the
// caller never reads its status. A half-open breaker's probe that never
// reports is bounded by breaker.Config.ProbeTimeout.
//
// Keys are bounded (LimiterConfig.MaxKeys, breaker.Config.MaxBreakers)
// without ever dropping a limiter with calls in flight or an open breaker:
// past the bound, keys share an overflow entry, so a configured limit is
// never exceeded.
//
// The package has no init. Everything is safe for concurrent use. It
// starts no goroutines. A limiter falling to its minimum AIMD limit is
// logged through grpclog (component "grpcreuse-interceptors") at
// verbosity 2.
package interceptors
