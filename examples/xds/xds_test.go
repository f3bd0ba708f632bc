package main

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	roundrobinpb "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/examples/xds/controlplane"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// The tests run a control plane (go-control-plane's snapshot cache and ADS
// server) and plain gRPC backends on 127.0.0.1, and a Factory whose xDS
// resolver builder comes from WithResolvers, never from grpc's registry.

const (
	testService = "echo.test"
	testCluster = "echo-cluster"
	testTarget  = "xds:///" + testService
	waitFor     = 15 * time.Second // bound of every poll; the tests pass in far less
)

// policyForm is one way a control plane spells our policy in
// Cluster.load_balancing_policy.
type policyForm struct {
	name string
	make func(map[string]any) (*clusterpb.LoadBalancingPolicy, error)
}

var policyForms = []policyForm{
	{"xds.type.v3.TypedStruct", func(c map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
		return controlplane.TypedStructV3(balancer.Name, c)
	}},
	{"udpa.type.v1.TypedStruct", func(c map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
		return controlplane.TypedStructV1(balancer.Name, c)
	}},
	{"xds.type.v3.TypedStruct, then round_robin", func(c map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
		p, err := controlplane.TypedStructV3(balancer.Name, c)
		if err != nil {
			return nil, err
		}
		// A fallback for clients without grpcreuse; ours comes first.
		rr, err := anypb.New(&roundrobinpb.RoundRobin{})
		if err != nil {
			return nil, err
		}
		p.Policies = append(p.Policies, &clusterpb.LoadBalancingPolicy_Policy{
			TypedExtensionConfig: &corepb.TypedExtensionConfig{Name: "round_robin", TypedConfig: rr},
		})
		return p, nil
	}},
	{"WrrLocality(xds.type.v3.TypedStruct)", func(c map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
		p, err := controlplane.TypedStructV3(balancer.Name, c)
		if err != nil {
			return nil, err
		}
		return controlplane.WrrLocality(p)
	}},
	{"WrrLocality(udpa.type.v1.TypedStruct)", func(c map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
		p, err := controlplane.TypedStructV1(balancer.Name, c)
		if err != nil {
			return nil, err
		}
		return controlplane.WrrLocality(p)
	}},
}

func startControlPlane(t *testing.T) *controlplane.Server {
	t.Helper()
	cp, err := controlplane.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	return cp
}

// newFactory returns a Factory that resolves xds:/// targets through an
// xDS resolver builder of its own, bootstrapped to cp.
func newFactory(t *testing.T, cp *controlplane.Server, opts ...clientconn.Option) *clientconn.Factory {
	t.Helper()
	xdsResolver, err := xds.NewXDSResolverWithConfigForTesting(cp.Bootstrap())
	if err != nil {
		t.Fatal(err)
	}
	f, err := clientconn.New(append([]clientconn.Option{
		clientconn.WithResolvers(xdsResolver),
		clientconn.WithTransportCredentials(insecure.NewCredentials()),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Factory.Close: %v", err)
		}
	})
	return f
}

// get returns a connection to testTarget, closed when the test ends, and
// makes it leave idle: a new channel builds its resolver (and so its xDS
// client) only when it first connects.
func get(ctx context.Context, t *testing.T, f *clientconn.Factory) *clientconn.Conn {
	t.Helper()
	conn, err := f.Get(ctx, testTarget)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	conn.ClientConn().Connect()
	return conn
}

// startHoldingBackend starts one backend whose calls with the payload
// "hold" signal held and then wait until gate is closed (or their context
// ends); other calls answer at once.
func startHoldingBackend(t *testing.T) (bs []*testutil.Backend, held <-chan struct{}, gate chan struct{}) {
	t.Helper()
	gate = make(chan struct{})
	h := make(chan struct{}, 1)
	bs = startBackends(t, 1, testutil.BackendOptions{
		Unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if string(req.GetPayload().GetBody()) == "hold" {
				h <- struct{}{}
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			return &testpb.SimpleResponse{}, nil
		},
	})
	return bs, h, gate
}

func startBackends(t *testing.T, n int, opts testutil.BackendOptions) []*testutil.Backend {
	t.Helper()
	bs := make([]*testutil.Backend, n)
	for i := range bs {
		bs[i] = testutil.StartBackend(t, opts)
	}
	return bs
}

// oneLocality puts every backend in locality "a".
func oneLocality(bs ...*testutil.Backend) []controlplane.Locality {
	l := controlplane.Locality{Zone: "a"}
	for _, b := range bs {
		l.Endpoints = append(l.Endpoints, controlplane.Endpoint{Addr: b.Addr})
	}
	return []controlplane.Locality{l}
}

