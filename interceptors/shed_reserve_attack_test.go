package interceptors_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// garbageCodec sends a message no proto decoder accepts, under the proto
// codec's name: the server's grpc-go fails to decode it before any
// interceptor runs, and answers Internal.
type garbageCodec struct{}

func (garbageCodec) Marshal(any) ([]byte, error) { return []byte{0xff, 0xff, 0xff}, nil }
func (garbageCodec) Unmarshal([]byte, any) error { return nil }
func (garbageCodec) Name() string                { return "proto" }

// TestShedderEndedRequestsHoldNoReservation: a request the tap admitted
// whose stream ends before it reaches the unary interceptor (reset after
// its headers, or answered by grpc-go itself: a message that does not
// decode) is over, so it must stop counting against the tap's admission
// when it ends, not only when its reservation lapses. Otherwise each such
// request, which costs its client one HEADERS and one RST_STREAM frame,
// or one malformed request, shuts a slot's worth of the tap for
// reserveFor whatever the method's service time: at 8 ms, a client
// sending the limit's worth of them every 8 ms (12,500/s at the default
// limit of 100) refuses every honest caller, where plain grpc-go and the
// Shedder before reservations served them all. The test makes
// reservations last an hour, so that only their end can reopen the tap.
func TestShedderEndedRequestsHoldNoReservation(t *testing.T) {
	const limit = 4
	const method = "/grpc.testing.TestService/UnaryCall"
	for _, tc := range []struct {
		name string
		// end makes n requests the tap admits that end before the
		// interceptor; tapped says how many requests the tap saw.
		end func(t *testing.T, ctx context.Context, cc *grpc.ClientConn, n int, tapped func() int64)
	}{
		{"reset after headers", func(t *testing.T, ctx context.Context, cc *grpc.ClientConn, n int, tapped func() int64) {
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			for range n {
				if _, err := cc.NewStream(sctx, &grpc.StreamDesc{ClientStreams: true}, method); err != nil {
					t.Fatal(err)
				}
			}
			// Reset them only once the tap admitted them all: a stream
			// cancelled before its headers left would never reach it.
			testutil.Eventually(t, 10*time.Second, func() bool { return tapped() == int64(n) }, "the headers at the tap")
			cancel()
		}},
		{"message that does not decode", func(t *testing.T, ctx context.Context, cc *grpc.ClientConn, n int, _ func() int64) {
			for range n {
				err := cc.Invoke(ctx, method, &testpb.SimpleRequest{}, &testpb.SimpleResponse{}, grpc.ForceCodec(garbageCodec{}))
				if status.Code(err) != codes.Internal {
					t.Fatalf("malformed request = %v, want Internal from grpc-go's decoding", err)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = limit, 0 })
			interceptors.SetShedderServiceTime(shed, method, time.Millisecond, 10)
			interceptors.SetShedderReserveFor(shed, time.Hour)
			var tapped atomic.Int64
			be := startGated(t,
				grpc.InTapHandle(func(ctx context.Context, info *tap.Info) (context.Context, error) {
					tapped.Add(1)
					return shed.TapHandle(ctx, info)
				}),
				grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor()),
				grpc.ChainStreamInterceptor(shed.StreamServerInterceptor()))
			close(be.gate) // the admitted calls answer at once
			cc := dialConn(t, be.Addr)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tc.end(t, ctx, cc, limit, tapped.Load)
			c := testpb.NewTestServiceClient(cc)
			var refused int
			testutil.Eventually(t, 10*time.Second, func() bool {
				_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
				if err != nil {
					refused++
				}
				return err == nil
			}, "an honest call admitted once the ended requests' streams closed")
			t.Logf("honest calls refused before one was admitted: %d", refused)
			if got := shed.Snapshot().InFlight; got != 0 {
				t.Errorf("in flight = %d with no call in a handler, want 0", got)
			}
		})
	}
}

// TestShedderSnapshotShowsReservations: the tap sheds at the limit while
// InFlight is below it when requests it admitted are on their way, and an
// operator reading the snapshot must see why: Reserved counts them, and
// comes back to 0 when their streams end.
func TestShedderSnapshotShowsReservations(t *testing.T) {
	const limit = 4
	const method = "/grpc.testing.TestService/UnaryCall"
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = limit, 0 })
	interceptors.SetShedderServiceTime(shed, method, time.Millisecond, 10)
	interceptors.SetShedderReserveFor(shed, time.Hour)
	be := startGated(t, shed.ServerOptions()...)
	close(be.gate)
	cc := dialConn(t, be.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hold, release := context.WithCancel(ctx)
	defer release()
	for range limit {
		if _, err := cc.NewStream(hold, &grpc.StreamDesc{ClientStreams: true}, method); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return shed.Snapshot().Reserved == limit }, "the held requests reserved")
	_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call beside %d reservations = %v, want shed", limit, err)
	}
	if snap := shed.Snapshot(); snap.InFlight != 0 || snap.Reserved != limit {
		t.Errorf("snapshot at the shed: in flight %d, reserved %d; want 0 and %d", snap.InFlight, snap.Reserved, limit)
	}
	release()
	testutil.Eventually(t, 10*time.Second, func() bool { return shed.Snapshot().Reserved == 0 }, "the reservations ended with their streams")
}

// TestShedderStopDuringABurstEndsEveryReservation: a server stopped while
// a burst is on its way and requests hold their streams without a message
// ends every reservation and pass with the streams (Stop cancels them),
// starts no goroutine that outlives it (TestMain's leak check), and a
// Shedder serving a new server after it admits at once.
func TestShedderStopDuringABurstEndsEveryReservation(t *testing.T) {
	const limit, burst, held = 4, 64, 8
	const method = "/grpc.testing.TestService/UnaryCall"
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit = limit })
	interceptors.SetShedderServiceTime(shed, method, time.Millisecond, 10)
	interceptors.SetShedderReserveFor(shed, time.Hour) // only the streams' end may end them
	be := startGated(t, shed.ServerOptions()...)
	cc := dialConn(t, be.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range held {
		if _, err := cc.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, method); err != nil {
			t.Fatal(err)
		}
	}
	c := testpb.NewTestServiceClient(cc)
	done := make(chan struct{}, burst)
	for range burst {
		go func() {
			defer func() { done <- struct{}{} }()
			_, _ = c.UnaryCall(ctx, &testpb.SimpleRequest{})
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return shed.Snapshot().Reserved > 0 }, "reservations on their way")
	be.Server.Stop()
	for range burst {
		select {
		case <-done:
		case <-ctx.Done():
			t.Fatal("calls still running after Stop")
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		w, r := interceptors.ShedderPasses(shed)
		return shed.Snapshot().Reserved == 0 && w == 0 && r == 0
	}, "reservations and passes ended with the stopped server's streams")
	if snap := shed.Snapshot(); snap.InFlight != 0 {
		t.Errorf("in flight after Stop = %d, want 0", snap.InFlight)
	}
	be2 := startGated(t, shed.ServerOptions()...)
	close(be2.gate)
	if _, err := dial(t, be2.Addr).UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("first call on a new server after Stop = %v, want admitted", err)
	}
}
