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

const unaryMethod = "/grpc.testing.TestService/UnaryCall"

// TestShedderWaitsForAFreedSlot: a critical request that finds the limit
// in use on a measured method waits, and the slot freed by the call
// ahead of it goes straight to it: it is served, not shed (MaxWait).
// One request waits at a time; one more is shed at once.
func TestShedderWaitsForAFreedSlot(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 10*time.Second })
			interceptors.SetShedderServiceTime(shed, unaryMethod, 10*time.Second, 100)
			be := startGated(t, path.opts(shed)...)
			c := dial(t, be.Addr)
			ctx := context.Background()
			first, second := make(chan error, 1), make(chan error, 1)
			go func() { first <- unary(ctx, c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the first call holds the slot")
			go func() { second <- unary(ctx, c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Queued == 1 }, "the second call waits")
			// One request waits at a time: a third is shed at once.
			if err := unary(ctx, c); status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
				t.Fatalf("third call with one waiting = %v, want ResourceExhausted %q", err, interceptors.MessageShedLimit)
			}
			be.gate <- struct{}{} // the first call ends: its slot goes to the second
			if err := <-first; err != nil {
				t.Fatalf("first call = %v", err)
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the second call runs")
			be.gate <- struct{}{}
			if err := <-second; err != nil {
				t.Fatalf("second call, which waited for the slot = %v, want OK", err)
			}
			snap := shed.Snapshot()
			if snap.Shed[interceptors.ReasonLimit] != 1 || snap.InFlight != 0 || snap.Queued != 0 {
				t.Fatalf("snapshot = %+v, want 1 shed at the limit, nothing in flight or queued", snap)
			}
			if got := be.Calls.Load(); got != 2 {
				t.Fatalf("handlers ran %d times, want 2", got)
			}
		})
	}
}

// TestShedderWaitIsBounded: a waiting request is shed (ResourceExhausted,
// at the limit) once it waited its method's service time, or once less
// than the service time would be left of its deadline: never
// DeadlineExceeded after waiting past it. Sheddable requests and methods
// whose service time is not measured yet do not wait at all, and a
// caller that gives up while waiting gets its own error, holding nothing.
func TestShedderWaitIsBounded(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 10*time.Second })
			be := startGated(t, path.opts(shed)...)
			defer close(be.gate)
			c := dial(t, be.Addr)
			ctx := context.Background()
			first := make(chan error, 1)
			go func() { first <- unary(ctx, c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the first call holds the slot")

			wantShed := func(name string, ctx context.Context, atLeast time.Duration) {
				t.Helper()
				t0 := time.Now()
				err := unary(ctx, c)
				took := time.Since(t0)
				if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
					t.Fatalf("%s = %v, want ResourceExhausted %q", name, err, interceptors.MessageShedLimit)
				}
				if took < atLeast || took > 5*time.Second {
					t.Fatalf("%s was shed after %v, want after %v (and within 5s)", name, took, atLeast)
				}
			}
			// Not measured yet (0 samples): shed at once.
			wantShed("request before the service time is measured", ctx, 0)
			interceptors.SetShedderServiceTime(shed, unaryMethod, 200*time.Millisecond, 100)
			wantShed("request with no deadline, service time 200ms", ctx, 200*time.Millisecond)
			dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			wantShed("request with a 300ms deadline, service time 200ms", dctx, 50*time.Millisecond)
			cancel()
			sctx := metadata.AppendToOutgoingContext(ctx, interceptors.CriticalityHeader, "sheddable")
			if err := unary(sctx, c); status.Convert(err).Message() != interceptors.MessageShedSheddable {
				t.Fatalf("sheddable request = %v, want shed at once (%q)", err, interceptors.MessageShedSheddable)
			}

			// Adaptive and AIMD limits keep their own headroom: nobody waits.
			for name, edit := range map[string]func(*interceptors.ShedderConfig){
				"adaptive": func(c *interceptors.ShedderConfig) { c.Adaptive, c.MinLimit = true, 1 },
				"aimd":     func(c *interceptors.ShedderConfig) { c.Algorithm = interceptors.AIMD; c.MinLimit = 1 },
			} {
				moving := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 10*time.Second; edit(c) })
				interceptors.SetShedderServiceTime(moving, unaryMethod, 10*time.Second, 100)
				mb := startGated(t, path.opts(moving)...)
				mc := dial(t, mb.Addr)
				held := make(chan error, 1)
				go func() { held <- unary(ctx, mc) }()
				testutil.Eventually(t, 5*time.Second, func() bool { return mb.inflight.Load() == 1 }, name+": a call holds the slot")
				t0 := time.Now()
				if err := unary(ctx, mc); status.Code(err) != codes.ResourceExhausted || time.Since(t0) > 5*time.Second {
					t.Fatalf("%s: request at the limit = %v after %v, want shed at once", name, err, time.Since(t0))
				}
				if q := moving.Snapshot().Queued; q != 0 {
					t.Fatalf("%s: %d queued, want 0", name, q)
				}
				close(mb.gate)
				if err := <-held; err != nil {
					t.Fatalf("%s: held call = %v", name, err)
				}
			}

			// A caller that gives up while it waits.
			interceptors.SetShedderServiceTime(shed, unaryMethod, 10*time.Second, 100)
			cctx, cancelWait := context.WithCancel(ctx)
			waited := make(chan error, 1)
			go func() { waited <- unary(cctx, c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Queued == 1 }, "a request waits")
			cancelWait()
			if err := <-waited; status.Code(err) != codes.Canceled {
				t.Fatalf("cancelled waiting request = %v, want Canceled", err)
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Queued == 0 }, "the cancelled request leaves the queue")
			be.gate <- struct{}{}
			if err := <-first; err != nil {
				t.Fatalf("first call = %v", err)
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().InFlight == 0 }, "no slot held")
		})
	}
}

