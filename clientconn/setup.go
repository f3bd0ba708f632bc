package clientconn

import (
	"fmt"

	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	grcreds "github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"
)

// How New turns options into what every connection is dialled with.

func (f *Factory) baseDialOptions() []grpc.DialOption {
	o := f.opts
	var d []grpc.DialOption
	if o.keepalive != nil {
		d = append(d, grpc.WithKeepaliveParams(o.keepalive.Client))
	}
	if len(o.unary) > 0 {
		d = append(d, grpc.WithChainUnaryInterceptor(o.unary...))
	}
	if len(o.stream) > 0 {
		d = append(d, grpc.WithChainStreamInterceptor(o.stream...))
	}
	return append(d, o.dialOptions...)
}

// setUpTelemetry builds the OpenTelemetry observer of WithMeterProvider
// and WithTracerProvider, and its per-connection stats handler.
func (f *Factory) setUpTelemetry() error {
	o := f.opts
	if o.meters == nil && o.tracers == nil {
		return nil
	}
	if o.observerSet {
		return fmt.Errorf("clientconn: WithObserver and WithMeterProvider/WithTracerProvider are both set; use one")
	}
	var topts []opentelemetry.Option
	if o.meters != nil {
		topts = append(topts, opentelemetry.WithMeterProvider(o.meters))
	}
	if o.tracers != nil {
		topts = append(topts, opentelemetry.WithTracerProvider(o.tracers))
	}
	t, err := opentelemetry.New(topts...)
	if err != nil {
		return fmt.Errorf("clientconn: %w", err)
	}
	f.obs, f.tel = t, t
	// The stats handler only marks spans. Install it only for a tracer
	// that records: grpc-go builds its per-call stats events (15
	// allocations) for any installed handler, and with tracing on a
	// tracing handler already pays for them.
	if _, noop := o.tracers.(tracenoop.TracerProvider); o.tracers != nil && !noop {
		o.dialOptions = append([]grpc.DialOption{grpc.WithStatsHandler(t.StatsHandler())}, o.dialOptions...)
	}
	return nil
}

// setUpTLS builds WithTLS's shared session cache and the credentials of
// the default tenant, which validates the config once for all tenants.
func (f *Factory) setUpTLS() error {
	o := f.opts
	switch {
	case o.tlsConfig == nil && o.sessions != nil:
		return fmt.Errorf("clientconn: WithSessionCache needs WithTLS")
	case o.tlsConfig == nil:
		return nil
	case o.creds != nil:
		return fmt.Errorf("clientconn: WithTLS and WithTransportCredentials are both set; use one")
	}
	if o.sessions == nil {
		var err error
		if o.sessions, err = grcreds.NewSessionCache(grcreds.WithObserver(f.obs)); err != nil {
			return fmt.Errorf("clientconn: WithTLS: %w", err)
		}
	}
	_, err := f.credsForTenant("") // validates the config for every tenant
	return err
}

// tenantCreds are the WithTLS credentials of one tenant, kept while pool
// entries use them: a tenant's connections share a key and its sessions
// stay its own, and a process that sees many tenants over its life does
// not keep credentials for each forever.
type tenantCreds struct {
	creds   credentials.TransportCredentials
	entries int // pool entries made with creds; guarded by Factory.mu
}

// credsForTenant returns the WithTLS credentials of tenant: those of its
// live entries, or new ones that the Factory keeps only once an entry is
// made with them (Factory.install), so a failed Get stores nothing.
func (f *Factory) credsForTenant(tenant string) (credentials.TransportCredentials, error) {
	f.mu.Lock()
	tc, ok := f.tenants[tenant]
	f.mu.Unlock()
	if ok {
		return tc.creds, nil
	}
	c, err := grcreds.NewTLS(f.opts.tlsConfig,
		grcreds.WithSessionCache(f.opts.sessions),
		grcreds.WithTenant(tenant),
		grcreds.WithHandshakeObserver(f.obs))
	if err != nil {
		return nil, fmt.Errorf("clientconn: WithTLS: %w", err)
	}
	return c, nil
}

// releaseTenantLocked forgets an entry's use of its tenant's credentials,
// and the credentials with their last entry.
func (f *Factory) releaseTenantLocked(s *shared) {
	tc := s.tenantCreds
	if tc == nil {
		return
	}
	s.tenantCreds = nil
	if tc.entries--; tc.entries == 0 && f.tenants[s.key.tenant] == tc {
		delete(f.tenants, s.key.tenant)
	}
}

// preconnect validates every WithPreconnect target, then starts connecting
// to each; the connections wait in the pool without handles.
func (f *Factory) preconnect() error {
	type pre struct {
		k   key
		tls bool
	}
	keys := make([]pre, 0, len(f.opts.preconnect))
	seen := make(map[key]bool, len(f.opts.preconnect))
	for _, t := range f.opts.preconnect {
		k, tls, _, err := f.keyFor(t, &getOptions{})
		if err != nil {
			return fmt.Errorf("clientconn: WithPreconnect: %w", err)
		}
		if !seen[k] { // spellings of one target are one connection
			seen[k] = true
			keys = append(keys, pre{k, tls})
		}
	}
	// The connections wait in the idle pool: one it cannot keep would be
	// dialled and closed at once.
	if len(keys) > f.opts.maxIdle {
		return fmt.Errorf("clientconn: WithPreconnect: %d distinct targets, but WithMaxIdle is %d: the idle pool cannot keep them; raise WithMaxIdle", len(keys), f.opts.maxIdle)
	}
	for _, p := range keys {
		c, err := f.get(p.k, p.tls, nil)
		if err != nil {
			return fmt.Errorf("clientconn: WithPreconnect: %w", err)
		}
		c.s.cur.Load().cc.Connect()
		c.Close()
	}
	return nil
}
