package compose_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/retry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestComposesWithGoGRPCMiddleware chains go-grpc-middleware v2's retry
// interceptor outside the grpcreuse chain: every retry attempt passes
// through the breaker, which opens after three and stops the rest before
// they reach the server.
func TestComposesWithGoGRPCMiddleware(t *testing.T) {
	var faults testutil.Faults
	faults.FailEvery(1, codes.Unavailable)
	b := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: faults.ServerOptions()})
	cfg := breaker.DefaultConfig()
	cfg.ConsecutiveFailures = 3
	cfg.OpenTimeout = time.Minute
	reg, err := breaker.New(breaker.WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	ours, err := interceptors.NewClientChain(interceptors.WithBreakers(reg))
	if err != nil {
		t.Fatal(err)
	}
	chain := []grpc.UnaryClientInterceptor{
		retry.UnaryClientInterceptor(retry.WithMax(5), retry.WithCodes(codes.Unavailable), retry.WithBackoff(retry.BackoffLinear(0))),
		ours.UnaryClientInterceptor(),
	}
	cc, err := grpc.NewClient(b.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithChainUnaryInterceptor(chain...))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.Unavailable || !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("after 5 attempts: %v, want Unavailable wrapping breaker.ErrOpen", err)
	}
	if got := faults.Calls(); got != 3 {
		t.Errorf("server saw %d attempts, want 3: the breaker opens at 3 and fails the rest locally", got)
	}
}
