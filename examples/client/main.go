// Command client shows grpcreuse's three adoption moves in one main:
//
//  1. one clientconn.Factory per process, with TLS, a bounded session cache
//     and a tenant, from which every service gets a handle on one shared
//     connection;
//  2. the grpcreuse_least_loaded balancer, which the Factory registers by
//     importing package balancer (without the Factory: a blank import);
//  3. one service config document, service_config.json beside this file:
//     gRPC's loadBalancingConfig and methodConfig (with a retry policy) plus
//     a "grpcreuse" object whose breaker and limiter policy the Factory
//     turns into the recommended interceptor chain on every connection.
//
// Two gRPC services (grpc.testing.TestService and grpc.health.v1.Health)
// share the connection. Then the connections are made again, as after a
// backend restart, and the TLS sessions resume. Run it against
// examples/server:
//
//	go run ./examples/server &
//	go run ./examples/client
//	go run ./examples/client -addr 127.0.0.1:50051 -service-config examples/client/service_config.json
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/balancer" // move 2: registers grpcreuse_least_loaded (clientconn imports it too)
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// defaultServiceConfig is service_config.json, used unless -service-config
// names another file.
//
//go:embed service_config.json
var defaultServiceConfig string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "client:", err)
		stop()
		os.Exit(1)
	}
}

type config struct {
	addr, caFile, serverName, tenant, serviceConfig string
	calls                                           int
	timeout                                         time.Duration
}

func parseFlags(args []string, stdout io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints the error; -h prints the usage below
	fs.StringVar(&c.addr, "addr", "127.0.0.1:50051", "server address (a gRPC target: host:port, dns:///host:port, ...)")
	fs.StringVar(&c.caFile, "ca", defaultCAFile(), "PEM file of the CA to trust (examples/server writes its certificate there)")
	fs.StringVar(&c.serverName, "server-name", "", "TLS server name to verify (default: the target's host)")
	fs.StringVar(&c.tenant, "tenant", "example-tenant", "tenant whose connections and TLS sessions these are")
	fs.StringVar(&c.serviceConfig, "service-config", "", "service config JSON file (default: examples/client/service_config.json, embedded)")
	fs.IntVar(&c.calls, "calls", 20, "calls per service and round")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "deadline for the whole run")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "Usage: go run ./examples/client [flags]")
			fs.PrintDefaults()
		}
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	case c.calls < 1 || c.calls > 1_000_000:
		return c, fmt.Errorf("-calls is %d; must be between 1 and 1000000", c.calls)
	case c.timeout <= 0:
		return c, fmt.Errorf("-timeout is %v; must be positive", c.timeout)
	}
	return c, nil
}

// defaultCAFile is where examples/server writes its self-signed certificate.
func defaultCAFile() string { return filepath.Join(os.TempDir(), "grpcreuse-example-ca.pem") }

