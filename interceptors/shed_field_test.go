package interceptors_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// Tests of situations the field meets and no earlier test named. Where a
// plain grpc-go server would serve the calls, they run against one beside
// the Shedder: when the server is not overloaded, the Shedder must not
// fail a call the plain server serves.

// cacheLike answers at once, or after slow when the request asks for a
// miss (ResponseSize 1): a method whose service time has two modes, as one
// behind a cache has.
func cacheLike(slow time.Duration) func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	miss := working(func() time.Duration { return slow })
	return func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if req.GetResponseSize() == 1 {
			return miss(ctx, req)
		}
		return &testpb.SimpleResponse{}, nil
	}
}

// TestShedderDeadlineShedOnlyForHopelessDeadlines: one method, mostly
// cache hits (no work) and a few misses (500 ms), called one at a time.
// Callers with a 100 ms deadline get hits, and the plain server serves
// every one of them. The deadline shed compared their deadline with the
// method's mean service time, which three misses had raised to about
// 165 ms, and shed all of them on a server that had nothing else to do:
// a deadline shorter than the mean is not one that would time out
// anyway. The default config, on both paths.
func TestShedderDeadlineShedOnlyForHopelessDeadlines(t *testing.T) {
	sides := []struct {
		name string
		opts func() []grpc.ServerOption
	}{{"plain grpc-go", func() []grpc.ServerOption { return nil }}}
	for _, path := range shedPaths {
		sides = append(sides, struct {
			name string
			opts func() []grpc.ServerOption
		}{"shedder " + path.name, func() []grpc.ServerOption { return path.opts(makeShedder(t, &events{}, nil)) }})
	}
	for _, side := range sides {
		t.Run(side.name, func(t *testing.T) {
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: side.opts(), Unary: cacheLike(500 * time.Millisecond)})
			c := dial(t, be.Addr)
			for range 10 { // hits: the service time is measured (MinSamples)
				if err := unary(context.Background(), c); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			for range 3 { // misses, with time to wait for them
				wg.Go(func() {
					if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{ResponseSize: 1}); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			got := map[codes.Code]int{}
			for range 10 {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				err := unary(ctx, c)
				cancel()
				got[status.Code(err)]++
			}
			if got[codes.OK] != 10 {
				t.Errorf("10 hits with a 100ms deadline on an idle server: %v, want all OK as on a plain grpc-go server", got)
			}
		})
	}
}

// TestShedderDrainsWaitersAndServesAgain: a server stopping while a call
// holds the only slot and another waits for it (MaxWait), and the same
// Shedder on a second server afterwards. GracefulStop lets both finish
// (the freed slot goes to the waiter, as on a running server: nothing is
// lost in a drain); Stop ends both; either way nothing stays in flight,
// queued or passed by the tap, and the Shedder serves on the next server
// as if new.
func TestShedderDrainsWaitersAndServesAgain(t *testing.T) {
	for _, graceful := range []bool{true, false} {
		name := map[bool]string{true: "GracefulStop", false: "Stop"}[graceful]
		t.Run(name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 10*time.Second })
			interceptors.SetShedderServiceTime(shed, unaryMethod, 10*time.Second, 100)
			be := startGated(t, shed.ServerOptions()...)
			c := dial(t, be.Addr)
			first, second := make(chan error, 1), make(chan error, 1)
			go func() { first <- unary(context.Background(), c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the first call holds the slot")
			go func() { second <- unary(context.Background(), c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Queued == 1 }, "the second call waits")
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				if graceful {
					be.Server.GracefulStop()
				} else {
					be.Server.Stop()
				}
			}()
			if graceful {
				close(be.gate) // the first call ends; its slot goes to the waiter, which then runs
				for name, ch := range map[string]chan error{"holding call": first, "waiting call": second} {
					if err := <-ch; err != nil {
						t.Errorf("%s during GracefulStop = %v, want OK", name, err)
					}
				}
			} else {
				for name, ch := range map[string]chan error{"holding call": first, "waiting call": second} {
					if err := <-ch; status.Code(err) == codes.OK {
						t.Errorf("%s during Stop = OK, want it ended", name)
					}
				}
				close(be.gate)
			}
			<-stopped
			wantNoPasses(t, shed, name)
			// GracefulStop returns after the handlers; Stop does not wait
			// for them (grpc.WaitForHandlers is off), so the holding call's
			// handler and the waiter's cancellation may still be on their
			// way out when it returns.
			if snap := shed.Snapshot(); graceful && (snap.InFlight != 0 || snap.Queued != 0) {
				t.Fatalf("after %s: %+v, want nothing in flight or queued", name, snap)
			}
			testutil.Eventually(t, 5*time.Second, func() bool {
				snap := shed.Snapshot()
				return snap.InFlight == 0 && snap.Queued == 0
			}, name+": nothing stays in flight or queued")
			next := startGated(t, shed.ServerOptions()...)
			close(next.gate)
			nc := dial(t, next.Addr)
			for range 3 {
				if err := unary(context.Background(), nc); err != nil {
					t.Fatalf("the same Shedder on the next server = %v", err)
				}
			}
		})
	}
}

