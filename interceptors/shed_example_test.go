package interceptors_test

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// gatedService answers UnaryCall once release is closed.
type gatedService struct {
	testpb.UnimplementedTestServiceServer
	started chan struct{}
	release chan struct{}
}

func (g *gatedService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	g.started <- struct{}{}
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	return &testpb.SimpleResponse{}, nil
}

// ExampleShedder serves with a Shedder whose limit is one call, installed
// on the interceptor path (which can also send grpc-retry-pushback-ms):
// while one call works, the next is shed at once.
func ExampleShedder() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.LogInterval = 1, 0
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(shed.StreamServerInterceptor()))
	svc := &gatedService{started: make(chan struct{}, 1), release: make(chan struct{})}
	testpb.RegisterTestServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() { srv.Stop(); <-served }()

	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer cc.Close()
	c := testpb.NewTestServiceClient(cc)
	first := make(chan error, 1)
	go func() { _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); first <- err }()
	<-svc.started // the only slot is in use

	var trailer metadata.MD
	_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
	fmt.Println(status.Code(err), status.Convert(err).Message())
	fmt.Println("pushback ms:", trailer.Get(interceptors.PushbackTrailer))
	close(svc.release)
	fmt.Println("first call:", <-first)
	snap := shed.Snapshot()
	fmt.Println("shed for the limit:", snap.Shed[interceptors.ReasonLimit], "in flight:", snap.InFlight)
	// Output:
	// ResourceExhausted interceptors: shed: the server is at its in-flight limit
	// pushback ms: [20]
	// first call: <nil>
	// shed for the limit: 1 in flight: 0
}
