package interceptors_test

import (
	"context"
	"sync"
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

// TestShedderTapAdmitsNoMoreThanTheFreeSlots: a burst of requests on one
// connection reaches the tap, in the connection's reader goroutine,
// before the requests it admitted reach the interceptor. The tap used to
// admit every one of them while the slots looked free, and the
// interceptor then shed all but the limit's worth, each after grpc-go had
// made its stream, goroutine and message (the costly path, which alone
// sends the pushback trailer): 42% of the bench's requests at 10×. The
// tap now counts the requests it admitted on their way, so it sheds the
// burst itself. Each admitted request's reservation ends just before it
// takes its slot (so that it never counts twice, which shed requests
// that fitted: TestShedderTapReleasesExactlyOnce), and a request read in
// that moment may pass the tap and be shed by the interceptor: at most one
// per admitted request, where the old tap passed the burst whole.
func TestShedderTapAdmitsNoMoreThanTheFreeSlots(t *testing.T) {
	const limit, burst = 4, 64
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = limit, 0 })
	// The method's service time is known, as after its first calls: the
	// tap passes requests for a method it has not seen to the interceptor.
	interceptors.SetShedderServiceTime(shed, "/grpc.testing.TestService/UnaryCall", time.Millisecond, 10)
	// Reservations lapse after a few milliseconds (reserve.go), and a
	// stream goroutine on a loaded machine can take longer than that to
	// reach the interceptor: this test checks what the tap admits, not
	// how fast the machine is.
	interceptors.SetShedderReserveFor(shed, time.Hour)
	be := startGated(t, shed.ServerOptions()...)
	c := dial(t, be.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, atTap, atInterceptor int
	sheds := make(chan struct{}, burst)
	start := make(chan struct{})
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var trailer metadata.MD
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
				return
			case status.Code(err) != codes.ResourceExhausted:
				t.Errorf("call = %v, want OK or ResourceExhausted", err)
			case len(trailer.Get(interceptors.PushbackTrailer)) > 0:
				atInterceptor++ // only the interceptor's shed carries the trailer
			default:
				atTap++
			}
			sheds <- struct{}{}
		}()
	}
	close(start)
	for range burst - limit {
		select {
		case <-sheds:
		case <-ctx.Done():
			t.Fatalf("sheds did not come: %d in the handler", be.inflight.Load())
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return be.inflight.Load() == limit }, "the limit's calls in the handler")
	close(be.gate)
	wg.Wait()
	t.Logf("OK %d, shed by the tap %d, by the interceptor %d", ok, atTap, atInterceptor)
	if ok != limit {
		t.Errorf("%d calls OK, want the limit, %d", ok, limit)
	}
	if atInterceptor > limit {
		t.Errorf("%d of %d sheds on the interceptor path, want at most %d: the tap admitted more requests than the slots free", atInterceptor, burst-limit, limit)
	}
}

// TestShedderHeadersWithoutMessageDoNotCloseTheTap: a client that opens
// requests and never sends their message holds the tap's reservations
// for a few milliseconds only (reserveFor): once they lapse the tap
// admits again, while those requests are still open. Had reservations
// lasted until the request reached the interceptor or ended, the limit's
// worth of such requests would shut the server to everyone.
func TestShedderHeadersWithoutMessageDoNotCloseTheTap(t *testing.T) {
	const limit = 4
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = limit, 0 })
	const method = "/grpc.testing.TestService/UnaryCall"
	interceptors.SetShedderServiceTime(shed, method, time.Millisecond, 10)
	be := startGated(t, shed.ServerOptions()...)
	close(be.gate) // the admitted calls answer at once
	cc := dialConn(t, be.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Headers without a message, for the unary method: grpc-go sends a
	// stream's headers when it is created.
	hold, release := context.WithCancel(ctx)
	defer release()
	var held []grpc.ClientStream
	for range limit {
		s, err := cc.NewStream(hold, &grpc.StreamDesc{ClientStreams: true}, method)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	c := testpb.NewTestServiceClient(cc)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
		return err == nil
	}, "a unary call admitted beside the requests that never send their message")
	if hold.Err() != nil {
		t.Fatal("the held requests ended before the call was admitted")
	}
	for _, s := range held {
		if err := s.Context().Err(); err != nil {
			t.Fatalf("a held request ended before the call was admitted: %v", err)
		}
	}
	if got := shed.Snapshot().InFlight; got != 0 {
		t.Errorf("in flight = %d with no call in a handler, want 0: the held requests took slots", got)
	}
}
