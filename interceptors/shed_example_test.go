package interceptors_test

import (
	"context"
	"errors"
	"fmt"
	"net"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

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
	svc := newGatedService(1)
	testpb.RegisterTestServiceServer(srv, svc)
	cc, stop, err := serveLoopback(srv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
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

// EmptyCall answers at once: the examples use it as a method that is not
// held by the gate.
func (g *gatedService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func newGatedService(holders int) *gatedService {
	return &gatedService{started: make(chan struct{}, holders), release: make(chan struct{})}
}

// serveLoopback serves srv on a loopback port and returns a client
// connection to it (dialed with opts besides insecure credentials) and a
// function that closes the connection and stops the server.
func serveLoopback(srv *grpc.Server, opts ...grpc.DialOption) (*grpc.ClientConn, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		srv.Stop()
		<-served
		return nil, nil, err
	}
	return cc, func() { cc.Close(); srv.Stop(); <-served }, nil
}

// ServerOptions is the recommended install: the tap path answers a shed
// before grpc-go creates the stream (so its answer carries the status and
// its details, not the pushback trailer), and the interceptors take and
// free the slots. Health checks are never shed.
func ExampleShedder_ServerOptions() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit = 1       // how many unary calls this server works on at once
	cfg.LogInterval = 0 // no summary log line in this example
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	// Your own options go after the Shedder's, so that its interceptors
	// are chained first and time the whole handler chain.
	srv := grpc.NewServer(append(shed.ServerOptions(), grpc.MaxConcurrentStreams(100))...)
	svc := newGatedService(1)
	testpb.RegisterTestServiceServer(srv, svc)
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(srv, healthSrv)
	cc, stop, err := serveLoopback(srv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	c := testpb.NewTestServiceClient(cc)
	first := make(chan error, 1)
	go func() { _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); first <- err }()
	<-svc.started // the only slot is in use

	var trailer metadata.MD
	_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
	fmt.Println(status.Code(err), status.Convert(err).Message())
	fmt.Println("pushback trailer:", trailer.Get(interceptors.PushbackTrailer))
	resp, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println("health at the limit:", resp.GetStatus(), err)
	close(svc.release)
	fmt.Println("first call:", <-first)
	fmt.Println("shed for the limit:", shed.Snapshot().Shed[interceptors.ReasonLimit])
	// Output:
	// ResourceExhausted interceptors: shed: the server is at its in-flight limit
	// pushback trailer: []
	// health at the limit: SERVING <nil>
	// first call: <nil>
	// shed for the limit: 1
}

// A server takes one grpc.InTapHandle (a second one makes grpc.NewServer
// panic), so a server with a tap of its own calls TapHandle from it, as
// its last step, returns the context TapHandle returns, and chains the
// Shedder's interceptors itself, first.
func ExampleShedder_TapHandle() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.LogInterval = 1, 0
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	ownTap := func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if len(info.Header.Get("x-tenant")) == 0 { // your own checks first
			return nil, status.Error(codes.Unauthenticated, "no x-tenant header")
		}
		return shed.TapHandle(ctx, info) // last, and return its context
	}
	srv := grpc.NewServer(
		grpc.InTapHandle(ownTap),
		grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor() /* , yours... */),
		grpc.ChainStreamInterceptor(shed.StreamServerInterceptor() /* , yours... */),
	)
	svc := newGatedService(1)
	testpb.RegisterTestServiceServer(srv, svc)
	cc, stop, err := serveLoopback(srv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	c := testpb.NewTestServiceClient(cc)
	_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	fmt.Println("without x-tenant:", status.Code(err))

	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-tenant", "acme")
	first := make(chan error, 1)
	go func() { _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); first <- err }()
	<-svc.started // the only slot is in use
	_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{})
	fmt.Println("at the limit:", status.Code(err))
	close(svc.release)
	fmt.Println("first call:", <-first)
	// Output:
	// without x-tenant: Unauthenticated
	// at the limit: ResourceExhausted
	// first call: <nil>
}

// Sheddable requests may use only SheddableShare of the limit. A method's
// default comes from ShedderConfig.Criticality; a client overrides it per
// call with WithCriticality (the grpcreuse-criticality header).
func ExampleWithCriticality() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.SheddableShare, cfg.LogInterval = 4, 0.5, 0 // sheddable requests: 2 of the 4 slots
	cfg.Criticality = map[string]interceptors.Criticality{
		"/grpc.testing.TestService/EmptyCall": interceptors.Sheddable, // or a whole service: "/grpc.testing.TestService/"
	}
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := grpc.NewServer(shed.ServerOptions()...)
	svc := newGatedService(2)
	testpb.RegisterTestServiceServer(srv, svc)
	cc, stop, err := serveLoopback(srv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	c := testpb.NewTestServiceClient(cc)
	held := make(chan error, 2)
	for range 2 { // two critical calls (UnaryCall's default) hold 2 of the 4 slots
		go func() { _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); held <- err }()
		<-svc.started
	}
	bg := context.Background()
	_, err = c.EmptyCall(bg, &testpb.Empty{})
	fmt.Println("EmptyCall (sheddable by default):", status.Convert(err).Message())
	_, err = c.EmptyCall(interceptors.WithCriticality(bg, interceptors.Critical), &testpb.Empty{})
	fmt.Println("EmptyCall marked critical:", status.Code(err))
	_, err = c.UnaryCall(interceptors.WithCriticality(bg, interceptors.Sheddable), &testpb.SimpleRequest{})
	fmt.Println("UnaryCall marked sheddable:", status.Code(err))
	close(svc.release)
	fmt.Println("held calls:", <-held, <-held)
	fmt.Println("shed as sheddable:", shed.Snapshot().Shed[interceptors.ReasonSheddable])
	// Output:
	// EmptyCall (sheddable by default): interceptors: shed: sheddable request beyond its share of the in-flight limit
	// EmptyCall marked critical: OK
	// UnaryCall marked sheddable: ResourceExhausted
	// held calls: <nil> <nil>
	// shed as sheddable: 2
}

