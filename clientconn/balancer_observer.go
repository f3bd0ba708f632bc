package clientconn

import (
	"google.golang.org/grpc/connectivity"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// The balancer's per-endpoint events (issue 11) pass through to the
// user's observer; the debug page does not show them yet.

func (r *recorder) EndpointState(target, endpoint string, s connectivity.State, conns int) {
	r.next.EndpointState(target, endpoint, s, conns)
}

func (r *recorder) EndpointCalls(target, endpoint string, c telemetry.EndpointCalls) {
	r.next.EndpointCalls(target, endpoint, c)
}

// EndpointRemoved forgets the endpoint's record: the page shows the
// endpoints the resolver lists, and a churning address set does not use
// up maxDebugKeys with endpoints long gone.
func (r *recorder) EndpointRemoved(target, endpoint string) {
	if _, ok := r.endpoints.LoadAndDelete([2]string{target, endpoint}); ok {
		r.keys.Add(-1)
	}
	r.next.EndpointRemoved(target, endpoint)
}
