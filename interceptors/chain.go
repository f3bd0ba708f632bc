package interceptors

import (
	"google.golang.org/grpc"

	"github.com/grpcreuse/grpcreuse/breaker"
)

// ClientTelemetry is the outermost layer of the recommended client chain:
// interceptors that should see every call, including those the breaker and
// the limiter fail fast. Nil fields are skipped.
type ClientTelemetry struct {
	Unary  grpc.UnaryClientInterceptor
	Stream grpc.StreamClientInterceptor
}

// ClientChain returns the recommended client interceptors, outermost
// first: telemetry, then the breaker (reg), then the limiter (lim). The
// breaker sits outside the limiter so that an open breaker fails fast
// without taking a slot, and a limiter rejection is not counted by the
// breaker. A nil reg or lim is skipped. The slices can be passed to
// grpc.WithChainUnaryInterceptor / grpc.WithChainStreamInterceptor (which
// go-grpc-middleware v2 uses too) next to other interceptors.
func ClientChain(tel ClientTelemetry, reg *breaker.Registry, lim *Limiter) ([]grpc.UnaryClientInterceptor, []grpc.StreamClientInterceptor) {
	var b func(string) *breaker.Registry
	if reg != nil {
		b = func(string) *breaker.Registry { return reg }
	}
	var l func(string) *Limiter
	if lim != nil {
		l = func(string) *Limiter { return lim }
	}
	return chain(tel, b, l)
}

// ClientChainDialOptions returns ClientChain as dial options.
func ClientChainDialOptions(tel ClientTelemetry, reg *breaker.Registry, lim *Limiter) []grpc.DialOption {
	return dialOptions(ClientChain(tel, reg, lim))
}

func chain(tel ClientTelemetry, b func(string) *breaker.Registry, l func(string) *Limiter) ([]grpc.UnaryClientInterceptor, []grpc.StreamClientInterceptor) {
	var unary []grpc.UnaryClientInterceptor
	var stream []grpc.StreamClientInterceptor
	if tel.Unary != nil {
		unary = append(unary, tel.Unary)
	}
	if tel.Stream != nil {
		stream = append(stream, tel.Stream)
	}
	if b != nil {
		unary = append(unary, breakerUnary(b))
		stream = append(stream, breakerStream(b))
	}
	if l != nil {
		unary = append(unary, limiterUnary(l))
		stream = append(stream, limiterStream(l))
	}
	return unary, stream
}

func dialOptions(unary []grpc.UnaryClientInterceptor, stream []grpc.StreamClientInterceptor) []grpc.DialOption {
	var opts []grpc.DialOption
	if len(unary) > 0 {
		opts = append(opts, grpc.WithChainUnaryInterceptor(unary...))
	}
	if len(stream) > 0 {
		opts = append(opts, grpc.WithChainStreamInterceptor(stream...))
	}
	return opts
}
