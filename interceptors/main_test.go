package interceptors_test

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }

// dial connects to a loopback backend with the given interceptor options
// and closes the connection when the test ends.
func dial(t testing.TB, addr string, opts ...grpc.DialOption) testpb.TestServiceClient {
	t.Helper()
	return testpb.NewTestServiceClient(dialConn(t, addr, opts...))
}

// dialConn is dial returning the connection.
func dialConn(t testing.TB, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// streamOnce opens a FullDuplexCall, sends one message and receives its
// answer; it fails the test, saying what the stream was, if any step
// fails, and returns the open stream.
func streamOnce(t testing.TB, ctx context.Context, c testpb.TestServiceClient, what string) testpb.TestService_FullDuplexCallClient {
	t.Helper()
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A Send that finds the stream already answered returns io.EOF; the
	// answer is Recv's to tell.
	if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil && err != io.EOF {
		t.Fatalf("%s: Send: %v", what, err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("%s = %v, want admitted", what, err)
	}
	return s
}

// recvAll receives until the stream ends: nil when it ended cleanly
// (io.EOF), else its error.
func recvAll[T any](recv func() (T, error)) error {
	for {
		if _, err := recv(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func unary(ctx context.Context, c testpb.TestServiceClient) error {
	_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

// events records breaker and limiter telemetry.
type events struct {
	telemetry.Nop
	mu       sync.Mutex
	states   []string
	rejected map[string]int // by reason, limiter; "breaker" for breaker rejections
	limits   []int
	shed     map[string]int // ServerShed, by reason
}

func (e *events) ServerShed(_ string, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.shed == nil {
		e.shed = map[string]int{}
	}
	e.shed[reason]++
}

func (e *events) shedCount(k string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.shed[k]
}

func (e *events) BreakerStateChanged(_, key string, from, to telemetry.BreakerState) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.states = append(e.states, from.String()+"->"+to.String())
}

func (e *events) BreakerRejected(string, string) { e.count("breaker") }

func (e *events) LimiterRejected(_, _ string, reason string) { e.count(reason) }

func (e *events) LimiterLimitChanged(_, _ string, limit int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.limits = append(e.limits, limit)
}

func (e *events) count(k string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.rejected == nil {
		e.rejected = map[string]int{}
	}
	e.rejected[k]++
}

func (e *events) rejections(k string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.rejected[k]
}