// TestShedderDeadlineShedRecoversFromA100xSpeedUp: a method measured at
// 200 ms gets 100× faster (a cache warmed, a dependency back), and its
// callers send 20 ms deadlines, which the plain server now serves every
// time. Only admitted calls measure the method, so the shed estimate came
// down only by 1/64 a shed: about 150 of those callers were refused, one
// after the other, before one got through. Sheds in a row with no call
// measured in between say the estimate is stale, and it now comes down
// faster the longer the row.
func TestShedderDeadlineShedRecoversFromA100xSpeedUp(t *testing.T) {
	shed := makeShedder(t, &events{}, nil)
	interceptors.SetShedderServiceTime(shed, unaryMethod, 200*time.Millisecond, 100)
	be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: shed.ServerOptions(),
		Unary: working(func() time.Duration { return 2 * time.Millisecond })})
	c := dial(t, be.Addr)
	const most = 60
	for i := 1; i <= most; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := unary(ctx, c)
		cancel()
		if status.Code(err) != codes.ResourceExhausted { // admitted (late, on a loaded machine, is admitted too)
			t.Logf("admitted after %d calls shed: %v", i-1, err)
			for range 20 { // and it stays served
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				err := unary(ctx, c)
				cancel()
				if status.Code(err) == codes.ResourceExhausted {
					t.Fatalf("shed again after it recovered: %v", err)
				}
			}
			return
		}
		if status.Convert(err).Message() != interceptors.MessageShedDeadline {
			t.Fatalf("call %d = %v, want served or shed for its deadline", i, err)
		}
	}
	t.Fatalf("%d calls with a 20 ms deadline to a method now 2 ms were all shed on its 200 ms estimate", most)
}

