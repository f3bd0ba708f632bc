package clientconn_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// stateCounter counts balancer subchannel events per endpoint.
type stateCounter struct {
	telemetry.Nop
	ready chan string
}

func (s *stateCounter) SubchannelState(_, endpoint string, st connectivity.State) {
	if st == connectivity.Ready {
		select {
		case s.ready <- endpoint:
		default:
		}
	}
}

func TestFactoryWithGrpcreuseBalancer(t *testing.T) {
	backends := make([]*testutil.Backend, 3)
	var endpoints []resolver.Endpoint
	for i := range backends {
		backends[i] = testutil.StartBackend(t, testutil.BackendOptions{})
		endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: backends[i].Addr}}})
	}
	scheme := "grpcreusetest" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", ""))
	r := manual.NewBuilderWithScheme(scheme)
	r.InitialState(resolver.State{Endpoints: endpoints})

	obs := &stateCounter{ready: make(chan string, 64)}
	f := newFactory(t, clientconn.WithResolvers(r), clientconn.WithObserver(obs), clientconn.WithServiceConfig(
		`{"loadBalancingConfig":[{"`+balancer.Name+`":{"subchannelsPerEndpoint":2}}]}`))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, scheme+":///backends", clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 90; i++ {
		mustUnary(t, c)
	}
	for i, b := range backends {
		// The second eager connection may still be dialling after the calls.
		testutil.Eventually(t, 5*time.Second, func() bool { return b.Listener.Accepts() >= 2 }, fmt.Sprintf("backend %d accepted 2 connections", i))
		if got := b.Listener.Accepts(); got != 2 {
			t.Errorf("backend %d accepted %d connections, want 2 (subchannelsPerEndpoint)", i, got)
		}
		if b.Calls.Load() == 0 {
			t.Errorf("backend %d got no calls", i)
		}
	}
	// The balancer reported through the Factory's observer.
	seen := map[string]bool{}
	for len(seen) < 3 {
		select {
		case ep := <-obs.ready:
			seen[ep] = true
		case <-ctx.Done():
			t.Fatalf("READY subchannels reported for %v, want all 3 endpoints", seen)
		}
	}
}
