package main

import (
	"github.com/failsafe-go/failsafe-go/adaptivelimiter"
	"github.com/failsafe-go/failsafe-go/failsafegrpc"
	"google.golang.org/grpc"
)

// failsafeServerOptions installs failsafe-go's adaptive limiter (its
// defaults: limits 1..200 starting at 20) as its documentation recommends
// on a server: the tap.ServerInHandle rejects (check only) before the
// stream exists, the unary interceptor holds the permit and records the
// call's latency. It is the peer the toolkit's Shedder is measured against.
func failsafeServerOptions() []grpc.ServerOption {
	lim := adaptivelimiter.NewWithDefaults[any]()
	return []grpc.ServerOption{
		grpc.InTapHandle(failsafegrpc.NewServerInHandle[any](lim)),
		grpc.UnaryInterceptor(failsafegrpc.NewUnaryServerInterceptor[any](lim)),
	}
}