func resources(t *testing.T, form policyForm, cfg map[string]any, localities []controlplane.Locality) controlplane.Resources {
	t.Helper()
	p, err := form.make(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return controlplane.Resources{Service: testService, Cluster: testCluster, Policy: p, Localities: localities}
}

// pushAndAwait pushes r and returns its version once a client ACKed or
// NACKed the cluster of that version (the error says which).
func pushAndAwait(t *testing.T, cp *controlplane.Server, r controlplane.Resources) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	v, err := cp.Push(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	return v, cp.Await(ctx, controlplane.ClusterType, v)
}

func accepts(bs []*testutil.Backend) []int64 {
	n := make([]int64, len(bs))
	for i, b := range bs {
		n[i] = b.Listener.Accepts()
	}
	return n
}

// awaitAccepts polls until every backend accepted want connections.
func awaitAccepts(t *testing.T, bs []*testutil.Backend, want int64) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		ok := true
		for _, b := range bs {
			ok = ok && b.Listener.Accepts() == want
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends accepted %v connections; want %d each", accepts(bs), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// callN makes n unary calls and returns the first error.
func callN(ctx context.Context, c testpb.TestServiceClient, n int) error {
	for range n {
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
			return err
		}
	}
	return nil
}

// TestPolicyUnderXDS: the config a control plane pushes in every form
// (both TypedStructs, alone and under WrrLocality) arrives intact: each
// backend's listener counts exactly subchannelsPerEndpoint connections,
// and every backend serves calls.
func TestPolicyUnderXDS(t *testing.T) {
	for _, form := range policyForms {
		t.Run(form.name, func(t *testing.T) {
			bs := startBackends(t, 3, testutil.BackendOptions{})
			localities := oneLocality(bs...)
			if strings.HasPrefix(form.name, "WrrLocality") {
				// Two localities: wrr_locality runs one policy per locality.
				localities = []controlplane.Locality{
					{Zone: "a", Weight: 1, Endpoints: []controlplane.Endpoint{{Addr: bs[0].Addr}, {Addr: bs[1].Addr}}},
					{Zone: "b", Weight: 1, Endpoints: []controlplane.Endpoint{{Addr: bs[2].Addr}}},
				}
			}
			cp := startControlPlane(t)
			f := newFactory(t, cp)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			conn := get(ctx, t, f)
			if _, err := pushAndAwait(t, cp, resources(t, form, map[string]any{"subchannelsPerEndpoint": 3}, localities)); err != nil {
				t.Fatal(err)
			}
			awaitAccepts(t, bs, 3)
			c := testpb.NewTestServiceClient(conn)
			deadline := time.Now().Add(waitFor)
			for served := 0; served < len(bs); {
				if err := callN(ctx, c, 10); err != nil {
					t.Fatalf("call: %v", err)
				}
				served = 0
				for _, b := range bs {
					if b.Calls.Load() > 0 {
						served++
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("only %d of %d backends served calls", served, len(bs))
				}
			}
			if got := accepts(bs); got[0] != 3 || got[1] != 3 || got[2] != 3 {
				t.Errorf("after the calls, backends accepted %v connections; want 3 each", got)
			}
		})
	}
}

// loadCallers are goroutines that call until stop is closed (or max calls
// each) and count what they saw.
type loadCallers struct {
	wg           sync.WaitGroup
	ok, failed   atomic.Int64
	mu           sync.Mutex
	firstFailure error
}

func startLoad(ctx context.Context, c testpb.TestServiceClient, n int, stop <-chan struct{}, max int) *loadCallers {
	cs := &loadCallers{}
	for range n {
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			for i := 0; i < max; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
					cs.failed.Add(1)
					cs.mu.Lock()
					if cs.firstFailure == nil {
						cs.firstFailure = err
					}
					cs.mu.Unlock()
					continue
				}
				cs.ok.Add(1)
			}
		}()
	}
	return cs
}

