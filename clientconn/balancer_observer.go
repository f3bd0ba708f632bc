package clientconn

import (
	"google.golang.org/grpc/connectivity"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// The balancer's per-endpoint events feed the debug page's endpoint rows
// (state over the endpoint's connections, connections open, calls by
// outcome) and pass through to the user's observer.

func (r *recorder) EndpointState(target, endpoint string, s connectivity.State, conns int) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.aggState.Store(int32(s) + 1)
		e.conns.Store(int64(conns))
	}
	r.next.EndpointState(target, endpoint, s, conns)
}

func (r *recorder) EndpointCalls(target, endpoint string, c telemetry.EndpointCalls) {
	if e := load(r, &r.endpoints, [2]string{target, endpoint}, func() *endpointRecord { return new(endpointRecord) }); e != nil {
		e.ok.Add(c.OK)
		e.failed.Add(c.Failed)
		e.shed.Add(c.Shed)
	}
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
