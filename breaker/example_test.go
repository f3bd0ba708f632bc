package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
)

type downServer struct {
	testpb.UnimplementedTestServiceServer
	calls int
}

func (s *downServer) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls++
	return nil, status.Error(codes.Unavailable, "backend down")
}

// A breaker that trips after two failures keeps further calls off the
// failing backend and fails them fast with Unavailable and ErrOpen.
func Example() {
	lis := bufconn.Listen(1 << 16)
	srv := grpc.NewServer()
	backend := &downServer{}
	testpb.RegisterTestServiceServer(srv, backend)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	cfg := breaker.DefaultConfig()
	cfg.ConsecutiveFailures = 2
	reg, err := breaker.New(breaker.WithConfig(cfg))
	if err != nil {
		fmt.Println("breaker:", err)
		return
	}
	cc, err := grpc.NewClient("passthrough:///backend",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(interceptors.BreakerUnaryClientInterceptor(reg)))
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	for i := 1; i <= 4; i++ {
		_, err := client.UnaryCall(context.Background(), &testpb.SimpleRequest{})
		fmt.Printf("call %d: %v, breaker open: %v\n", i, status.Code(err), errors.Is(err, breaker.ErrOpen))
	}
	fmt.Println("backend saw", backend.calls, "calls; breaker is", reg.State("passthrough:///backend", "/grpc.testing.TestService/UnaryCall"))
	// Output:
	// call 1: Unavailable, breaker open: false
	// call 2: Unavailable, breaker open: false
	// call 3: Unavailable, breaker open: true
	// call 4: Unavailable, breaker open: true
	// backend saw 2 calls; breaker is open
}
