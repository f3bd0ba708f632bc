package clientconn

import (
	"net/url"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"

	_ "github.com/grpcreuse/grpcreuse/balancer" // registers grpcreuse_least_loaded for Factory users
	"github.com/grpcreuse/grpcreuse/internal/observerattr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// resolver returns the builder the Factory's connections use for scheme:
// the one handed to WithResolvers, else grpc's registered one.
func (f *Factory) resolver(scheme string) resolver.Builder {
	if b, ok := f.opts.resolvers[scheme]; ok {
		return b
	}
	return resolver.Get(scheme)
}

// withObserverResolver returns a dial option that wraps the resolver of
// target's scheme (as lookup finds it: the Factory's own, else grpc's
// registered one), so every resolver state carries obs for the grpcreuse
// balancer: grpc builds balancers from a global registry, and the
// resolver state is how one channel hands its own observer down.
func withObserverResolver(target string, obs telemetry.SubchannelObserver, lookup func(string) resolver.Builder) (grpc.DialOption, bool) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, false
	}
	b := lookup(u.Scheme)
	if b == nil {
		return nil, false
	}
	return grpc.WithResolvers(observingBuilder{Builder: b, obs: obs}), true
}

type observingBuilder struct {
	resolver.Builder
	obs telemetry.SubchannelObserver
}

func (b observingBuilder) Build(t resolver.Target, cc resolver.ClientConn, o resolver.BuildOptions) (resolver.Resolver, error) {
	return b.Builder.Build(t, observingCC{ClientConn: cc, obs: b.obs}, o)
}

type observingCC struct {
	resolver.ClientConn
	obs telemetry.SubchannelObserver
}

func (c observingCC) UpdateState(s resolver.State) error {
	return c.ClientConn.UpdateState(observerattr.Set(s, c.obs))
}
