package clientconn

import (
	"fmt"
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
// It also keeps the resolver's errors (an unknown host) as the entry's
// last connection error, for WithWarmUp.
func withObserverResolver(target string, obs telemetry.SubchannelObserver, lookup func(string) resolver.Builder, s *shared) (grpc.DialOption, bool) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, false
	}
	b := lookup(u.Scheme)
	if b == nil {
		return nil, false
	}
	return grpc.WithResolvers(observingBuilder{Builder: b, obs: obs, s: s}), true
}

type observingBuilder struct {
	resolver.Builder
	obs telemetry.SubchannelObserver
	s   *shared
}

func (b observingBuilder) Build(t resolver.Target, cc resolver.ClientConn, o resolver.BuildOptions) (resolver.Resolver, error) {
	return b.Builder.Build(t, observingCC{ClientConn: cc, obs: b.obs, s: b.s}, o)
}

type observingCC struct {
	resolver.ClientConn
	obs telemetry.SubchannelObserver
	s   *shared
}

func (c observingCC) UpdateState(s resolver.State) error {
	empty := len(s.Addresses) == 0 && len(s.Endpoints) == 0
	err := c.ClientConn.UpdateState(observerattr.Set(s, c.obs))
	switch {
	case empty: // grpc's dns resolver reports an unknown host as no addresses
		c.s.recordErr(fmt.Errorf("resolving %q: no addresses (no such host?)", c.s.key.target))
	case err != nil:
		c.s.recordErr(fmt.Errorf("resolving %q: %w", c.s.key.target, err))
	}
	return err
}

// ReportError keeps the resolver's error (for example "no such host") for
// WithWarmUp's timeout message, and passes it on.
func (c observingCC) ReportError(err error) {
	c.s.recordErr(fmt.Errorf("resolving %q: %w", c.s.key.target, err))
	c.ClientConn.ReportError(err)
}
