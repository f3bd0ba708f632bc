// Package balancer is grpcreuse's load-balancing policy, registered with
// grpc as "grpcreuse_least_loaded" (Name). It is a parent over grpc's own
// pick_first leaves (gRFC A61), several per endpoint: it keeps several
// connections per endpoint, opening more under load and closing extras when
// idle, and picks with a round-robin candidate challenged by a random one
// over a score of latency and calls in flight, ejecting endpoints that keep
// failing. docs/balancer.md in the repository is the user guide.
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
// An invalid value, an unknown field or a field given twice is an error
// naming the field, the value and what is allowed (with the nearest known
// name for a misspelt field); nothing is clamped. A parsed *Config marshals
// back (MarshalJSON) to the JSON it came from, so it survives grpc's
// re-encoding of parsed configs (xDS does that).
//
// # Design
//
// Connections. Every connection is a pick_first child balancer given all
// of the endpoint's addresses, with pick_first's health listener enabled.
// So each connection is made exactly as grpc's own policies make theirs:
// happy eyeballs over the addresses (250 ms between attempts), client-side
// health checking when the service config has a healthCheckConfig (a
// NOT_SERVING backend gets no calls), and xDS outlier-detection ejections
// delivered through the health listener. The policy never calls
// NewSubConn itself. SubchannelsPerEndpoint children are made as soon as
// the endpoint is resolved; a child that goes IDLE (its connection broke)
// is reconnected by the control loop at once (grpc applies its backoff to
// failed attempts). Removed endpoints' children are closed gracefully:
// calls on them finish.
//
// Scale up and down. A pick that sees an endpoint's calls in flight above
// TargetStreamsPerSubchannel × its READY connections asks the control loop
// for one more connection (at most one per picker, only when all of the
// endpoint's connections are READY, never above
// MaxSubchannelsPerEndpoint). Within an endpoint, calls spread over the
// base connections while those are below target, then fill the extras in
// order, so that extras drain when load falls; an extra that carries no
// call for SubchannelIdleTimeout is closed.
//
// Picking. The next endpoint in round-robin order is the candidate; it is
// challenged by ChoiceCount−1 random others (all of them when there are no
// more endpoints than that). Each endpoint's score is
//
//	weight × (callsInFlight + 1)
//	weight = latencyFactor × (1 + 20 × failureShare) × (1 + shedShare)
//
// and a challenger, scored with one more call in flight than it has, must
// beat the candidate by more than 30% to take the call. Endpoints alike
// therefore get calls as evenly as round_robin gives them, while a slower,
// failing or busier one loses. latencyFactor is 1 for endpoints whose
// latency estimate is within 1.5× of the fastest endpoint's, and grows in
// proportion beyond. The estimate is a peak EWMA (Finagle, Linkerd) of exact
// mean latencies per 100 ms window, measured without per-call state: each
// endpoint keeps one atomic word holding calls in flight and Σstart − Σend
// (Little's law), which is what lets the done callback be built once per
// connection and picks allocate nothing. failureShare is the smoothed share
// of calls failing with one of Ejection.FailureCodes; shedShare the share
// the servers refused with RESOURCE_EXHAUSTED (back-pressure: a small
// penalty, so load moves away without herding). Failed and shed calls are
// not latency samples (they end fast). An endpoint without calls drifts
// towards the others' latency; one that was avoided as slow then takes one
// call at a time until a call measures it again.
//
// Ejection. Ejection.ConsecutiveFailures calls in a row failing with one of
// Ejection.FailureCodes (UNAVAILABLE by default) eject an endpoint for
// BaseEjectionTime × (ejections in a row), capped at MaxEjectionTime; the
// multiplier wears off by one per BaseEjectionTime healthy. An ejection
// that would take more than MaxEjectionPercent of the endpoints out does
// not happen. Ejected endpoints keep their connections and return on their
// own. If nothing but ejected endpoints can serve, they are used rather
// than failing calls; while another endpoint is connecting, calls wait up
// to 1 s for it first (as grpc's outlier detection would, but bounded: a
// connection that hangs does not hold calls back). RESOURCE_EXHAUSTED from a server never ejects; the
// caller's own cancellations and deadlines never count as failures; other
// codes are answers that reset the count. A RESOURCE_EXHAUSTED that grpc
// raised on the client (a message over the size limit) is an answer.
//
// Black holes. An endpoint whose calls time out (DEADLINE_EXCEEDED) three
// times in a row while other endpoints answer is held out of picking for
// 1 s, then probed with one call at a time; each probe that times out
// again doubles the hold, up to MaxEjectionTime. A hold is not an
// ejection: it is not reported as one, and a held endpoint is still used if
// nothing else can serve.
//
// State. The channel is READY when any connection is, CONNECTING while any
// is connecting (and for up to 1 s while calls wait for a connecting
// endpoint rather than go to ejected ones, though those are READY), and
// TRANSIENT_FAILURE when none can serve: then fail-fast
// calls fail with Unavailable and a message carrying the last connection
// (or health-check, or resolver) error, saying so when every endpoint
// fails its health check, and wait-for-ready calls wait.
//
// # Telemetry
//
// The channel hands the balancer a telemetry.SubchannelObserver through the
// resolver state (internal/observerattr; clientconn does it). The balancer
// reports every connection's state changes (IDLE when opened, SHUTDOWN
// when closed), each endpoint's state aggregated over its connections with
// its count of open connections (EndpointState), its finished calls by
// outcome (EndpointCalls: OK, failed, shed, cancelled, timed out),
// ejections with their length, returns, removals, and each endpoint's calls
// in flight with its latency estimate (EndpointLoad). Call counts and loads
// are sampled by the control loop, never reported per call. The observer is
// never called with a lock held. Ejections, returns, holds, probes and
// connection scaling are also logged through the grpclog component
// "grpcreuse-balancer" at verbosity 2. Snapshot returns the same picture
// for every channel of the process at once, for debug pages.
//
// # Concurrency and goroutines
//
// Pick and the done callbacks are safe for concurrent use, take no lock and
// do not allocate. Each balancer (one per channel) runs one goroutine, its
// control loop, which samples statistics (every 100 ms while calls flow,
// sleeping otherwise), ejects and returns endpoints, holds black holes,
// scales connections and reconnects idle ones; grpc stops it by closing the
// balancer when the channel closes or goes idle, and Close waits for it.
// The pick_first children start no goroutine of their own beyond grpc's
// happy-eyeballs timers, which Close cancels.
package balancer
