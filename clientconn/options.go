package clientconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"

	grcreds "github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Defaults of the Factory options.
const (
	// DefaultIdleTimeout is how long a connection without handles stays open.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultMaxIdle is how many connections without handles are kept.
	DefaultMaxIdle = 64
	// DefaultDrainTimeout is how long a retired connection waits for its
	// in-flight calls before it is closed anyway.
	DefaultDrainTimeout = 30 * time.Second
)

// An Option configures a Factory.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// options is the resolved configuration of a Factory.
type options struct {
	creds         credentials.TransportCredentials
	tlsConfig     *tls.Config // WithTLS; credentials are built per tenant in New
	sessions      *grcreds.SessionCache
	keepalive     *Keepalive
	idleTimeout   time.Duration
	maxIdle       int
	maxAge        time.Duration
	drainTimeout  time.Duration
	serviceConfig string
	unary         []grpc.UnaryClientInterceptor
	stream        []grpc.StreamClientInterceptor
	dialOptions   []grpc.DialOption
	dialer        func(context.Context, string) (net.Conn, error)
	observer      telemetry.Observer
	observerSet   bool
	meters        metric.MeterProvider
	tracers       trace.TracerProvider
	preconnect    []string
	resolvers     map[string]resolver.Builder // WithResolvers, by scheme

	// Test knobs, set through export_test.go.
	noJitter bool

	errs []error // invalid options, reported by New
}

func defaultOptions() *options {
	return &options{
		idleTimeout:  DefaultIdleTimeout,
		maxIdle:      DefaultMaxIdle,
		drainTimeout: DefaultDrainTimeout,
		observer:     telemetry.Nop{},
	}
}

func (o *options) fail(format string, args ...any) {
	o.errs = append(o.errs, fmt.Errorf("clientconn: "+format, args...))
}

// WithTLS makes the Factory's connections use TLS with cfg (cloned),
// through grpcreuse/credentials: TLS sessions are resumed from one
// session cache shared by the Factory's connections, kept apart per
// tenant (WithTenant) and per backend address, and every handshake is
// reported to the Factory's observer. A cfg that credentials.NewTLS
// refuses (for example one relying on VerifyPeerCertificate, which
// crypto/tls skips on resumption) fails New with its reason.
func WithTLS(cfg *tls.Config) Option {
	return optionFunc(func(o *options) {
		if cfg == nil {
			o.fail("WithTLS: config is nil")
			return
		}
		o.tlsConfig = cfg.Clone()
	})
}

// WithSessionCache makes WithTLS resume sessions from c instead of a
// cache of the Factory's own (credentials.NewSessionCache with its
// defaults), for example to size it or to read its Stats.
func WithSessionCache(c *grcreds.SessionCache) Option {
	return optionFunc(func(o *options) {
		if c == nil {
			o.fail("WithSessionCache: cache is nil")
			return
		}
		o.sessions = c
	})
}

// WithTransportCredentials sets the credentials of the Factory's
// connections, for example insecure.NewCredentials() for plaintext. The
// credentials value is part of the sharing key, so it must be comparable
// (a pointer, as every credentials type in grpc-go is).
func WithTransportCredentials(c credentials.TransportCredentials) Option {
	return optionFunc(func(o *options) {
		if err := checkCreds(c); err != nil {
			o.fail("WithTransportCredentials: %v", err)
			return
		}
		o.creds = c
	})
}

// WithKeepalive sets the client keepalive of every connection. Use one of
// the presets (KeepaliveDefault, KeepaliveFastDetect) so the servers'
// enforcement matches; a pair that would make the server answer with a
// too_many_pings GOAWAY is rejected.
func WithKeepalive(k Keepalive) Option {
	return optionFunc(func(o *options) {
		if err := k.Validate(); err != nil {
			o.fail("WithKeepalive: %v", err)
			return
		}
		o.keepalive = &k
	})
}

// WithIdleTimeout sets how long a connection without handles stays open
// before it is closed. Default DefaultIdleTimeout; must be positive.
func WithIdleTimeout(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d <= 0 {
			o.fail("WithIdleTimeout is %v; must be positive", d)
			return
		}
		o.idleTimeout = d
	})
}

// WithMaxIdle sets how many connections without handles are kept open;
// beyond it the least recently used one is closed. Zero closes a
// connection as soon as its last handle is closed. Default DefaultMaxIdle.
func WithMaxIdle(n int) Option {
	return optionFunc(func(o *options) {
		if n < 0 {
			o.fail("WithMaxIdle is %d; must be 0 or more", n)
			return
		}
		o.maxIdle = n
	})
}

// WithMaxConnectionAge replaces each connection with a fresh one after d
// (±10% jitter so a fleet does not reconnect at once), so long-lived
// clients pick up new backends behind DNS or a load balancer. New calls
// move to the new connection; the old one closes when its in-flight calls
// and streams end (bounded by WithDrainTimeout). A replacement that does
// not become READY within min(WithDrainTimeout, 10s) does not replace a
// connection that is READY: the current one stays until the next period.
// A connection without handles (idle in the pool) is not replaced; it is
// at the first period after a Get takes it back. Default: never; d must
// be positive.
func WithMaxConnectionAge(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d <= 0 {
			o.fail("WithMaxConnectionAge is %v; must be positive", d)
			return
		}
		o.maxAge = d
	})
}