func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	// TLS: trust the server's CA.
	caPEM, err := os.ReadFile(cfg.caFile)
	if err != nil {
		return fmt.Errorf("-ca: %w (start examples/server first, or pass -ca)", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("-ca: %s holds no PEM certificate", cfg.caFile)
	}
	tlsConfig := &tls.Config{RootCAs: roots, ServerName: cfg.serverName, MinVersion: tls.VersionTLS12}

	// Move 3: the service config. Splitting it here only checks it early and
	// describes it; the Factory does the same split itself.
	doc, source := defaultServiceConfig, "service_config.json (embedded)"
	if cfg.serviceConfig != "" {
		b, err := os.ReadFile(cfg.serviceConfig)
		if err != nil {
			return fmt.Errorf("-service-config: %w", err)
		}
		doc, source = string(b), cfg.serviceConfig
	}
	grpcPart, policy, err := interceptors.SplitServiceConfig(doc)
	if err != nil {
		return fmt.Errorf("-service-config %s: %w", source, err)
	}
	// Move 2: the balancer is chosen by loadBalancingConfig.
	warm, ok, err := eagerConnections(grpcPart)
	if err != nil {
		return fmt.Errorf("-service-config %s: %w", source, err)
	}
	if !ok {
		fmt.Fprintf(stdout, "note: %s does not select %s; gRPC's default policy applies\n", source, balancer.Name)
	}

	// Move 1: one Factory. Every connection gets TLS with sessions from one
	// bounded cache, keepalive the servers accept, the service config and,
	// from its "grpcreuse" policy, the breaker and limiter interceptors;
	// our own interceptor (counting calls) runs outside them.
	sessions, err := credentials.NewSessionCache(credentials.WithCapacity(256), credentials.WithTTL(time.Hour))
	if err != nil {
		return err
	}
	var seen handshakes
	var calls callCounter
	newFactory := func() (*clientconn.Factory, error) {
		return clientconn.New(
			clientconn.WithTLS(tlsConfig),
			clientconn.WithSessionCache(sessions),
			clientconn.WithKeepalive(clientconn.KeepaliveDefault()),
			clientconn.WithServiceConfig(doc),
			clientconn.WithUnaryInterceptors(calls.unaryInterceptor),
			clientconn.WithObserver(&seen),
		)
	}

	fmt.Fprintf(stdout, "client: %s as tenant %q, service config %s\n", cfg.addr, cfg.tenant, source)
	fmt.Fprintf(stdout, "client: load balancing %s; grpcreuse policy: %s\n", balancer.Name, describePolicy(policy))

	for round, what := range []string{"new connections", "connections made again (as after a backend restart): TLS sessions resume"} {
		f, err := newFactory()
		if err != nil {
			return err
		}
		err = callBothServices(ctx, f, cfg)
		if err == nil {
			// The balancer opens its connections at once but the calls may
			// finish on the first: closing the Factory mid-handshake would
			// leave the next round fewer sessions to resume.
			err = seen.await(ctx, warm)
		}
		st := f.Stats()
		f.Close() // closes the connections; the session cache outlives the Factory
		if err != nil {
			return err
		}
		full, resumed, failed := seen.take()
		fmt.Fprintf(stdout, "round %d, %s:\n", round+1, what)
		fmt.Fprintf(stdout, "  %s\n", calls.take())
		fmt.Fprintf(stdout, "  2 services got %d handles on %d shared *grpc.ClientConn (Factory: %d miss, %d hit)\n", st.Hits+st.Misses, st.Misses, st.Misses, st.Hits)
		fmt.Fprintf(stdout, "  %d TCP connections, TLS handshakes: %d full, %d resumed", full+resumed+failed, full, resumed)
		if failed > 0 {
			fmt.Fprintf(stdout, ", %d failed", failed)
		}
		fmt.Fprintln(stdout)
	}
	cs := sessions.Stats()
	fmt.Fprintf(stdout, "client: done; TLS session cache: %d offered, %d resumed, %d misses, %d sessions held\n", cs.Offered, cs.Resumed, cs.Misses, cs.Len)
	return nil
}

// callBothServices is two services of one process: each gets its own handle
// from the Factory, and both handles share one connection.
func callBothServices(ctx context.Context, f *clientconn.Factory, cfg config) error {
	echoConn, err := f.Get(ctx, cfg.addr, clientconn.WithTenant(cfg.tenant), clientconn.WithWarmUp())
	if err != nil {
		return err // names the target and, on timeout, the last dial or TLS error
	}
	defer echoConn.Close()
	healthConn, err := f.Get(ctx, cfg.addr, clientconn.WithTenant(cfg.tenant))
	if err != nil {
		return err
	}
	defer healthConn.Close()

	echo := testpb.NewTestServiceClient(echoConn)
	health := healthpb.NewHealthClient(healthConn)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < cfg.calls && errs[0] == nil; i++ {
			_, errs[0] = echo.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}})
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < cfg.calls && errs[1] == nil; i++ {
			var resp *healthpb.HealthCheckResponse
			resp, errs[1] = health.Check(ctx, &healthpb.HealthCheckRequest{Service: "grpc.testing.TestService"})
			if errs[1] == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				errs[1] = fmt.Errorf("health: grpc.testing.TestService is %v", resp.GetStatus())
			}
		}
	}()
	wg.Wait()
	return errors.Join(errs...)
}