// A shed crosses the wire as a status: the client reads its numbers from
// the ErrorInfo and RetryInfo details (errors.Is(err, ErrShed) holds only
// on the server, for an interceptor chained outside the Shedder's, on the
// interceptor path; the tap's sheds reach no interceptor).
func Example_shedDetails() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.LogInterval = 1, 0
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	logSheds := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if errors.Is(err, interceptors.ErrShed) {
			fmt.Println("server: shed", info.FullMethod)
		}
		return resp, err
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(logSheds, shed.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(shed.StreamServerInterceptor()))
	svc := newGatedService(1)
	testpb.RegisterTestServiceServer(srv, svc)
	cc, stop, err := serveLoopback(srv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	c := testpb.NewTestServiceClient(cc)
	first := make(chan error, 1)
	go func() { _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); first <- err }()
	<-svc.started

	_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	fmt.Println("client: errors.Is(err, ErrShed):", errors.Is(err, interceptors.ErrShed))
	st := status.Convert(err)
	fmt.Println("client:", st.Code())
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			fmt.Println("client: ErrorInfo", d.GetDomain(), d.GetReason(), d.GetMetadata())
		case *errdetails.RetryInfo:
			fmt.Println("client: RetryInfo, retry after", d.GetRetryDelay().AsDuration())
		}
	}
	close(svc.release)
	fmt.Println("first call:", <-first)
	// Output:
	// server: shed /grpc.testing.TestService/UnaryCall
	// client: errors.Is(err, ErrShed): false
	// client: ResourceExhausted
	// client: ErrorInfo grpcreuse.github.io SHED_IN_FLIGHT_LIMIT map[limit:1]
	// client: RetryInfo, retry after 20ms
	// first call: <nil>
}

// Validate (which NewShedder calls) names the field, as its JSON
// spelling, and the value.
func ExampleShedderConfig_Validate() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.SheddableShare = 1.5
	err := cfg.Validate()
	fmt.Println(err)
	var ce *interceptors.ConfigError
	if errors.As(err, &ce) {
		fmt.Println(ce.Field, ce.Value)
	}
	// Output:
	// interceptors: "sheddableShare" is 1.5; must be above 0 and at most 1
	// sheddableShare 1.5
}

// A grpc-go client with a retry policy for RESOURCE_EXHAUSTED backs off
// by the pushback trailer. On the tap path (ServerOptions) the first
// attempt is shed by the tap, without the trailer; retry attempts
// (grpc-previous-rpc-attempts) pass to the interceptor, which sheds them
// with it.
func ExampleShedder_retryPushback() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.LogInterval = 1, 0
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := grpc.NewServer(shed.ServerOptions()...)
	svc := newGatedService(1)
	testpb.RegisterTestServiceServer(srv, svc)

	const retryPolicy = `{"methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
	  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.005s", "maxBackoff": "0.05s",
	                  "backoffMultiplier": 2, "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}}]}`
	cc, stop, err := serveLoopback(srv, grpc.WithDefaultServiceConfig(retryPolicy))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	c := testpb.NewTestServiceClient(cc)
	first := make(chan error, 1)
	go func() { _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); first <- err }()
	<-svc.started // the only slot stays in use for all three attempts

	var trailer metadata.MD
	_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
	fmt.Println(status.Code(err))
	fmt.Println("last attempt's pushback ms:", trailer.Get(interceptors.PushbackTrailer))
	fmt.Println("attempts shed:", shed.Snapshot().Shed[interceptors.ReasonLimit])
	close(svc.release)
	fmt.Println("first call:", <-first)
	// Output:
	// ResourceExhausted
	// last attempt's pushback ms: [20]
	// attempts shed: 3
	// first call: <nil>
}

// Exempt methods are served as plain grpc-go serves them: a long poll that
// clients hold open by design (here UnaryCall, held by the gate) takes no
// slot, so two of them run at a limit of one, and other methods still get
// the slot.
func ExampleShedderConfig_exempt() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.LogInterval = 1, 0
	cfg.Exempt = []string{"/grpc.testing.TestService/UnaryCall"}
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := grpc.NewServer(shed.ServerOptions()...)
	svc := newGatedService(2)
	testpb.RegisterTestServiceServer(srv, svc)
	cc, stop, err := serveLoopback(srv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	c := testpb.NewTestServiceClient(cc)
	polls := make(chan error, 2)
	for range 2 {
		go func() { _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{}); polls <- err }()
		<-svc.started
	}
	_, inFlight := shed.InFlight()
	fmt.Println("long polls running: 2, holding slots:", inFlight)
	_, err = c.EmptyCall(context.Background(), &testpb.Empty{})
	fmt.Println("EmptyCall:", status.Code(err))
	close(svc.release)
	fmt.Println("long polls:", <-polls, <-polls)
	// Output:
	// long polls running: 2, holding slots: 0
	// EmptyCall: OK
	// long polls: <nil> <nil>
}
