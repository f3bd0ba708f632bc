package interceptors_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
)

type exampleServer struct {
	testpb.UnimplementedTestServiceServer
	calls atomic.Int64
}

func (s *exampleServer) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	return nil, status.Error(codes.Internal, "bug")
}

// One service config document carries gRPC's settings and the grpcreuse
// policy; SplitServiceConfig separates them and the Policy builds the
// breaker and limiter interceptors.
func ExampleSplitServiceConfig() {
	doc := `{
	  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}], "timeout": "5s"}],
	  "grpcreuse": {"methodConfig": [{
	    "name": [{"service": "grpc.testing.TestService"}],
	    "circuitBreaker": {"consecutiveFailures": 3, "openTimeout": "30s"},
	    "concurrencyLimit": {"limit": 10, "maxQueued": 20, "maxWait": "0.1s"}
	  }]}
	}`
	grpcDoc, policy, err := interceptors.SplitServiceConfig(doc)
	if err != nil {
		fmt.Println(err)
		return
	}
	chain, err := interceptors.NewClientChain(interceptors.WithPolicy(policy))
	if err != nil {
		fmt.Println(err)
		return
	}

	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer()
	backend := &exampleServer{}
	testpb.RegisterTestServiceServer(srv, backend)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	opts := append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(grpcDoc),
	}, chain.DialOptions()...)
	cc, err := grpc.NewClient("passthrough:///backend", opts...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	for range 5 {
		_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		fmt.Println(status.Code(err), errors.Is(err, breaker.ErrOpen))
	}
	fmt.Println("backend saw", backend.calls.Load(), "calls")

	_, _, err = interceptors.SplitServiceConfig(`{"grpcreuse": {"methodConfig": [{"name": [{}], "circuitBreaker": {"failureRatio": 1.5}}]}}`)
	fmt.Println(err)
	// Output:
	// Internal false
	// Internal false
	// Internal false
	// Unavailable true
	// Unavailable true
	// backend saw 3 calls
	// grpcreuse: "circuitBreaker.failureRatio" is 1.5; must be between 0 and 1 (methodConfig[0])
}

// NewClientChain is the one way to build the client chain: here from a
// breaker registry and a limiter of one's own, for one tenant, as one
// unary and one stream interceptor.
func ExampleNewClientChain() {
	cfg := breaker.DefaultConfig()
	cfg.ConsecutiveFailures = 2
	reg, err := breaker.New(breaker.WithConfig(cfg), breaker.WithTenant("acme"))
	if err != nil {
		fmt.Println(err)
		return
	}
	lim, err := interceptors.NewLimiter(interceptors.WithLimiterTenant("acme"))
	if err != nil {
		fmt.Println(err)
		return
	}
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		fmt.Println(err)
		return
	}

	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, &exampleServer{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	cc, err := grpc.NewClient("passthrough:///backend", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, chain.DialOptions()...)...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	for range 3 {
		_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		fmt.Println(status.Code(err))
	}
	for _, b := range chain.Breakers() {
		fmt.Println(b.Tenant, b.Key, b.State, b.Rejections)
	}
	// Output:
	// Internal
	// Internal
	// Unavailable
	// acme passthrough:///backend/grpc.testing.TestService/UnaryCall open 1
}
