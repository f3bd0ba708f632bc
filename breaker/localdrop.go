package breaker

import (
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Calls that grpc-go's xDS policies drop on the client never reach a
// backend, so they say nothing about its health. grpc-go (1.85,
// internal/xds/balancer/clusterimpl/picker.go) fails them in the picker
// with codes.Unavailable and one of two messages, and marks them no other
// way (its dropError wrapper is unexported and unwrapped before the
// caller sees the error):
//
//   - drop_overloads (ClusterLoadAssignment.policy.drop_overloads, a
//     category's share of calls): "RPC is dropped";
//   - circuit breaking (Cluster.circuit_breakers max_requests):
//     "max requests <max> exceeded on service <cluster>" (from
//     internal/xds/xdsclient/requests_counter.go).
//
// A backend that answers UNAVAILABLE with exactly one of these messages is
// classified the same way: it cannot be told apart from the outside.
const (
	xdsDropMessage        = "RPC is dropped"
	xdsMaxRequestsPrefix  = "max requests "
	xdsMaxRequestsExceeds = " exceeded on service "
)

// xdsLocalDrop reports whether err, of code c, is a call that xDS dropped
// on the client (drop_overloads or max_requests circuit breaking). Such
// calls are excluded from the breaker: counted neither way. It does not
// allocate for the status errors grpc-go returns.
func xdsLocalDrop(c codes.Code, err error) bool {
	if c != codes.Unavailable {
		return false
	}
	msg, ok := statusMessage(err)
	if !ok {
		return false
	}
	if msg == xdsDropMessage {
		return true
	}
	rest, ok := strings.CutPrefix(msg, xdsMaxRequestsPrefix)
	return ok && strings.Contains(rest, xdsMaxRequestsExceeds)
}

// statusMessage returns the message of the status err is or wraps. It is
// not status.FromError's: for a wrapped status that one's message is the
// whole err.Error().
func statusMessage(err error) (string, bool) {
	if se, ok := err.(grpcStatuser); ok {
		return se.GRPCStatus().Message(), true
	}
	return wrappedStatusMessage(err)
}

// wrappedStatusMessage is statusMessage's slow path, apart so that only
// wrapped errors pay errors.As's allocation.
func wrappedStatusMessage(err error) (string, bool) {
	var se grpcStatuser
	if !errors.As(err, &se) {
		return "", false
	}
	return se.GRPCStatus().Message(), true
}

// grpcStatuser is what grpc-go's status errors implement.
type grpcStatuser interface{ GRPCStatus() *status.Status }
