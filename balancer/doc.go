// Package balancer is grpcreuse's load-balancing policy, registered with
// grpc as "grpcreuse_least_loaded" (Name). It keeps several connections
// (subchannels) per endpoint, opening more under load and closing extras when
// idle, and picks with power of two choices over a peak-EWMA latency score,
// ejecting endpoints that keep failing.
//
// # Use
//
// Importing the package registers the policy (init does nothing else).
// clientconn imports it, so Factory users get it for free; anyone else
// blank-imports it in main:
//
//	import _ "github.com/grpcreuse/grpcreuse/balancer"
//
// and selects it through service config:
//
//	{"loadBalancingConfig": [{"grpcreuse_least_loaded": {"maxSubchannelsPerEndpoint": 8}}]}
//
// Config documents every field and its default; ParseConfig validates a
// config up front with the same rules grpc applies when the channel is made.
// An invalid value is an error naming the field, the value and what is
// allowed; nothing is clamped.
//
// # Design
//
// Subchannels. The policy manages its SubConns itself (NewSubConn with a
// StateListener, one SubConn per connection) rather than delegating to
// pick_first children through endpointsharding, because it needs several
// connections per endpoint and per-connection load. Every SubConn of an
// endpoint gets all of the endpoint's addresses, so grpc connects to the
// first that works. SubchannelsPerEndpoint are opened and connected as soon as
// the endpoint is resolved; a subchannel that goes IDLE is reconnected at
// once (grpc applies its backoff after failures). Removed endpoints'
// subchannels are shut down gracefully: calls on them finish.
//
// Scale up and down. A pick that sees an endpoint's calls in flight above
// TargetStreamsPerSubchannel × its READY subchannels asks the control loop
// for one more subchannel (at most one per picker, only when all of the
// endpoint's subchannels are READY, never above MaxSubchannelsPerEndpoint).
// Within an endpoint, calls spread over the base subchannels while those are
// below target, then fill the extras in order, so that extras drain when load
// falls; an extra that carries no call for SubchannelIdleTimeout is closed.
// Calls picked before a new connection is READY wait for stream quota on the
// connection they got: set TargetStreamsPerSubchannel below the servers'
// MaxConcurrentStreams so that connections are added before quota runs out.
//
// Picking. ChoiceCount endpoints are sampled (distinct when there are more
// endpoints than choices, all of them otherwise); the lowest score wins:
//
//	score = latency × (1 + 20 × failureShare) × (callsInFlight + 1)
//
// latency is a peak EWMA (Finagle, Linkerd): a slower sample replaces it at
// once, faster ones blend in with weight 1 − exp(−Δt/2s). Samples are exact
// mean latencies per 100 ms window, measured without per-call state: each
// endpoint keeps one atomic word holding calls in flight and Σstart − Σend
// (Little's law), which is what lets the done callback be built once per
// subchannel and picks allocate nothing. failureShare is the smoothed share
// of calls failing with Unavailable, ResourceExhausted, Internal, Unknown or
// DataLoss, so a backend that fails fast does not look fast. Failed calls do
// not count as latency samples. An endpoint without calls drifts towards the
// others' latency, so a slow endpoint is retried after a few seconds.
//
// Ejection. Ejection.ConsecutiveFailures failures in a row (codes as above)
// eject an endpoint for BaseEjectionTime × (ejections in a row), capped at
// MaxEjectionTime; the multiplier wears off by one per BaseEjectionTime
// healthy. An ejection that would take more than MaxEjectionPercent of the
// endpoints out does not happen. Ejected endpoints keep their connections
// and return on their own. If nothing but ejected endpoints can serve, they
// are used rather than failing calls. The caller's own cancellations and
// deadlines never count as failures, and other codes (NotFound, ...) are
// answers that reset the count.
//
// State. The channel is READY when any subchannel is, CONNECTING while any
// is connecting, and TRANSIENT_FAILURE when none can serve: then fail-fast
// calls fail with Unavailable and a message carrying the last connection
// (or resolver) error, and wait-for-ready calls wait.
//
// # Telemetry
//
// The channel hands the balancer a telemetry.SubchannelObserver through the
// resolver state (internal/observerattr; clientconn does it). The balancer
// reports every subchannel's state changes (IDLE when opened, SHUTDOWN when
// closed), ejections with their length, returns, and each endpoint's calls
// in flight with its peak-EWMA latency (EndpointLoad), sampled by the
// control loop when calls flowed or the in-flight count changed.
// The observer is never called with a lock held.
//
// # Concurrency and goroutines
//
// Pick and the done callbacks are safe for concurrent use, take no lock and
// do not allocate. Each balancer (one per channel) runs one goroutine, its
// control loop, which samples statistics (every 100 ms while calls flow,
// sleeping otherwise), ejects and returns endpoints and scales subchannels;
// grpc stops it by closing the balancer when the channel closes or goes idle,
// and Close waits for it.
package balancer
