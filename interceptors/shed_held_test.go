package interceptors_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestShedderTapLeavesHeldAnswersToTheInterceptor: grpc-go never cancels
// the context of a request its tap refused, so each tap shed of a request
// with a deadline stays in the server's memory until that deadline (about
// 470 bytes; see held.go). Past a bound of such answers, and for every
// deadline beyond heldHorizon, the tap leaves the request to the
// interceptor, whose shed keeps nothing. Requests without a deadline hold
// nothing and are always the tap's. Only the interceptor's shed carries
// the pushback trailer, which tells the two apart.
func TestShedderTapLeavesHeldAnswersToTheInterceptor(t *testing.T) {
	const method, most = "/grpc.testing.TestService/UnaryCall", 10
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 })
	interceptors.SetShedderServiceTime(shed, method, time.Millisecond, 10) // known to the tap
	interceptors.SetShedderHeldMost(shed, most)
	be := startGated(t, shed.ServerOptions()...)
	c := dial(t, be.Addr)
	bound, cancel := context.WithCancel(context.Background()) // no deadline: the calls' own decide
	defer cancel()
	watchdog := time.AfterFunc(30*time.Second, cancel)
	defer watchdog.Stop()

	held := make(chan error, 1)
	go func() { _, err := c.UnaryCall(bound, &testpb.SimpleRequest{}); held <- err }()
	testutil.Eventually(t, 10*time.Second, func() bool { return be.inflight.Load() == 1 }, "a call holds the only slot")

	shedBy := func(timeout time.Duration, calls int) (tap, interceptor int) {
		t.Helper()
		for range calls {
			ctx, cancel := bound, context.CancelFunc(func() {})
			if timeout > 0 {
				ctx, cancel = context.WithTimeout(bound, timeout)
			}
			var trailer metadata.MD
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
			cancel()
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("call with timeout %v = %v, want ResourceExhausted", timeout, err)
			}
			if len(trailer.Get(interceptors.PushbackTrailer)) > 0 {
				interceptor++
			} else {
				tap++
			}
		}
		return tap, interceptor
	}
	if tap, icpt := shedBy(0, 30); tap != 30 {
		t.Errorf("without deadlines: %d shed by the tap, %d by the interceptor; want all 30 by the tap (nothing is held)", tap, icpt)
	}
	if tap, icpt := shedBy(20*time.Second, 30); tap != most || icpt != 30-most {
		t.Errorf("20 s deadlines: %d shed by the tap, %d by the interceptor; want %d and %d (the bound)", tap, icpt, most, 30-most)
	}
	if tap, icpt := shedBy(2*time.Hour, 20); tap != 0 {
		t.Errorf("2 h deadlines: %d shed by the tap, %d by the interceptor; want all 20 by the interceptor (beyond the horizon)", tap, icpt)
	}
	if n := interceptors.ShedderDeferred(shed); n != 0 {
		t.Errorf("%d deferred requests still counted after their sheds, want 0", n)
	}
	close(be.gate)
	if err := <-held; err != nil {
		t.Errorf("the call holding the slot = %v, want OK", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { _, n := shed.InFlight(); return n == 0 }, "nothing in flight")
}