// TestShedderAIMDQuotaAnswersAreNotOverload: RESOURCE_EXHAUSTED is also
// gRPC's code for a caller over its quota (a per-user rate limit answered
// at once). An AIMD Shedder took every such answer from the handler for a
// sign of overload and cut its limit by BackoffRatio each time: 30 of them
// took a limit of 10 to 1, and the server then shed 7 of 8 calls that the
// plain server ran at once. Only a handler's answer that is itself a
// shed (a Shedder or Limiter further in, its ErrorInfo or its error, or
// a tap's lean answer: the code and the stable message alone) says the
// server is overloaded, and still cuts the limit.
func TestShedderAIMDQuotaAnswersAreNotOverload(t *testing.T) {
	quota := status.Error(codes.ResourceExhausted, "quota exceeded for this user")
	downstream, _ := status.New(codes.ResourceExhausted, interceptors.MessageShedLimit).WithDetails(
		&errdetails.ErrorInfo{Domain: interceptors.ErrorInfoDomain, Reason: interceptors.ErrorInfoReasonLimit})
	for _, tc := range []struct {
		side     string
		answer   error // of the 30 calls before the 8
		wantShed bool
	}{
		{"plain grpc-go", quota, false},
		{"shedder aimd", quota, false},
		{"shedder aimd, a shed further in", downstream.Err(), true},
		// A tap beyond its details budget answers with the code and the
		// stable message alone (tapDetailsPerSecond): still a shed.
		{"shedder aimd, a lean tap shed further in", status.Error(codes.ResourceExhausted, interceptors.MessageShedLimit), true},
		{"shedder aimd, a lean stream-limit shed further in", status.Error(codes.ResourceExhausted, interceptors.MessageShedStreamLimit), true},
	} {
		side := tc.side
		t.Run(side, func(t *testing.T) {
			var opts []grpc.ServerOption
			var shed *interceptors.Shedder
			if side != "plain grpc-go" {
				shed = makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) {
					c.Algorithm, c.Limit, c.MinLimit, c.MaxLimit = interceptors.AIMD, 10, 1, 10
				})
				opts = shed.ServerOptions()
			}
			gate := make(chan struct{})
			var running atomic.Int64
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: opts,
				Unary: func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
					if req.GetResponseSize() == 2 {
						return nil, tc.answer
					}
					running.Add(1)
					defer running.Add(-1)
					select {
					case <-gate:
						return &testpb.SimpleResponse{}, nil
					case <-ctx.Done():
						return nil, status.FromContextError(ctx.Err()).Err()
					}
				}})
			c := dial(t, be.Addr)
			for range 30 {
				if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{ResponseSize: 2}); status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("over-quota call = %v", err)
				}
			}
			results := make(chan error, 8)
			for range 8 {
				go func() { results <- unary(context.Background(), c) }()
			}
			shedCalls := 0
			testutil.Eventually(t, 5*time.Second, func() bool {
				for {
					select {
					case err := <-results:
						if status.Code(err) != codes.ResourceExhausted {
							t.Fatalf("call = %v before the gate opened", err)
						}
						shedCalls++
					default:
						return running.Load()+int64(shedCalls) == 8
					}
				}
			}, "every call running or shed")
			close(gate)
			for range 8 - shedCalls {
				if err := <-results; err != nil {
					t.Fatal(err)
				}
			}
			if tc.wantShed != (shedCalls > 0) {
				l := 0
				if shed != nil {
					l, _ = shed.InFlight()
				}
				t.Fatalf("%d of 8 calls shed after 30 answers %v (limit now %d); want shed: %v (the plain server ran all 8)", shedCalls, tc.answer, l, tc.wantShed)
			}
		})
	}
}

// TestShedderWaitFollowsTheCallsHoldingTheSlots: a wait for a slot lasts
// at most the time in which one of the limit's slots frees on average,
// and that depends on the calls that hold them, not on the waiting
// request's method. A fast method's request (measured at 1 µs) that found
// the only slot held by a slow method's call (10 s) waited 1 µs and was
// shed, though the slot was about to free; a slow method's request behind
// fast calls waited far longer than one would take to end.
func TestShedderWaitFollowsTheCallsHoldingTheSlots(t *testing.T) {
	const emptyMethod = "/grpc.testing.TestService/EmptyCall"
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 10*time.Second })
	interceptors.SetShedderServiceTime(shed, unaryMethod, 10*time.Second, 100)
	interceptors.SetShedderServiceTime(shed, emptyMethod, time.Microsecond, 100)
	interceptors.SetShedderServedTime(shed, 10*time.Second) // the calls served so far: the slow ones
	be := startGated(t, shed.ServerOptions()...)
	c := dial(t, be.Addr)
	held := make(chan error, 1)
	go func() { held <- unary(context.Background(), c) }()
	testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "a slow call holds the only slot")
	waited := make(chan error, 1)
	go func() { _, err := c.EmptyCall(context.Background(), &testpb.Empty{}); waited <- err }()
	testutil.Eventually(t, 5*time.Second, func() bool {
		select {
		case err := <-waited:
			t.Fatalf("the fast request ended before the slot freed: %v", err)
		default:
		}
		return shed.Snapshot().Queued == 1
	}, "the fast request waits for the slot")
	be.gate <- struct{}{}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("the fast request, given the freed slot = %v, want OK", err)
	}
}
