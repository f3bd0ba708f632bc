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
//   - ClientChain / ClientChainDialOptions return them in the recommended
//     order: telemetry (a hook for the caller's interceptors), breaker,
//     limiter.
//
// Server side, Shedder (NewShedder) sheds requests beyond a fixed or AIMD
// in-flight limit, and requests whose remaining deadline is shorter than
// their method's recent service time, with codes.ResourceExhausted; it
// never sheds grpc.health.v1.Health.
//
// The policy: SplitServiceConfig takes a service config document with a
// top-level "grpcreuse" object (see Policy), returns the rest for gRPC and
// the parsed Policy, whose ClientChain builds the interceptors.
//
// The package has no init. Everything is safe for concurrent use. It
// starts no goroutines of its own: each client stream registers one
// context.AfterFunc on the caller's context (so a caller that cancels and
// stops reading still frees its slot and breaker probe); it runs only if
// that context ends first and is deregistered when the stream ends.
package interceptors
