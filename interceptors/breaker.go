package interceptors

import (
	"google.golang.org/grpc"

	"github.com/grpcreuse/grpcreuse/breaker"
)

// BreakerUnaryClientInterceptor fails unary calls fast while the breaker of
// their key in reg is open (codes.Unavailable, unwrapping to
// breaker.ErrOpen; nothing is sent) and reports every call's outcome to
// it. A call rejected by a Limiter further in, and the caller's own
// cancellation, count neither way. It is
// NewClientChain(WithBreakers(reg)).UnaryClientInterceptor().
func BreakerUnaryClientInterceptor(reg *breaker.Registry) grpc.UnaryClientInterceptor {
	return (&Chain{fixed: layer{reg: reg}}).UnaryClientInterceptor()
}

// BreakerStreamClientInterceptor is BreakerUnaryClientInterceptor for
// streams. A stream counts as one call: an open breaker fails its
// establishment, and its outcome is the status grpc reports when it ends
// (grpc.OnFinish), the caller's cancellation counting neither way. A
// stream the caller abandons without reading its status or cancelling it
// reports nothing; if it was a half-open probe, breaker.Config.ProbeTimeout
// bounds how long it holds the breaker half-open.
func BreakerStreamClientInterceptor(reg *breaker.Registry) grpc.StreamClientInterceptor {
	return (&Chain{fixed: layer{reg: reg}}).StreamClientInterceptor()
}
