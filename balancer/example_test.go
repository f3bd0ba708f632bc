package balancer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	// Importing the package registers the policy with grpc.
	"github.com/grpcreuse/grpcreuse/balancer"
)

type echo struct {
	testpb.UnimplementedTestServiceServer
	mu    sync.Mutex
	calls int
}

func (e *echo) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	e.mu.Lock()
	e.calls++
	e.mu.Unlock()
	return &testpb.SimpleResponse{}, nil
}

// Example configures the policy through service config for a client of two
// loopback backends; every backend gets two warm connections before the
// first call, and calls spread over both backends.
func Example() {
	var backends []*echo
	var addrs []string
	for range 2 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			log.Fatal(err)
		}
		srv, e := grpc.NewServer(), &echo{}
		testpb.RegisterTestServiceServer(srv, e)
		go srv.Serve(lis)
		defer srv.Stop()
		backends, addrs = append(backends, e), append(addrs, lis.Addr().String())
	}

	serviceConfig := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{
		"subchannelsPerEndpoint": 2,
		"ejection": {"consecutiveFailures": 5, "baseEjectionTime": "10s"}}}]}`, balancer.Name)
	// Any resolver works (dns, passthrough, xDS-free custom ones); grpc's
	// manual resolver hands both addresses over here.
	r := manual.NewBuilderWithScheme("example")
	r.InitialState(resolver.State{Endpoints: []resolver.Endpoint{
		{Addresses: []resolver.Address{{Addr: addrs[0]}}},
		{Addresses: []resolver.Address{{Addr: addrs[1]}}},
	}})
	cc, err := grpc.NewClient("example:///backends",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(serviceConfig))
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Close()

	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 100 {
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
			log.Fatal(err)
		}
	}
	for i, e := range backends {
		e.mu.Lock()
		fmt.Printf("backend %d served calls: %v\n", i, e.calls > 0)
		e.mu.Unlock()
	}

	// Invalid values are errors that name the field, the value and the range.
	_, err = balancer.ParseConfig([]byte(`{"choiceCount": 1}`))
	fmt.Println(err)
	// Output:
	// backend 0 served calls: true
	// backend 1 served calls: true
	// grpcreuse_least_loaded: "choiceCount" is 1; must be between 2 and 10
}

// ExampleConfig_MarshalJSON: a misspelt field is an error naming the
// nearest known one, and a parsed config marshals back to JSON that
// parses to the same config, as grpc's (and xDS's) re-encoding needs.
func ExampleConfig_MarshalJSON() {
	_, err := balancer.ParseConfig([]byte(`{"subchannelPerEndpoint": 8}`))
	fmt.Println(err)

	cfg, err := balancer.ParseConfig([]byte(`{"maxSubchannelsPerEndpoint": 8, "ejection": {"baseEjectionTime": "1.5s", "failureCodes": ["UNAVAILABLE", "INTERNAL"]}}`))
	if err != nil {
		log.Fatal(err)
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(js))
	again, err := balancer.ParseConfig(js)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(again.MaxSubchannelsPerEndpoint, again.Ejection.BaseEjectionTime, again.Ejection.FailureCodes)
	// Output:
	// grpcreuse_least_loaded: "subchannelPerEndpoint" is not a known field; did you mean "subchannelsPerEndpoint"?
	// {"subchannelsPerEndpoint":1,"maxSubchannelsPerEndpoint":8,"targetStreamsPerSubchannel":50,"choiceCount":2,"subchannelIdleTimeout":"60s","ejection":{"consecutiveFailures":5,"baseEjectionTime":"1.500s","maxEjectionTime":"300s","maxEjectionPercent":50,"failureCodes":["UNAVAILABLE","INTERNAL"]}}
	// 8 1.5s [Unavailable Internal]
}