// TestUpdateUnderLoad: under 16 callers, one push removes a backend, adds
// one and changes subchannelsPerEndpoint from 2 to 3. No call fails, the
// new config reaches every endpoint (3 connections each), and the removed
// backend gets no call once the update is in force.
func TestUpdateUnderLoad(t *testing.T) {
	bs := startBackends(t, 4, testutil.BackendOptions{})
	removed, kept, added := bs[0], bs[1:3], bs[3]
	cp := startControlPlane(t)
	f := newFactory(t, cp)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	conn := get(ctx, t, f)
	form := policyForms[0]
	if _, err := pushAndAwait(t, cp, resources(t, form, map[string]any{"subchannelsPerEndpoint": 2}, oneLocality(bs[:3]...))); err != nil {
		t.Fatal(err)
	}
	awaitAccepts(t, bs[:3], 2)
	c := testpb.NewTestServiceClient(conn)

	stop := make(chan struct{})
	load := startLoad(ctx, c, 16, stop, 100000)
	testutil.Eventually(t, waitFor, func() bool { return removed.Calls.Load() > 0 && load.ok.Load() > 160 }, "callers running on the first config")
	if _, err := pushAndAwait(t, cp, resources(t, form, map[string]any{"subchannelsPerEndpoint": 3}, oneLocality(kept[0], kept[1], added))); err != nil {
		t.Fatal(err)
	}
	now := []*testutil.Backend{kept[0], kept[1], added}
	awaitAccepts(t, now, 3)
	testutil.Eventually(t, waitFor, func() bool { return added.Calls.Load() > 20 }, "the added backend serves calls")
	close(stop)
	load.wg.Wait()
	if n := load.failed.Load(); n != 0 {
		t.Fatalf("during the update %d of %d calls failed; first: %v", n, n+load.ok.Load(), load.firstFailure)
	}
	t.Logf("during the update: %d calls, 0 failed", load.ok.Load())

	// Cluster and endpoints are separate xDS resources: the new config may
	// reach the removed backend (a third connection) before its removal
	// does. Once both are in force, it gets nothing new.
	before, beforeConns := removed.Calls.Load(), removed.Listener.Accepts()
	after := startLoad(ctx, c, 16, nil, 20)
	after.wg.Wait()
	if n := after.failed.Load(); n != 0 {
		t.Fatalf("after the update %d calls failed; first: %v", n, after.firstFailure)
	}
	if got := removed.Calls.Load(); got != before {
		t.Errorf("the removed backend got %d calls after the update; want 0", got-before)
	}
	if got := removed.Listener.Accepts(); got != beforeConns {
		t.Errorf("the removed backend accepted %d connections after the update; want 0", got-beforeConns)
	}
	if got := accepts(now); got[0] != 3 || got[1] != 3 || got[2] != 3 {
		t.Errorf("backends in force accepted %v connections; want 3 each", got)
	}
}

// TestBadConfigNACKed: a config our parser refuses is NACKed (the client's
// error detail names the field), the last good config stays in force
// (same connections, calls succeed), and the next good push applies.
func TestBadConfigNACKed(t *testing.T) {
	tests := []struct {
		name    string
		form    policyForm
		cfg     map[string]any
		wantErr string
	}{
		{"zero subchannels", policyForms[0], map[string]any{"subchannelsPerEndpoint": 0}, `"subchannelsPerEndpoint" is 0`},
		{"unknown field", policyForms[1], map[string]any{"subchannelPerEndpoint": 3}, `"subchannelPerEndpoint" is not a known field; did you mean "subchannelsPerEndpoint"?`},
		{"bad choice count under WrrLocality", policyForms[3], map[string]any{"choiceCount": 1}, `"choiceCount" is 1`},
		// A round_robin entry after ours is no silent way out of a bad config.
		{"not a whole number, round_robin listed after", policyForms[2], map[string]any{"subchannelsPerEndpoint": 2.5}, `"subchannelsPerEndpoint" is 2.5`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs := startBackends(t, 2, testutil.BackendOptions{})
			cp := startControlPlane(t)
			f := newFactory(t, cp)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			conn := get(ctx, t, f)
			if _, err := pushAndAwait(t, cp, resources(t, tc.form, map[string]any{"subchannelsPerEndpoint": 2}, oneLocality(bs...))); err != nil {
				t.Fatal(err)
			}
			awaitAccepts(t, bs, 2)
			c := testpb.NewTestServiceClient(conn)

			_, err := pushAndAwait(t, cp, resources(t, tc.form, tc.cfg, oneLocality(bs...)))
			if !errors.Is(err, controlplane.ErrNACK) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("bad config: got %v; want a NACK containing %q", err, tc.wantErr)
			}
			if err := callN(ctx, c, 20); err != nil {
				t.Fatalf("call after the NACK: %v", err)
			}
			if got := accepts(bs); got[0] != 2 || got[1] != 2 {
				t.Errorf("after the NACK backends accepted %v connections; want the good config's 2 each", got)
			}

			if _, err := pushAndAwait(t, cp, resources(t, tc.form, map[string]any{"subchannelsPerEndpoint": 3}, oneLocality(bs...))); err != nil {
				t.Fatalf("good config after the NACK: %v", err)
			}
			awaitAccepts(t, bs, 3)
		})
	}
}