// WithDrainTimeout bounds how long a retired connection (replaced for its
// age, evicted, or closed by Factory.Close) waits for its in-flight calls
// before it is closed anyway, failing what is left with codes.Canceled.
// Set it above your longest stream. Default DefaultDrainTimeout; must be
// positive.
func WithDrainTimeout(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d <= 0 {
			o.fail("WithDrainTimeout is %v; must be positive", d)
			return
		}
		o.drainTimeout = d
	})
}

// WithServiceConfig sets the default service config JSON of every
// connection. The document may hold, beside gRPC's own fields
// (loadBalancingConfig, methodConfig with retry policies, ...), a
// top-level "grpcreuse" object with circuit breaker and concurrency limit
// policies per method (see interceptors.SplitServiceConfig): gRPC gets the
// rest, and the Factory chains the breaker and limiter interceptors it
// describes. An invalid document fails New, naming the field and
// value. The compacted JSON is part of the sharing key.
func WithServiceConfig(json string) Option {
	return optionFunc(func(o *options) {
		sc, err := compactJSON(json)
		if err != nil {
			o.fail("WithServiceConfig: %v", err)
			return
		}
		o.serviceConfig = sc
	})
}

// WithUnaryInterceptors chains interceptors, in order, on every connection,
// outside the interceptors of the service config's grpcreuse policy. A nil
// interceptor fails New.
func WithUnaryInterceptors(i ...grpc.UnaryClientInterceptor) Option {
	return optionFunc(func(o *options) {
		for n, x := range i {
			if x == nil {
				o.fail("WithUnaryInterceptors: interceptor %d is nil", n)
				return
			}
		}
		o.unary = append(o.unary, i...)
	})
}

// WithStreamInterceptors chains interceptors, in order, on every connection,
// outside the interceptors of the service config's grpcreuse policy. A nil
// interceptor fails New.
func WithStreamInterceptors(i ...grpc.StreamClientInterceptor) Option {
	return optionFunc(func(o *options) {
		for n, x := range i {
			if x == nil {
				o.fail("WithStreamInterceptors: interceptor %d is nil", n)
				return
			}
		}
		o.stream = append(o.stream, i...)
	})
}

// WithDialOptions adds grpc.DialOptions to every connection, after the
// Factory's own. Do not pass credentials, interceptors, keepalive, service
// config or a dialer here: use the Factory's options, which it needs to
// know about for sharing and telemetry.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return optionFunc(func(o *options) {
		for n, x := range opts {
			if x == nil { // grpc.NewClient would panic on it at the first Get
				o.fail("WithDialOptions: option %d is nil", n)
				return
			}
		}
		o.dialOptions = append(o.dialOptions, opts...)
	})
}

// WithDialer sets how TCP connections are made (addr is "host:port", or
// "unix:path" for unix sockets). The Factory always dials through its own
// dialer, to time connects and keep the last connection error; like any
// custom dialer in grpc-go, this bypasses grpc's HTTP CONNECT proxy
// support. Default: a net.Dialer with OS-default TCP keepalive.
func WithDialer(d func(ctx context.Context, addr string) (net.Conn, error)) Option {
	return optionFunc(func(o *options) {
		if d == nil {
			o.fail("WithDialer: dialer is nil")
			return
		}
		o.dialer = d
	})
}

// WithObserver reports pool and connection events to obs (for example a
// telemetry.New implementation). Default telemetry.Nop.
func WithObserver(obs telemetry.Observer) Option {
	return optionFunc(func(o *options) {
		if obs == nil {
			o.fail("WithObserver: observer is nil")
			return
		}
		o.observer, o.observerSet = obs, true
	})
}

// WithMeterProvider records the Factory's telemetry (pool, handshakes,
// and what the balancer, breakers, limiters and session cache report)
// as OpenTelemetry metrics from mp, through telemetry.New, and installs
// its stats handler on every connection. Use it or WithObserver, not
// both. It adds no per-call metrics: pair it with grpc-go's
// stats/opentelemetry plugin for those.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) {
		if mp == nil {
			o.fail("WithMeterProvider: provider is nil")
			return
		}
		o.meters = mp
	})
}

// WithTracerProvider records TLS handshakes as spans from tp, and marks
// each call's span with whether its connection was new and, if so, how its
// handshake went (see telemetry.Telemetry.StatsHandler). Only this option
// installs that stats handler, and not for a no-op provider, so metrics
// alone add nothing per call. Use it or WithObserver, not both.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) {
		if tp == nil {
			o.fail("WithTracerProvider: provider is nil")
			return
		}
		o.tracers = tp
	})
}