// TestShedderTapShedsWhatCannotWaitUsefully: within one wait (at most
// service time / limit) one slot frees on average, so a second request
// waiting beside the first would only be shed later, after its wait, and
// on the tap path only after grpc-go made its stream, goroutine and
// message: at 4× overload every shed went that way (4 arrivals per wait
// window, fewer than the limit's worth of waiters), and the tap, whose
// cheap rejection is its reason to exist, shed none of them. While one
// request waits, the next critical request at the limit is shed at once:
// by the tap (no pushback trailer, which only the interceptor sets), and
// by the interceptors alone without waiting.
func TestShedderTapShedsWhatCannotWaitUsefully(t *testing.T) {
	const limit = 4
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			ev := &events{}
			// Service time 1h: a request that waits would wait 15 minutes
			// (1h / 4), far past the test's bounds.
			shed := makeShedder(t, ev, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = limit, time.Hour })
			interceptors.SetShedderServiceTime(shed, unaryMethod, time.Hour, 100)
			be := startGated(t, path.opts(shed)...)
			defer close(be.gate)
			c := dial(t, be.Addr)
			ctx := context.Background()
			held := make(chan error, limit+1)
			for range limit {
				go func() { held <- unary(ctx, c) }()
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == limit }, "the limit is in use")
			waitCtx, cancelWait := context.WithCancel(ctx)
			defer cancelWait()
			go func() { held <- unary(waitCtx, c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Queued == 1 }, "one request waits")
			for i := range limit {
				var trailer metadata.MD
				done := make(chan error, 1)
				go func() {
					_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
					done <- err
				}()
				select {
				case err := <-done:
					if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
						t.Fatalf("request %d while one waits = %v, want ResourceExhausted %q", i, err, interceptors.MessageShedLimit)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("request %d while one waits: no answer within 5s (it waits: %d queued)", i, shed.Snapshot().Queued)
				}
				if path.name == "tap" && len(trailer[interceptors.PushbackTrailer]) != 0 {
					t.Fatalf("request %d while one waits was shed by the interceptor (pushback trailer %v), not by the tap", i, trailer[interceptors.PushbackTrailer])
				}
			}
			if q := shed.Snapshot().Queued; q != 1 {
				t.Fatalf("%d queued, want the one request that waits", q)
			}
			if n := shed.Snapshot().Shed[interceptors.ReasonLimit]; n != limit || ev.shedCount(interceptors.ReasonLimit) != limit {
				t.Fatalf("shed at the limit: snapshot %d, observer %d; want %d each", n, ev.shedCount(interceptors.ReasonLimit), limit)
			}
			cancelWait()
			if err := <-held; status.Code(err) != codes.Canceled {
				t.Fatalf("the waiting request, cancelled = %v, want Canceled", err)
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Queued == 0 }, "nobody waits")
		})
	}
}