// describePolicy summarises the grpcreuse object of the service config.
func describePolicy(p *interceptors.Policy) string {
	if p == nil {
		return "none (no \"grpcreuse\" object)"
	}
	var parts []string
	for _, m := range p.MethodConfig {
		var names []string
		for _, n := range m.Name {
			switch {
			case n.Service == "":
				names = append(names, "every other method")
			case n.Method == "":
				names = append(names, n.Service)
			default:
				names = append(names, n.Service+"/"+n.Method)
			}
		}
		var layers []string
		if b := m.CircuitBreaker; b != nil {
			layers = append(layers, fmt.Sprintf("breaker (%d failures in a row, open %v)", b.ConsecutiveFailures, b.OpenTimeout))
		}
		if l := m.ConcurrencyLimit; l != nil {
			layers = append(layers, fmt.Sprintf("%v limit %d", l.Algorithm, l.Limit))
		}
		if len(layers) == 0 {
			layers = append(layers, "nothing")
		}
		parts = append(parts, strings.Join(names, ", ")+": "+strings.Join(layers, " + "))
	}
	return strings.Join(parts, "; ")
}

// eagerConnections returns how many connections per backend the service
// config's balancer opens before any call (subchannelsPerEndpoint), and
// whether that balancer is grpcreuse's; gRPC's own policies open one.
func eagerConnections(grpcPart string) (n int, ours bool, err error) {
	var doc struct {
		LoadBalancingConfig []map[string]json.RawMessage `json:"loadBalancingConfig"`
	}
	if err := json.Unmarshal([]byte(grpcPart), &doc); err != nil {
		return 0, false, err
	}
	// grpc uses the first policy it knows. Ours is known, so it is used
	// when it is listed first (a policy grpc does not know before it is
	// rare enough for an example to ignore).
	if len(doc.LoadBalancingConfig) == 0 {
		return 1, false, nil
	}
	raw, ok := doc.LoadBalancingConfig[0][balancer.Name]
	if !ok {
		return 1, false, nil
	}
	c, err := balancer.ParseConfig(raw)
	if err != nil {
		return 0, false, err
	}
	return c.SubchannelsPerEndpoint, true, nil
}

// handshakes counts the Factory's TLS handshakes: a telemetry.Observer that
// implements only Handshake (telemetry.Nop does the rest).
type handshakes struct {
	telemetry.Nop
	mu                    sync.Mutex
	changed               chan struct{} // closed and replaced on every handshake
	full, resumed, failed int
}

func (h *handshakes) Handshake(info telemetry.HandshakeInfo) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case info.Err != nil:
		h.failed++
	case info.Resumed:
		h.resumed++
	default:
		h.full++
	}
	if h.changed != nil {
		close(h.changed)
		h.changed = nil
	}
}

// await returns once n handshakes succeeded since the last take, or with
// an error naming how many did when ctx ends first.
func (h *handshakes) await(ctx context.Context, n int) error {
	for {
		h.mu.Lock()
		done := h.full+h.resumed >= n
		if h.changed == nil {
			h.changed = make(chan struct{})
		}
		changed := h.changed
		ok := h.full + h.resumed
		h.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%d of the balancer's %d connections finished their TLS handshake: %w", ok, n, ctx.Err())
		}
	}
}

func (h *handshakes) take() (full, resumed, failed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	full, resumed, failed = h.full, h.resumed, h.failed
	h.full, h.resumed, h.failed = 0, 0, 0
	return full, resumed, failed
}

// callCounter is an interceptor of our own, chained outside grpcreuse's: it
// sees every call, including those the breaker or limiter fail fast.
type callCounter struct {
	mu     sync.Mutex
	counts map[string]map[codes.Code]int
}

func (c *callCounter) unaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		c.counts = map[string]map[codes.Code]int{}
	}
	if c.counts[method] == nil {
		c.counts[method] = map[codes.Code]int{}
	}
	c.counts[method][status.Code(err)]++
	return err
}

// take returns and resets the counts, as "method: N OK, ..." in method order.
func (c *callCounter) take() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var lines []string
	for _, method := range []string{"/grpc.testing.TestService/UnaryCall", "/grpc.health.v1.Health/Check"} {
		byCode := c.counts[method]
		var parts []string
		for code := codes.OK; code <= codes.Unauthenticated; code++ {
			if n := byCode[code]; n > 0 {
				parts = append(parts, fmt.Sprintf("%d %v", n, code))
			}
		}
		if len(parts) == 0 {
			parts = append(parts, "no calls")
		}
		lines = append(lines, strings.TrimPrefix(method, "/")+": "+strings.Join(parts, ", "))
	}
	c.counts = nil
	return strings.Join(lines, "\n  ")
}
