package main

import (
	"time"

	"github.com/failsafe-go/failsafe-go/adaptivelimiter"
	"github.com/failsafe-go/failsafe-go/failsafegrpc"
	"google.golang.org/grpc"
)

// failsafeServerOptions installs failsafe-go's adaptive limiter (its
// defaults: limits 1..200 starting at 20) as its documentation recommends
// on a server: the tap.ServerInHandle rejects (check only) before the
// stream exists, the unary interceptor holds the permit and records the
// call's latency. It is the peer the toolkit's Shedder is measured against.
//
// tuned gives it the Shedder's adaptive windows (25 ms and at least 10
// samples, instead of its default 1 s and 50), so that it can adapt
// within the bench's 1 s overload.
func failsafeServerOptions(tuned bool) []grpc.ServerOption {
	lim := adaptivelimiter.NewWithDefaults[any]()
	if tuned {
		lim = adaptivelimiter.NewBuilder[any]().WithRecentWindow(25*time.Millisecond, time.Second, 10).Build()
	}
	return []grpc.ServerOption{
		grpc.InTapHandle(failsafegrpc.NewServerInHandle[any](lim)),
		grpc.UnaryInterceptor(failsafegrpc.NewUnaryServerInterceptor[any](lim)),
	}
}