// breakerPolicy is the Factory's service config: round_robin for gRPC
// (which xDS overrides) and a breaker that opens after 3 failures in a
// row (which applies to xDS targets too).
const breakerPolicy = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "grpcreuse": {"methodConfig": [{"name": [{}], "circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "60s"}}]}
}`

// TestBreakerBesideXDS: the Factory's grpcreuse breaker applies to an xDS
// target, while the control plane's LB policy beats the Factory's gRPC
// part (2 connections per backend, not round_robin's 1): a backend that
// answers UNAVAILABLE opens the breaker after 3 calls.
func TestBreakerBesideXDS(t *testing.T) {
	bs := startBackends(t, 1, testutil.BackendOptions{
		Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			return nil, status.Error(codes.Unavailable, "backend says no")
		},
	})
	cp := startControlPlane(t)
	f := newFactory(t, cp, clientconn.WithServiceConfig(breakerPolicy))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn := get(ctx, t, f)
	r := resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 2, "ejection": map[string]any{"consecutiveFailures": 0}}, oneLocality(bs...))
	if _, err := pushAndAwait(t, cp, r); err != nil {
		t.Fatal(err)
	}
	awaitAccepts(t, bs, 2)
	c := testpb.NewTestServiceClient(conn)
	for i := range 3 {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "backend says no") {
			t.Fatalf("call %d: %v; want the backend's UNAVAILABLE", i, err)
		}
	}
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	if !errors.Is(err, breaker.ErrOpen) || status.Code(err) != codes.Unavailable {
		t.Fatalf("call 4: %v; want the open breaker's UNAVAILABLE", err)
	}
	if got := bs[0].Calls.Load(); got != 3 {
		t.Errorf("backend got %d calls; want 3 (the 4th failed fast)", got)
	}
}

// TestXDSDropsDoNotOpenBreaker: calls that xDS drops on the client
// (Cluster.circuit_breakers max_requests 1) fail UNAVAILABLE without
// reaching a backend, and do not open the grpcreuse breaker.
func TestXDSDropsDoNotOpenBreaker(t *testing.T) {
	bs, held, gate := startHoldingBackend(t)
	cp := startControlPlane(t)
	f := newFactory(t, cp, clientconn.WithServiceConfig(breakerPolicy))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn := get(ctx, t, f)
	r := resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 1}, oneLocality(bs...))
	r.MaxRequests = 1
	if _, err := pushAndAwait(t, cp, r); err != nil {
		t.Fatal(err)
	}
	c := testpb.NewTestServiceClient(conn)
	if err := callN(ctx, c, 1); err != nil {
		t.Fatal(err)
	}

	heldDone := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hold")}})
		heldDone <- err
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the held call did not reach the backend")
	}
	// 10 concurrent calls over the limit of 1: xDS drops each locally.
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "max requests 1 exceeded") {
			t.Errorf("call over max_requests: %v; want xDS's local UNAVAILABLE drop", err)
		}
	}
	close(gate)
	if err := <-heldDone; err != nil {
		t.Fatalf("held call: %v", err)
	}
	// 10 drops did not open a breaker that opens after 3 failures.
	if err := callN(ctx, c, 3); err != nil {
		t.Fatalf("call after the drops: %v; want success (the breaker stays closed)", err)
	}
	if got := bs[0].Calls.Load(); got != 5 {
		t.Errorf("backend got %d calls; want 5 (the dropped 10 never reached it)", got)
	}
}

// TestXDSOverloadDropsDoNotOpenBreaker: calls dropped by the control
// plane's drop_overloads (100% here) fail UNAVAILABLE "RPC is dropped"
// without reaching a backend and do not open the grpcreuse breaker: once
// the drops stop, calls succeed.
func TestXDSOverloadDropsDoNotOpenBreaker(t *testing.T) {
	bs := startBackends(t, 1, testutil.BackendOptions{})
	cp := startControlPlane(t)
	f := newFactory(t, cp, clientconn.WithServiceConfig(breakerPolicy))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn := get(ctx, t, f)
	r := resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 1}, oneLocality(bs...))
	if _, err := pushAndAwait(t, cp, r); err != nil {
		t.Fatal(err)
	}
	c := testpb.NewTestServiceClient(conn)
	if err := callN(ctx, c, 1); err != nil {
		t.Fatal(err)
	}
	r.DropPercent = 100
	if _, err := pushAndAwait(t, cp, r); err != nil {
		t.Fatal(err)
	}
	// The drops start once the new endpoints config is in force.
	dropped := 0
	deadline := time.Now().Add(waitFor)
	for dropped < 10 {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		switch {
		case err == nil && dropped == 0:
		case status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "RPC is dropped"):
			dropped++
		default:
			t.Fatalf("call %d after drops began: %v; want xDS's \"RPC is dropped\"", dropped, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls dropped; want 10", dropped)
		}
	}
	served := bs[0].Calls.Load()
	r.DropPercent = 0
	if _, err := pushAndAwait(t, cp, r); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, func() bool {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		if errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("the breaker opened on xDS drops: %v", err)
		}
		return err == nil
	}, "calls succeed once the drops stop")
	if got := bs[0].Calls.Load(); got != served+1 {
		t.Errorf("backend got %d calls after the drops began; want 1 (the dropped ones never reached it)", got-served)
	}
}

// endpointObserver records the endpoints the balancer reported.
type endpointObserver struct {
	telemetry.Nop
	mu    sync.Mutex
	ready map[string]string // endpoint → target, for READY endpoints
	tf    map[string]int    // endpoint → TRANSIENT_FAILURE reports
}

func (o *endpointObserver) EndpointState(target, endpoint string, state connectivity.State, _ int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch state {
	case connectivity.Ready:
		o.ready[endpoint] = target
	case connectivity.TransientFailure:
		o.tf[endpoint]++
	}
}

func (o *endpointObserver) failures(endpoint string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.tf[endpoint]
}

func (o *endpointObserver) readyTargets() map[string]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.ready)
}

// TestObserverUnderXDS: the Factory's observer reaches the balancer built
// deep in xDS's policy tree (cluster_manager, cds, priority, cluster_impl,
// outlier_detection), through the resolver the channel really uses.
func TestObserverUnderXDS(t *testing.T) {
	bs := startBackends(t, 2, testutil.BackendOptions{})
	cp := startControlPlane(t)
	obs := &endpointObserver{ready: map[string]string{}, tf: map[string]int{}}
	f := newFactory(t, cp, clientconn.WithObserver(obs))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	get(ctx, t, f)
	if _, err := pushAndAwait(t, cp, resources(t, policyForms[3], map[string]any{"subchannelsPerEndpoint": 2}, oneLocality(bs...))); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, func() bool { return len(obs.readyTargets()) == len(bs) }, "both endpoints reported READY to the Factory's observer")
	for _, b := range bs {
		if got := obs.readyTargets()[b.Addr]; got == "" {
			t.Errorf("endpoint %s reported with no target (%v)", b.Addr, obs.readyTargets())
		}
	}
	t.Logf("endpoints reported: %v", obs.readyTargets())
}

// TestOutlierDetectionThroughLeaves: xDS outlier detection (gRFC A50, the
// Cluster's failure-percentage ejection) ejects a failing backend through
// the policy's pick_first leaves: the policy sees the healthy, listening
// backend's connections go TRANSIENT_FAILURE and stops sending it calls.
// The policy's own ejection is off, so the ejection is xDS's.
func TestOutlierDetectionThroughLeaves(t *testing.T) {
	good := startBackends(t, 2, testutil.BackendOptions{})
	bad := testutil.StartBackend(t, testutil.BackendOptions{
		Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			return nil, status.Error(codes.Unavailable, "failing backend")
		},
	})
	cp := startControlPlane(t)
	obs := &endpointObserver{ready: map[string]string{}, tf: map[string]int{}}
	f := newFactory(t, cp, clientconn.WithObserver(obs))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn := get(ctx, t, f)
	r := resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 1, "ejection": map[string]any{"consecutiveFailures": 0}},
		oneLocality(good[0], good[1], bad))
	r.OutlierDetection = &clusterpb.OutlierDetection{
		Interval:                       durationpb.New(50 * time.Millisecond),
		BaseEjectionTime:               durationpb.New(time.Minute),
		MaxEjectionPercent:             wrapperspb.UInt32(50),
		EnforcingSuccessRate:           wrapperspb.UInt32(0),
		EnforcingFailurePercentage:     wrapperspb.UInt32(100),
		FailurePercentageThreshold:     wrapperspb.UInt32(50),
		FailurePercentageMinimumHosts:  wrapperspb.UInt32(3),
		FailurePercentageRequestVolume: wrapperspb.UInt32(3),
	}
	if _, err := pushAndAwait(t, cp, r); err != nil {
		t.Fatal(err)
	}
	c := testpb.NewTestServiceClient(conn)
	// Concurrent callers, so the failing backend gets its share of every
	// interval's request volume even while the policy's scores avoid it.
	stop := make(chan struct{})
	load := startLoad(ctx, c, 16, stop, 100000)
	deadline := time.Now().Add(waitFor)
	for obs.failures(bad.Addr) == 0 {
		if time.Now().After(deadline) {
			close(stop)
			load.wg.Wait()
			t.Fatalf("outlier detection did not eject the failing backend (it got %d calls, the others %d and %d)",
				bad.Calls.Load(), good[0].Calls.Load(), good[1].Calls.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	load.wg.Wait()
	before := bad.Calls.Load()
	if err := callN(ctx, c, 50); err != nil {
		t.Fatalf("call after the ejection: %v", err)
	}
	if got := bad.Calls.Load() - before; got != 0 {
		t.Errorf("the ejected backend got %d calls; want 0", got)
	}
	for _, g := range good {
		if n := obs.failures(g.Addr); n != 0 {
			t.Errorf("good backend %s reported TRANSIENT_FAILURE %d times", g.Addr, n)
		}
	}
}

// TestLimiterBesideXDS: the Factory's grpcreuse concurrency limit applies
// to an xDS target: with one call in flight and a limit of 1 (no queue),
// the next call fails RESOURCE_EXHAUSTED on the client.
func TestLimiterBesideXDS(t *testing.T) {
	bs, held, gate := startHoldingBackend(t)
	cp := startControlPlane(t)
	f := newFactory(t, cp, clientconn.WithServiceConfig(`{"grpcreuse": {"methodConfig": [
		{"name": [{}], "concurrencyLimit": {"limit": 1, "maxQueued": 0}}]}}`))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn := get(ctx, t, f)
	if _, err := pushAndAwait(t, cp, resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 1}, oneLocality(bs...))); err != nil {
		t.Fatal(err)
	}
	c := testpb.NewTestServiceClient(conn)
	heldDone := make(chan error, 1)
	go func() {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hold")}})
		heldDone <- err
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the held call did not reach the backend")
	}
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("call beside the held one: %v; want the limiter's RESOURCE_EXHAUSTED", err)
	}
	close(gate)
	if err := <-heldDone; err != nil {
		t.Fatalf("held call: %v", err)
	}
	if got := bs[0].Calls.Load(); got != 1 {
		t.Errorf("backend got %d calls; want 1 (the limited call never left the client)", got)
	}
}

// TestEDSHealthStatus: an endpoint the control plane marks DRAINING is
// left out before the policy sees it (no connection, no call); marked
// HEALTHY again, it gets the config's connections and calls.
func TestEDSHealthStatus(t *testing.T) {
	bs := startBackends(t, 2, testutil.BackendOptions{})
	cp := startControlPlane(t)
	f := newFactory(t, cp)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	conn := get(ctx, t, f)
	locs := oneLocality(bs...)
	locs[0].Endpoints[1].Health = corepb.HealthStatus_DRAINING
	if _, err := pushAndAwait(t, cp, resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 2}, locs)); err != nil {
		t.Fatal(err)
	}
	awaitAccepts(t, bs[:1], 2)
	c := testpb.NewTestServiceClient(conn)
	if err := callN(ctx, c, 20); err != nil {
		t.Fatal(err)
	}
	if n, calls := bs[1].Listener.Accepts(), bs[1].Calls.Load(); n != 0 || calls != 0 {
		t.Fatalf("the DRAINING backend accepted %d connections and got %d calls; want 0 and 0", n, calls)
	}
	locs[0].Endpoints[1].Health = corepb.HealthStatus_HEALTHY
	if _, err := pushAndAwait(t, cp, resources(t, policyForms[0], map[string]any{"subchannelsPerEndpoint": 2}, locs)); err != nil {
		t.Fatal(err)
	}
	awaitAccepts(t, bs, 2)
	testutil.Eventually(t, waitFor, func() bool {
		return callN(ctx, c, 5) == nil && bs[1].Calls.Load() > 0
	}, "the backend marked HEALTHY again serves calls")
}
