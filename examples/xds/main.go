// Command xds runs grpcreuse under xDS, all in one process on 127.0.0.1:
// an xDS control plane (envoyproxy/go-control-plane's snapshot cache and
// ADS server, package controlplane beside this file), three gRPC backends,
// and a clientconn.Factory whose xds:/// resolver builder is handed to it
// with clientconn.WithResolvers (never registered globally).
//
// The control plane pushes the grpcreuse_least_loaded policy to the client
// in Cluster.load_balancing_policy (gRFC A52: an xds.type.v3.TypedStruct
// whose type_url is type.googleapis.com/grpcreuse_least_loaded), then,
// while callers keep calling, changes the config and the endpoints, then
// pushes a config the policy refuses (the client NACKs it and keeps the
// last good one). After each step it prints calls and connections per
// backend. The Factory's own service config adds a grpcreuse breaker,
// which applies to the xDS target beside the control plane's policy.
//
//	go run ./examples/xds
//	go run ./examples/xds -phase 2s -callers 16
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds" // registers xDS's LB policies and converters; its global "xds" resolver is not used

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/examples/xds/controlplane"
)

const (
	service = "echo.example" // the Listener name: the client dials xds:///echo.example
	cluster = "echo-cluster"
	target  = "xds:///" + service
)

// factoryServiceConfig is the Factory's own service config. Under xDS the
// control plane's service config wins for gRPC's part (its
// loadBalancingConfig replaces round_robin here); the grpcreuse object
// always applies, because the Factory turns it into interceptors.
const factoryServiceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "grpcreuse": {"methodConfig": [{"name": [{}], "circuitBreaker": {"consecutiveFailures": 5, "openTimeout": "10s"}}]}
}`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "xds:", err)
		stop()
		os.Exit(1)
	}
}

type options struct {
	phase   time.Duration
	callers int
}

func parseFlags(args []string, out io.Writer) (options, error) {
	fs := flag.NewFlagSet("xds", flag.ContinueOnError)
	fs.SetOutput(out)
	o := options{}
	fs.DurationVar(&o.phase, "phase", time.Second, "how long callers call after each step has taken effect")
	fs.IntVar(&o.callers, "callers", 8, "goroutines calling all the time")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.phase < 50*time.Millisecond || o.phase > time.Minute:
		return o, fmt.Errorf("-phase is %v; must be between 50ms and 1m", o.phase)
	case o.callers < 1 || o.callers > 256:
		return o, fmt.Errorf("-callers is %d; must be between 1 and 256", o.callers)
	}
	return o, nil
}

// report is what run saw, for its test.
type report struct {
	steps []stepReport
	// removedCallsAfter counts calls b1 got once its removal was in force.
	removedCallsAfter int64
	ok, failed        int64
	nack              string
}

type stepReport struct {
	title string
	conns map[string]int64 // backend name → connections accepted so far
	calls map[string]int64 // backend name → calls during the step
}

func run(ctx context.Context, args []string, out io.Writer) error {
	o, err := parseFlags(args, out)
	if err != nil {
		return err
	}
	_, err = demo(ctx, o, out)
	return err
}

func demo(ctx context.Context, o options, out io.Writer) (rep report, err error) {
	var backends []*backend
	defer func() {
		for _, b := range backends {
			b.stop()
		}
	}()
	for _, name := range []string{"b1", "b2", "b3"} {
		b, err := startBackend(name)
		if err != nil {
			return rep, err
		}
		backends = append(backends, b)
	}
	b1, b2, b3 := backends[0], backends[1], backends[2]

	cp, err := controlplane.Start("127.0.0.1:0")
	if err != nil {
		return rep, err
	}
	defer cp.Close()
	fmt.Fprintf(out, "control plane (go-control-plane ADS) on %s; client bootstrap:\n  %s\n", cp.Addr(), cp.Bootstrap())

	// The xDS resolver builder is the Factory's own: a builder with its
	// own bootstrap and xDS client, handed over by WithResolvers.
	xdsResolver, err := xds.NewXDSResolverWithConfigForTesting(cp.Bootstrap())
	if err != nil {
		return rep, err
	}
	f, err := clientconn.New(
		clientconn.WithResolvers(xdsResolver),
		clientconn.WithTransportCredentials(insecure.NewCredentials()),
		clientconn.WithServiceConfig(factoryServiceConfig),
	)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	conn, err := f.Get(ctx, target)
	if err != nil {
		return rep, err
	}
	defer conn.Close()
	conn.ClientConn().Connect() // build the resolver (and its xDS client) now
	fmt.Fprintf(out, "client: Factory with WithResolvers(xds), dialling %s; breaker from the Factory's service config\n", target)

	c := newCallers(ctx, testpb.NewTestServiceClient(conn), o.callers)
	defer c.stop()

	step := func(title string, cfg map[string]any, endpoints []*backend, want map[*backend]int64) error {
		before := snapshot(backends)
		v, err := push(ctx, cp, cfg, endpoints)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "\n%s\n  pushed version %s: %s %s over %s; client ACKed\n", title, v, balancer.Name, configJSON(cfg), names(endpoints))
		if err := awaitConns(ctx, want); err != nil {
			return err
		}
		c.runFor(ctx, o.phase)
		rep.steps = append(rep.steps, printStep(out, title, backends, before))
		return nil
	}

	if err := step("1. policy pushed: 2 connections per endpoint", map[string]any{"subchannelsPerEndpoint": 2},
		[]*backend{b1, b2}, map[*backend]int64{b1: 2, b2: 2}); err != nil {
		return rep, err
	}
	if err := step("2. live update: b1 removed, b3 added, 3 connections per endpoint", map[string]any{"subchannelsPerEndpoint": 3},
		[]*backend{b2, b3}, map[*backend]int64{b2: 3, b3: 3}); err != nil {
		return rep, err
	}
	removedBefore := b1.calls.Load()

	// 3. A config the policy refuses: the client NACKs it and keeps the
	// last good one (b2 and b3, 3 connections each).
	before := snapshot(backends)
	bad := map[string]any{"subchannelsPerEndpoint": 0}
	v, err := push(ctx, cp, bad, []*backend{b2, b3})
	if !errors.Is(err, controlplane.ErrNACK) {
		return rep, fmt.Errorf("bad config: got %v; want a NACK", err)
	}
	rep.nack = err.Error()
	title := "3. bad config: NACKed, the last good one stays in force"
	fmt.Fprintf(out, "\n%s\n  pushed version %s: %s %s; client NACKed:\n    %s\n", title, v, balancer.Name, configJSON(bad), nackDetail(err))
	c.runFor(ctx, o.phase)
	rep.steps = append(rep.steps, printStep(out, title, backends, before))

	c.stop()
	rep.ok, rep.failed = c.ok.Load(), c.failed.Load()
	rep.removedCallsAfter = b1.calls.Load() - removedBefore
	fmt.Fprintf(out, "\nsummary: %d calls by %d callers, %d failed; b1 got %d calls after its removal\n",
		rep.ok+rep.failed, o.callers, rep.failed, rep.removedCallsAfter)
	if first := c.firstErr(); first != nil {
		fmt.Fprintf(out, "first failure: %v\n", first)
	}
	return rep, nil
}

// push serves cfg over endpoints (one locality) as the next version and
// waits for the client's ACK or NACK of its cluster.
func push(ctx context.Context, cp *controlplane.Server, cfg map[string]any, endpoints []*backend) (string, error) {
	policy, err := controlplane.TypedStructV3(balancer.Name, cfg)
	if err != nil {
		return "", err
	}
	loc := controlplane.Locality{Zone: "zone-a"}
	for _, b := range endpoints {
		loc.Endpoints = append(loc.Endpoints, controlplane.Endpoint{Addr: b.addr})
	}
	v, err := cp.Push(ctx, controlplane.Resources{
		Service: service, Cluster: cluster, Policy: policy, Localities: []controlplane.Locality{loc},
	})
	if err != nil {
		return "", err
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return v, cp.Await(actx, controlplane.ClusterType, v)
}

// awaitConns waits (10s at most) until each backend accepted its count.
func awaitConns(ctx context.Context, want map[*backend]int64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		done := true
		for b, n := range want {
			done = done && b.lis.accepts.Load() == n
		}
		if done {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			var got []string
			for b, n := range want {
				got = append(got, fmt.Sprintf("%s %d (want %d)", b.name, b.lis.accepts.Load(), n))
			}
			return fmt.Errorf("connections: %s: %w", strings.Join(got, ", "), ctx.Err())
		}
	}
}

func configJSON(cfg map[string]any) string {
	b, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Sprint(cfg)
	}
	return string(b)
}

func nackDetail(err error) string {
	s := err.Error()
	if i := strings.Index(s, balancer.Name+":"); i >= 0 {
		return s[i:]
	}
	return s
}

func names(bs []*backend) string {
	n := make([]string, len(bs))
	for i, b := range bs {
		n[i] = b.name
	}
	return strings.Join(n, " ")
}

type counts struct{ conns, calls map[string]int64 }

func snapshot(bs []*backend) counts {
	c := counts{conns: map[string]int64{}, calls: map[string]int64{}}
	for _, b := range bs {
		c.conns[b.name], c.calls[b.name] = b.lis.accepts.Load(), b.calls.Load()
	}
	return c
}

func printStep(out io.Writer, title string, bs []*backend, before counts) stepReport {
	now := snapshot(bs)
	r := stepReport{title: title, conns: now.conns, calls: map[string]int64{}}
	fmt.Fprintf(out, "  %-8s %-16s %12s %6s\n", "backend", "address", "connections", "calls")
	for _, b := range bs {
		r.calls[b.name] = now.calls[b.name] - before.calls[b.name]
		fmt.Fprintf(out, "  %-8s %-16s %12d %6d\n", b.name, b.addr, now.conns[b.name], r.calls[b.name])
	}
	return r
}

// callers keep calling until stopped; runFor lets them run for a while.
type callers struct {
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	ok, failed atomic.Int64
	mu         sync.Mutex
	first      error
	once       sync.Once
}

func newCallers(ctx context.Context, c testpb.TestServiceClient, n int) *callers {
	ctx, cancel := context.WithCancel(ctx)
	cs := &callers{cancel: cancel}
	for range n {
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := c.UnaryCall(cctx, &testpb.SimpleRequest{})
				ccancel()
				switch {
				case err == nil:
					cs.ok.Add(1)
				case ctx.Err() != nil:
					return // stopped: the caller's own cancellation is no failure
				default:
					cs.failed.Add(1)
					cs.mu.Lock()
					if cs.first == nil {
						cs.first = err
					}
					cs.mu.Unlock()
				}
			}
		}()
	}
	return cs
}

func (cs *callers) runFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

func (cs *callers) stop() {
	cs.once.Do(func() {
		cs.cancel()
		cs.wg.Wait()
	})
}

func (cs *callers) firstErr() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.first
}

// backend is a plain gRPC server (TestService and health) that counts the
// connections it accepts and the calls it serves.
type backend struct {
	name, addr string
	lis        *countingListener
	srv        *grpc.Server
	calls      atomic.Int64
	done       chan struct{}
}

func startBackend(name string) (*backend, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	b := &backend{name: name, addr: l.Addr().String(), lis: &countingListener{Listener: l}, done: make(chan struct{})}
	b.srv = grpc.NewServer()
	testpb.RegisterTestServiceServer(b.srv, &echo{b: b})
	healthpb.RegisterHealthServer(b.srv, health.NewServer())
	go func() {
		defer close(b.done)
		_ = b.srv.Serve(b.lis)
	}()
	return b, nil
}

func (b *backend) stop() {
	b.srv.Stop()
	<-b.done
}

type echo struct {
	testpb.UnimplementedTestServiceServer
	b *backend
}

func (e *echo) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	e.b.calls.Add(1)
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

type countingListener struct {
	net.Listener
	accepts atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}