// WithPreconnect makes New start connecting to targets (with the
// Factory's default credentials and service config, no tenant) so the
// first Get finds a warm connection. The connections wait in the pool
// like any connection without handles: the idle timeout applies, and New
// fails if there are more distinct targets than WithMaxIdle keeps.
func WithPreconnect(targets ...string) Option {
	return optionFunc(func(o *options) { o.preconnect = append(o.preconnect, targets...) })
}

// A GetOption configures one Factory.Get.
type GetOption interface{ applyGet(*getOptions) }

type getOptionFunc func(*getOptions)

func (f getOptionFunc) applyGet(o *getOptions) { f(o) }

type getOptions struct {
	tenant        string
	waitReady     bool
	creds         credentials.TransportCredentials
	serviceConfig *string
	err           error
}

// WithTenant makes the connection belong to tenant: connections are never
// shared between tenants, and with WithTLS neither are TLS sessions.
func WithTenant(tenant string) GetOption {
	return getOptionFunc(func(o *getOptions) { o.tenant = tenant })
}

// WithWarmUp makes Get return only once the connection is READY, or fail
// when ctx ends: the first call then finds a warm connection. It is not
// grpc's per-call grpc.WaitForReady, which makes each call wait. On
// timeout the error wraps ctx.Err() and says why the connection is not
// ready: the last resolver, dial or handshake error (an unknown host, a
// refused connection, a certificate the server rejected, a plaintext
// client talking to a TLS server). A max-age replacement of the
// connection during the wait does not fail it: Get waits for the new one.
func WithWarmUp() GetOption {
	return getOptionFunc(func(o *getOptions) { o.waitReady = true })
}

// WithWaitForReady is WithWarmUp.
//
// Deprecated: use WithWarmUp; the name was easily confused with grpc's
// per-call grpc.WaitForReady.
func WithWaitForReady() GetOption { return WithWarmUp() }

// WithTargetCredentials overrides the Factory's transport credentials for
// this Get. Connections with different credentials are never shared, and
// credentials are compared by identity: build them once and pass the same
// value to every Get that should share a connection (a fresh
// credentials.NewTLS(cfg) on each Get makes a new connection, and a new
// TLS handshake, each time).
func WithTargetCredentials(c credentials.TransportCredentials) GetOption {
	return getOptionFunc(func(o *getOptions) {
		if err := checkCreds(c); err != nil {
			o.err = fmt.Errorf("clientconn: WithTargetCredentials: %w", err)
			return
		}
		o.creds = c
	})
}

// WithTargetServiceConfig overrides the Factory's default service config
// for this Get. Connections with different service configs are never shared.
func WithTargetServiceConfig(json string) GetOption {
	return getOptionFunc(func(o *getOptions) {
		sc, err := compactJSON(json)
		if err != nil {
			o.err = fmt.Errorf("clientconn: WithTargetServiceConfig: %w", err)
			return
		}
		o.serviceConfig = &sc
	})
}

// checkCreds rejects credentials that cannot identify a connection: nil,
// or a value that is not comparable and would panic as a map key. The
// check is on the dynamic value: a struct type is comparable, yet one
// holding an interface field whose value is a slice panics when compared.
func checkCreds(c credentials.TransportCredentials) error {
	if c == nil {
		return fmt.Errorf("credentials are nil")
	}
	if v := reflect.ValueOf(c); !v.Comparable() {
		return fmt.Errorf("credentials of type %v are not comparable (a map, slice or func inside); pass a pointer", v.Type())
	}
	return nil
}

// compactJSON normalises a JSON document so that spellings differing only
// in white space share a connection. grpc validates the content.
func compactJSON(s string) (string, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		return "", fmt.Errorf("service config is not valid JSON: %v", err)
	}
	return b.String(), nil
}

// WithResolvers hands the Factory resolver builders for its targets'
// schemes, as grpc.WithResolvers does for one ClientConn, without
// registering them globally (resolver.Register is for init time only).
// A builder here takes precedence over a registered one of the same
// scheme; an xDS resolver builder (xds:///) works like any other. Targets
// of different schemes never share a connection.
//
// Custom resolvers must come through this option, not through a
// grpc.WithResolvers in WithDialOptions: the Factory must know the scheme
// to canonicalise targets, and wraps the builder so its observer reaches
// the grpcreuse balancer. Two builders of one scheme are an error.
func WithResolvers(builders ...resolver.Builder) Option {
	return optionFunc(func(o *options) {
		for i, b := range builders {
			if b == nil {
				o.fail("WithResolvers: builder %d is nil", i)
				return
			}
			scheme := b.Scheme()
			if scheme == "" || strings.ToLower(scheme) != scheme {
				o.fail("WithResolvers: builder %d has scheme %q; must be non-empty and lower case, as grpc matches schemes", i, scheme)
				return
			}
			if o.resolvers == nil {
				o.resolvers = map[string]resolver.Builder{}
			}
			if _, dup := o.resolvers[scheme]; dup {
				o.fail("WithResolvers: two builders for scheme %q", scheme)
				return
			}
			o.resolvers[scheme] = b
		}
	})
}
