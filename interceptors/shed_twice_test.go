package interceptors_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestShedderInstalledTwice: a server given ServerOptions and, besides,
// the Shedder's unary interceptor in a chain of its own ran every call
// through it twice: each call took two slots (a limit of 2 admitted one
// call) and was measured twice. The inner interceptor now sees that the
// outer one admitted the call, passes it through and says so once in the
// log. Detected for the calls the tap admitted (all but a method's first
// calls, on a server with the tap).
func TestShedderInstalledTwice(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit = 2 })
	interceptors.SetShedderServiceTime(shed, unaryMethod, time.Millisecond, 10) // the tap decides on it
	logged := captureLog(shed)
	be := startGated(t, append(shed.ServerOptions(), grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor()))...)
	c := dial(t, be.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	results := make(chan error, 2)
	for range 2 {
		go func() { results <- unary(ctx, c) }()
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return be.inflight.Load() == 2 || len(results) > 0 }, "two calls in their handlers")
	if len(results) > 0 {
		t.Fatalf("a call at half the limit ended before its handler let it: %v", <-results)
	}
	if got := shed.Snapshot().InFlight; got != 2 {
		t.Errorf("in flight = %d with 2 calls in their handlers, want 2 (one slot each)", got)
	}
	if err := unary(ctx, c); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a third call at the limit of 2 = %v, want ResourceExhausted", err)
	}
	close(be.gate)
	for range 2 {
		if err := <-results; err != nil {
			t.Errorf("held call = %v, want OK", err)
		}
	}
	if got := shed.Snapshot().InFlight; got != 0 {
		t.Errorf("in flight = %d after every call ended, want 0", got)
	}
	var twice int
	for _, l := range logged() {
		if strings.Contains(l, "installed twice") {
			twice++
		}
	}
	if twice != 1 {
		t.Errorf("the log said %d times that the interceptor is installed twice, want once: %q", twice, logged())
	}
}
