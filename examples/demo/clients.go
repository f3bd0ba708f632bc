package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/interceptors"
)

// The six logical services of the process. The first five call the pool
// of three backends; the ledger calls b2 alone (its primary, say).
var serviceNames = [6]string{"checkout", "search", "profile", "feed", "status", "ledger"}

const (
	statusService = 4 // calls grpc.health.v1.Health/Check on the pool
	ledgerService = 5 // calls TestService/EmptyCall on b2 only
)

// callTimeout is every call's deadline.
const callTimeout = 250 * time.Millisecond

// methodConfig is gRPC's part both sides share: retry calls that fail
// with UNAVAILABLE on another attempt (every method here is idempotent).
const methodConfig = `"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}, {"service": "grpc.health.v1.Health"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.02s", "maxBackoff": "0.1s",
      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]`

// grpcreuseServiceConfig is the grpcreuse side's one document: its balancer,
// the retry policy, and breakers and limiters for every method. The times
// are short so that the phases of a short demo show them working.
const grpcreuseServiceConfig = `{
  "loadBalancingConfig": [{"` + balancer.Name + `": {
    "subchannelsPerEndpoint": 1, "maxSubchannelsPerEndpoint": 4, "targetStreamsPerSubchannel": 32,
    "ejection": {"consecutiveFailures": 3, "baseEjectionTime": "0.5s", "maxEjectionTime": "1s", "maxEjectionPercent": 50}}}],
  ` + methodConfig + `,
  "grpcreuse": {"methodConfig": [{"name": [{}],
    "circuitBreaker": {"consecutiveFailures": 5, "openTimeout": "0.5s"},
    "concurrencyLimit": {"algorithm": "aimd", "limit": 32, "minLimit": 16, "maxLimit": 128, "maxQueued": 32, "maxWait": "0.05s"}}]}
}`

// plainPoolConfig and plainLedgerConfig are what a careful plain grpc-go
// user writes: round_robin over the pool and the same retry policy.
const (
	plainPoolConfig   = `{"loadBalancingConfig": [{"round_robin": {}}], ` + methodConfig + `}`
	plainLedgerConfig = `{` + methodConfig + `}`
)

// clientSide is one way of running the six services, against its own three
// backends.
type clientSide struct {
	name     string
	servers  *serverSide
	services [6]func(context.Context) error
	close    func()
	tally    tally
	// grpcreuse only: its Factory and the metrics it records.
	factory *clientconn.Factory
	metrics *sdkmetric.ManualReader
}

// newPlainSide gives every service its own grpc.NewClient with grpc's TLS
// credentials and the standard session cache, as services do on their own.
func newPlainSide(servers *serverSide, roots *x509.CertPool) (*clientSide, error) {
	c := &clientSide{name: "plain grpc-go", servers: servers}
	pool := poolResolver("grpcreuse-demo-plain", servers)
	var conns []*grpc.ClientConn
	c.close = func() {
		for _, cc := range conns {
			cc.Close()
		}
	}
	for i := range serviceNames {
		target, sc := pool.Scheme()+":///pool", plainPoolConfig
		if i == ledgerService {
			target, sc = servers.backends[flakyBackend].addr, plainLedgerConfig
		}
		creds := grpccreds.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13,
			ClientSessionCache: tls.NewLRUClientSessionCache(0)})
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds), grpc.WithResolvers(pool),
			grpc.WithDefaultServiceConfig(sc))
		if err != nil {
			c.close()
			return nil, fmt.Errorf("plain grpc-go: service %s: %w", serviceNames[i], err)
		}
		conns = append(conns, cc)
		c.services[i] = serviceCall(i, cc)
	}
	return c, nil
}

// newGrpcreuseSide gets every service a handle from one Factory: the five
// pool services share one connection per backend, the ledger has its own.
func newGrpcreuseSide(ctx context.Context, servers *serverSide, f *clientconn.Factory, poolTarget string, reader *sdkmetric.ManualReader) (*clientSide, error) {
	c := &clientSide{name: "grpcreuse", servers: servers, factory: f, metrics: reader}
	var conns []*clientconn.Conn
	c.close = func() {
		for _, cc := range conns {
			cc.Close()
		}
	}
	for i := range serviceNames {
		target := poolTarget
		if i == ledgerService {
			target = servers.backends[flakyBackend].addr
		}
		cc, err := f.Get(ctx, target)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("grpcreuse: service %s: %w", serviceNames[i], err)
		}
		conns = append(conns, cc)
		c.services[i] = serviceCall(i, cc)
	}
	return c, nil
}

// serviceCall is the call service i makes.
func serviceCall(i int, cc grpc.ClientConnInterface) func(context.Context) error {
	switch i {
	case statusService:
		client := healthpb.NewHealthClient(cc)
		return func(ctx context.Context) error {
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}
	case ledgerService:
		client := testpb.NewTestServiceClient(cc)
		return func(ctx context.Context) error {
			_, err := client.EmptyCall(ctx, &testpb.Empty{})
			return err
		}
	default:
		client := testpb.NewTestServiceClient(cc)
		req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(serviceNames[i])}}
		return func(ctx context.Context) error {
			_, err := client.UnaryCall(ctx, req)
			return err
		}
	}
}

// schemes makes resolver schemes unique per run (tests run the demo more
// than once per process).
var schemes atomic.Int64

// poolResolver resolves any target of its scheme to the three backends.
func poolResolver(prefix string, servers *serverSide) resolver.Builder {
	var eps []resolver.Endpoint
	for _, b := range servers.backends {
		eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: b.addr}}})
	}
	return staticResolver{scheme: fmt.Sprintf("%s-%d", prefix, schemes.Add(1)), state: resolver.State{Endpoints: eps}}
}

type staticResolver struct {
	scheme string
	state  resolver.State
}

func (r staticResolver) Scheme() string { return r.scheme }

func (r staticResolver) Build(_ resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	if err := cc.UpdateState(r.state); err != nil {
		return nil, err
	}
	return staticResolver{}, nil
}

func (staticResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (staticResolver) Close()                                {}

// outcome is how a call ended, as its caller saw it.
type outcome int

const (
	ok         outcome = iota
	failed             // an error from the backend or the network
	fastFailed         // refused by an open breaker or a full limiter, nothing sent
	shed               // refused by the server's load shedding
)

func classify(err error) outcome {
	switch {
	case err == nil:
		return ok
	case errors.Is(err, breaker.ErrOpen), errors.Is(err, interceptors.ErrLimited):
		return fastFailed
	case status.Code(err) == codes.ResourceExhausted:
		return shed
	default:
		return failed
	}
}

// tally counts one side's calls in a phase.
type tally struct {
	issued atomic.Int64
	mu     sync.Mutex
	counts [4]int64
	okLat  []time.Duration
}

// record counts a call that ended with o after d; timed says whether its
// latency goes into the percentiles.
func (t *tally) record(o outcome, d time.Duration, timed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[o]++
	if o == ok && timed {
		t.okLat = append(t.okLat, d)
	}
}

// take returns the phase's counts and OK latencies and resets them.
func (t *tally) take() (issued int64, counts [4]int64, okLat []time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	issued, counts, okLat = t.issued.Swap(0), t.counts, t.okLat
	t.counts, t.okLat = [4]int64{}, nil
	return issued, counts, okLat
}

// percentile returns the p-th percentile (0..1) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func sortDurations(d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
}
