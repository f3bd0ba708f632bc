package clientconn_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/grpcreuse/grpcreuse/balancer"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
)

func debugJSON(t *testing.T, h http.Handler) debugpage.Snapshot {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "?format=json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var snap debugpage.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatalf("decoding JSON: %v", err)
	}
	return snap
}

// TestDebugPageShowsNoPhantomBreaker: once a tenant's policy state is
// forgotten (its connections gone and 64 other tenants' sets used since),
// the debug page must not keep showing its open breaker, without a
// tenant, as if it still failed calls.
func TestDebugPageShowsNoPhantomBreaker(t *testing.T) {
	var faults testutil.Faults
	b := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: faults.ServerOptions()})
	f := newFactory(t, clientconn.WithServiceConfig(breakerServiceConfig), clientconn.WithMaxIdle(0))
	c := get(t, f, b.Addr, clientconn.WithTenant("a"))
	faults.FailEvery(1, codes.Unavailable)
	for range 4 {
		_ = unary(context.Background(), c)
	}
	snap := debugJSON(t, f.DebugHandler())
	if len(snap.Breakers) != 1 || snap.Breakers[0].State != "open" || snap.Breakers[0].Tenant != "a" {
		t.Fatalf("breakers = %+v, want tenant a's open breaker", snap.Breakers)
	}
	c.Close()
	for i := range 80 { // push tenant a's set out of the 64 kept
		get(t, f, b.Addr, clientconn.WithTenant(fmt.Sprint("other", i))).Close()
	}
	if _, pols := clientconn.PolicyStateForTest(f); pols > 64 {
		t.Fatalf("%d policy states kept, want at most 64", pols)
	}
	snap = debugJSON(t, f.DebugHandler())
	for _, br := range snap.Breakers {
		t.Errorf("breaker row %+v shown for a policy state the Factory no longer holds", br)
	}
}

// TestDebugPageForgetsRemovedEndpoints: an endpoint the resolver no longer
// lists leaves the debug page; with address churn, records of endpoints
// long gone would otherwise fill the page's record budget and hide new
// ones.
func TestDebugPageForgetsRemovedEndpoints(t *testing.T) {
	b1 := testutil.StartBackend(t, testutil.BackendOptions{})
	b2 := testutil.StartBackend(t, testutil.BackendOptions{})
	ep := func(addr string) resolver.Endpoint {
		return resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr}}}
	}
	scheme := "grpcreusetest" + strings.ToLower(t.Name())
	r := manual.NewBuilderWithScheme(scheme)
	r.InitialState(resolver.State{Endpoints: []resolver.Endpoint{ep(b1.Addr), ep(b2.Addr)}})
	f := newFactory(t, clientconn.WithResolvers(r), clientconn.WithServiceConfig(
		`{"loadBalancingConfig":[{"`+balancer.Name+`":{}}]}`))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, scheme+":///backends", clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustUnary(t, c)
	endpoints := func() map[string]bool {
		m := map[string]bool{}
		for _, e := range debugJSON(t, f.DebugHandler()).Endpoints {
			m[e.Endpoint] = true
		}
		return m
	}
	testutil.Eventually(t, 10*time.Second, func() bool { m := endpoints(); return m[b1.Addr] && m[b2.Addr] }, "both endpoints on the page")
	r.UpdateState(resolver.State{Endpoints: []resolver.Endpoint{ep(b1.Addr)}})
	testutil.Eventually(t, 10*time.Second, func() bool { m := endpoints(); return m[b1.Addr] && !m[b2.Addr] }, "the removed endpoint to leave the page")
}

// TestDebugPageCountsEndpointCalls: the endpoint rows showed 0
// connections and 0 calls for endpoints serving traffic (the balancer's
// EndpointState and EndpointCalls were dropped): an operator would read
// a busy backend as idle.
func TestDebugPageCountsEndpointCalls(t *testing.T) {
	var faults testutil.Faults
	be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: faults.ServerOptions()})
	scheme := "grpcreusetest" + strings.ToLower(t.Name())
	r := manual.NewBuilderWithScheme(scheme)
	r.InitialState(resolver.State{Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: be.Addr}}}}})
	f := newFactory(t, clientconn.WithResolvers(r), clientconn.WithServiceConfig(
		`{"loadBalancingConfig":[{"`+balancer.Name+`":{"subchannelsPerEndpoint":2}}]}`))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, scheme+":///backends", clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 10 {
		mustUnary(t, c)
	}
	faults.FailEvery(1, codes.Unavailable)
	for range 3 {
		_ = unary(ctx, c)
	}
	var last debugpage.Endpoint
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, e := range debugJSON(t, f.DebugHandler()).Endpoints {
			if e.Endpoint == be.Addr {
				last = e
				return e.CallsOK == 10 && e.CallsFailed == 3 && e.Connections == 2 && e.State == "READY"
			}
		}
		return false
	}, "the endpoint row to count 10 OK and 3 failed calls over 2 connections")
	t.Logf("endpoint row: %+v", last)
}
