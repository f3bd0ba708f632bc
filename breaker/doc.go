// Package breaker keeps circuit breakers for gRPC calls, one per key, built
// on sony/gobreaker/v2's state machine.
//
// A Registry (New) creates a breaker the first time a key is used and keeps
// about Config.MaxBreakers of them, dropping the least recently used one
// that is closed and idle, so a flood of method names cannot grow memory
// without limit; an open breaker, or one with calls in flight, is never
// dropped (keys past the bound then share an overflow breaker). A
// Registry serves one tenant (WithTenant labels it); never share one
// between tenants. Keys are the
// call's target and full method (ScopeMethod, the default), the target
// alone (ScopeTarget), or what a key function returns (WithKeyFunc).
//
// A breaker trips after Config.ConsecutiveFailures failures in a row, or
// when the failure ratio over a rolling Config.Window reaches
// Config.FailureRatio with at least Config.MinimumRequests completed calls.
// Open, it fails calls at once for Config.OpenTimeout with codes.Unavailable
// (errors.Is(err, ErrOpen) holds; the message names the key and when the
// breaker probes again); then it lets Config.HalfOpenProbes probes through,
// closes when they all succeed and reopens on the first failure. A probe
// that has not reported within Config.ProbeTimeout counts as failed, so an
// abandoned call never holds the breaker half-open.
//
// Which results are failures is decided by gRPC code (Config.FailureCodes,
// by default Unavailable, Internal, Unknown, DataLoss and DeadlineExceeded).
// A caller's own cancellation or expired deadline never counts, nor does
// codes.Canceled. Other codes count as successes: the backend answered.
//
// The interceptors package wraps a Registry as gRPC client interceptors,
// where a stream counts as one call (its establishment and final status).
// The package has no init and starts no goroutines; Registry and Breaker
// are safe for concurrent use. State changes are recorded under gobreaker's
// lock and reported to the telemetry.BreakerObserver after it is released,
// in order, from the goroutine of a call that moved or observed the breaker,
// and logged through grpclog (component "grpcreuse-breaker") at verbosity 2.
package breaker
