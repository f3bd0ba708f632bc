package interceptors_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// NewShedder validates the whole config: a bad field is an error naming
// the field, as its JSON name, and the value (a *ConfigError), never a
// silent default.
func ExampleNewShedder() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit = 64 // how many unary calls your server works on at once (default 100)
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := grpc.NewServer(shed.ServerOptions()...)
	srv.Stop()
	limit, _ := shed.InFlight()
	fmt.Println("limit:", limit)

	cfg.Limit = 0
	_, err = interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	fmt.Println(err)
	var ce *interceptors.ConfigError
	if errors.As(err, &ce) {
		fmt.Printf("field %s, value %s\n", ce.Field, ce.Value)
	}
	// Output:
	// limit: 64
	// interceptors: "limit" is 0; must be between 1 and 1073741824
	// field limit, value 0
}

// shedCounter counts the Shedder's sheds by reason: a shed on the tap
// path reaches no interceptor, so the observer is where a server sees
// every shed.
type shedCounter struct {
	telemetry.Nop // LimiterRejected and LimiterLimitChanged: nothing
	mu            sync.Mutex
	shed          map[string]int
}

func (c *shedCounter) ServerShed(method, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shed[method+" "+reason]++
}

// A server with interceptors of its own, health checks and reflection:
// the Shedder's options go first, so its interceptors are chained
// outside yours (grpc.ChainUnaryInterceptor, given once or more, appends
// in order), and yours see only the calls it admitted. Health checks are
// never shed; reflection (an admin service an operator needs on a loaded
// server) is made exempt. The client reads a shed's numbers from its
// status details, which the tap's answer carries as the interceptor's
// does (Example_shedDetails). Sheds are counted by the observer.
//
// Give the Shedder's interceptors only once: ServerOptions has them
// already, and chaining shed.UnaryServerInterceptor() again counts every
// call twice (a limit of 64 admits 32, a limit of 1 sheds every call).
// TapHandle needs them too: without the interceptors it sheds nothing.
func ExampleShedder_ServerOptions_yourInterceptors() {
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit, cfg.LogInterval = 1, 0
	cfg.Exempt = []string{"/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"}
	sheds := &shedCounter{shed: map[string]int{}}
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg), interceptors.WithShedderObserver(sheds))
	if err != nil {
		fmt.Println(err)
		return
	}
	var seen atomic.Int64 // the calls your interceptor saw
	yours := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		seen.Add(1)
		return handler(ctx, req)
	}
	srv := grpc.NewServer(append(shed.ServerOptions(),
		grpc.ChainUnaryInterceptor(yours),
		grpc.MaxConcurrentStreams(100),
	)...)
	svc := newGatedService(1)
	testpb.RegisterTestServiceServer(srv, svc)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)
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

	_, err = c.UnaryCall(context.Background(), &testpb.SimpleRequest{})
	fmt.Println("at the limit:", status.Code(err))
	for _, d := range status.Convert(err).Details() { // the tap's answer carries the details too
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			fmt.Println("  ErrorInfo:", d.GetReason(), d.GetMetadata())
		case *errdetails.RetryInfo:
			fmt.Println("  RetryInfo:", d.GetRetryDelay().AsDuration())
		}
	}
	resp, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println("health at the limit:", resp.GetStatus(), err)
	fmt.Println("reflection at the limit:", listServices(cc))
	close(svc.release)
	fmt.Println("first call:", <-first)
	fmt.Println("calls your interceptor saw:", seen.Load()) // the first call and the health check
	sheds.mu.Lock()
	fmt.Println("sheds observed:", sheds.shed)
	sheds.mu.Unlock()
	// Output:
	// at the limit: ResourceExhausted
	//   ErrorInfo: SHED_IN_FLIGHT_LIMIT map[limit:1]
	//   RetryInfo: 20ms
	// health at the limit: SERVING <nil>
	// reflection at the limit: [grpc.health.v1.Health grpc.reflection.v1.ServerReflection grpc.reflection.v1alpha.ServerReflection grpc.testing.TestService]
	// first call: <nil>
	// calls your interceptor saw: 2
	// sheds observed: map[/grpc.testing.TestService/UnaryCall limit:1]
}

// listServices asks the server's reflection service which services it
// serves.
func listServices(cc grpc.ClientConnInterface) any {
	s, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(context.Background())
	if err != nil {
		return err
	}
	defer s.CloseSend()
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		return err
	}
	resp, err := s.Recv()
	if err != nil {
		return err
	}
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	return names
}
