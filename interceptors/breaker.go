package interceptors

import (
	"context"
	"errors"

	"google.golang.org/grpc"

	"github.com/grpcreuse/grpcreuse/breaker"
)

// BreakerUnaryClientInterceptor fails unary calls fast while the breaker of
// their key in reg is open (codes.Unavailable, unwrapping to
// breaker.ErrOpen; nothing is sent) and reports every call's outcome to
// it. A call rejected by a Limiter further in, and the caller's own
// cancellation, count neither way.
func BreakerUnaryClientInterceptor(reg *breaker.Registry) grpc.UnaryClientInterceptor {
	return breakerUnary(func(string) *breaker.Registry { return reg })
}

// BreakerStreamClientInterceptor is BreakerUnaryClientInterceptor for
// streams. A stream counts as one call: an open breaker fails its
// establishment, and its outcome is its final status (read by RecvMsg), or
// the caller's cancellation, which counts neither way.
func BreakerStreamClientInterceptor(reg *breaker.Registry) grpc.StreamClientInterceptor {
	return breakerStream(func(string) *breaker.Registry { return reg })
}

func breakerUnary(route func(method string) *breaker.Registry) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		reg := route(method)
		if reg == nil {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		tok, err := reg.Get(cc.Target(), method).Allow()
		if err != nil {
			return err
		}
		reported := false
		defer func() {
			if !reported { // invoker panicked: a failure, so a probe is never stuck
				tok.Done(context.Background(), errPanicked)
			}
		}()
		err = invoker(ctx, method, req, reply, cc, opts...)
		reported = true
		reportBreaker(tok, ctx, err)
		return err
	}
}

var errPanicked = errors.New("interceptors: call panicked")

func reportBreaker(tok breaker.Token, ctx context.Context, err error) {
	if err != nil && (errors.Is(err, ErrLimited) || err == errClientSide) {
		tok.Ignore() // decided on this side; says nothing about the backend
		return
	}
	tok.Done(ctx, err)
}

func breakerStream(route func(method string) *breaker.Registry) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		reg := route(method)
		if reg == nil {
			return streamer(ctx, desc, cc, method, opts...)
		}
		tok, err := reg.Get(cc.Target(), method).Allow()
		if err != nil {
			return nil, err
		}
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			reportBreaker(tok, ctx, err)
			return nil, err
		}
		s := &endStream{ClientStream: cs, ctx: ctx, serverStreams: desc.ServerStreams}
		s.end = func(err error) { reportBreaker(tok, ctx, err) }
		s.watch()
		return s, nil
	}
}
