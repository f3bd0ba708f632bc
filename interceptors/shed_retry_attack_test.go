package interceptors_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

var retryHeader = [2]string{"grpc-previous-rpc-attempts", "1"}

// holdSlots starts limit calls that hold every slot of be until the test
// ends, and returns once they do.
func holdSlots(t *testing.T, be *gated, limit int) {
	t.Helper()
	holdSlotsCtx(t, be, limit, context.Background())
}

func holdSlotsCtx(t *testing.T, be *gated, limit int, ctx context.Context) {
	t.Helper()
	c := dial(t, be.Addr)
	held := make(chan error, limit)
	for range limit {
		go func() { held <- unary(ctx, c) }()
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == int64(limit) }, "the slots are held")
	t.Cleanup(func() {
		close(be.gate)
		for range limit {
			<-held
		}
	})
}

func wantNoPasses(t *testing.T, shed *interceptors.Shedder, when string) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() bool {
		w, r := interceptors.ShedderPasses(shed)
		return w == 0 && r == 0
	}, when+": the tap's pass counts return to 0")
}

// TestShedderRetryPassReleasedOnStop: retry attempts the tap passed whose
// message never comes hold their count only as long as their stream: a
// hard Stop ends them, and the counts return to 0.
func TestShedderRetryPassReleasedOnStop(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 2, 0 })
	be := startGated(t, shed.ServerOptions()...)
	holdSlots(t, be, 2)
	raw := dialRawH2(t, be.Addr)
	raw.start(unaryMethod, "", false, retryHeader)
	raw.start(unaryMethod, "", false, retryHeader)
	raw.sync()
	if _, r := interceptors.ShedderPasses(shed); r != 2 {
		t.Fatalf("retry attempts passed = %d, want 2", r)
	}
	be.Server.Stop()
	wantNoPasses(t, shed, "after Stop")
}

// TestShedderRetryPassResetRacesArrival: a retry attempt reset as its
// message arrives is released once, whichever of the reset and the
// interceptor comes first, and shed at most once.
func TestShedderRetryPassResetRacesArrival(t *testing.T) {
	ev := &events{}
	shed := makeShedder(t, ev, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 })
	be := startGated(t, shed.ServerOptions()...)
	holdSlots(t, be, 1)
	raw := dialRawH2(t, be.Addr)
	const n = 200
	for range n {
		id := raw.start(unaryMethod, "", false, retryHeader)
		raw.message(id)
		raw.reset(id)
	}
	raw.sync()
	wantNoPasses(t, shed, "after the resets")
	if got := shed.Snapshot().Shed[interceptors.ReasonLimit]; got > n || int(got) != ev.shedCount(interceptors.ReasonLimit) {
		t.Fatalf("%d sheds counted (%d observed) for %d requests, want at most %d, each counted once", got, ev.shedCount(interceptors.ReasonLimit), n, n)
	}
}

// TestShedderRetryPassNotForStreams: a stream carrying
// grpc-previous-rpc-attempts at the stream limit is shed by the tap, and
// never passed as a retry attempt.
func TestShedderRetryPassNotForStreams(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.StreamLimit = 1 })
	be := startGated(t, shed.ServerOptions()...)
	defer close(be.gate)
	c := dial(t, be.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Streams == 1 }, "the stream is open")
	_ = s
	raw := dialRawH2(t, be.Addr)
	id := raw.start("/grpc.testing.TestService/FullDuplexCall", "", false, retryHeader)
	if code, msg := raw.status(id); code != int(codes.ResourceExhausted) || msg != interceptors.MessageShedStreamLimit {
		t.Fatalf("stream at the stream limit with the retry header = %d %q, want ResourceExhausted %q", code, msg, interceptors.MessageShedStreamLimit)
	}
	if _, r := interceptors.ShedderPasses(shed); r != 0 {
		t.Fatalf("streams passed as retry attempts = %d, want 0", r)
	}
}

// TestShedderRetryPassWithComposedTap: a server with another InTapHandle
// calls TapHandle from it, last (ServerOptions). Called first, a pass
// TapHandle gave a request the other tap then refuses would stay counted
// forever: grpc-go neither starts that stream nor cancels its context, so
// neither release ever runs, and limit such requests (one, for the wait
// pass) would turn the pass off for good. Last, nothing is left counted.
func TestShedderRetryPassWithComposedTap(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 })
	mine := func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if len(info.Header["authorization"]) == 0 {
			return ctx, status.Error(codes.Unauthenticated, "no credentials")
		}
		return shed.TapHandle(ctx, info)
	}
	be := startGated(t, grpc.InTapHandle(mine), grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(shed.StreamServerInterceptor()))
	holdSlotsCtx(t, be, 1, metadata.AppendToOutgoingContext(context.Background(), "authorization", "yes"))
	raw := dialRawH2(t, be.Addr)
	for range 3 {
		id := raw.start(unaryMethod, "", false, retryHeader)
		if code, _ := raw.status(id); code != int(codes.Unauthenticated) {
			t.Fatalf("unauthenticated retry attempt = %d, want Unauthenticated", code)
		}
	}
	wantNoPasses(t, shed, "after the composed tap refused")
	// An authenticated retry attempt still passes to the interceptor.
	id := raw.start(unaryMethod, "", false, retryHeader, [2]string{"authorization", "yes"})
	raw.sync()
	if _, r := interceptors.ShedderPasses(shed); r != 1 {
		t.Fatalf("authenticated retry attempts passed = %d, want 1", r)
	}
	raw.reset(id)
	wantNoPasses(t, shed, "after the reset")
}

// TestShedderRetryPassOnlyWithPushback: with Pushback 0 there is no
// trailer to send, so the tap sheds retry attempts at the limit itself;
// with it, whatever the header's value (grpc-go sends a count, a hostile
// client anything), at most the limit's worth pass.
func TestShedderRetryPassOnlyWithPushback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pushback time.Duration
		values   []string
		want     int64
	}{
		{"no pushback", 0, []string{"1"}, 0},
		{"garbage values", 20 * time.Millisecond, []string{"abc", "-1", "0", "99999999999999999999999"}, 2},
		{"repeated", 20 * time.Millisecond, []string{"1", "1"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait, c.Pushback = 2, 0, tc.pushback })
			be := startGated(t, shed.ServerOptions()...)
			holdSlots(t, be, 2)
			raw := dialRawH2(t, be.Addr)
			for range 4 {
				var extra [][2]string
				for _, v := range tc.values {
					extra = append(extra, [2]string{"grpc-previous-rpc-attempts", v})
				}
				raw.start(unaryMethod, "", false, extra...)
			}
			raw.sync()
			if _, r := interceptors.ShedderPasses(shed); r != tc.want {
				t.Fatalf("retry attempts passed = %d, want %d", r, tc.want)
			}
			if got := shed.Snapshot().Shed[interceptors.ReasonLimit]; got != 4-tc.want {
				t.Fatalf("the tap shed %d of 4, want %d", got, 4-tc.want)
			}
		})
	}
}
