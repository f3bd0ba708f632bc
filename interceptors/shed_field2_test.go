package interceptors_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Overload shapes examples/bench does not try, on real loopback TCP, each
// beside plain grpc-go (no Shedder) on the same handler and load: the
// Shedder must never serve callers worse than no shedding, and under a
// real overload much better.

// workServer is grpc.testing.TestService with simulated work: UnaryCall
// works for work(req) on one of a bounded set of work slots (a CPU with
// that many cores), honouring its caller's context; EmptyCall answers at
// once (a fast method beside it); StreamingOutputCall sends one message
// per ResponseParameters entry, each after the same work.
type workServer struct {
	testpb.UnimplementedTestServiceServer
	cpu     chan struct{} // work slots: one token per call working
	work    func(*testpb.SimpleRequest) time.Duration
	handled atomic.Int64 // UnaryCall handlers started
}

func (w *workServer) doWork(ctx context.Context, d time.Duration) error {
	select {
	case w.cpu <- struct{}{}:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	defer func() { <-w.cpu }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (w *workServer) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	w.handled.Add(1)
	if err := w.doWork(ctx, w.work(req)); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{}, nil
}

func (w *workServer) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (w *workServer) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, ss grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for range req.GetResponseParameters() {
		if err := w.doWork(ss.Context(), w.work(nil)); err != nil {
			return err
		}
		if err := ss.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
	return nil
}

// startWork serves w on loopback with opts and returns its address; the
// server stops (hard: the load is over) when the test ends.
func startWork(t testing.TB, w *workServer, opts ...grpc.ServerOption) string {
	addr, _ := startWorkServer(t, w, opts...)
	return addr
}

// startWorkServer is startWork returning the server too.
func startWorkServer(t testing.TB, w testpb.TestServiceServer, opts ...grpc.ServerOption) (string, *grpc.Server) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	testpb.RegisterTestServiceServer(srv, w)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return lis.Addr().String(), srv
}

// loadSide is one way to run a server: plain grpc-go, or with a Shedder.
type loadSide struct {
	name string
	edit func(*interceptors.ShedderConfig) // nil: plain grpc-go, no Shedder
	path int                               // shedPaths index
}

// tally counts what callers got: codes, and shed messages.
type tally struct {
	mu    sync.Mutex
	codes map[codes.Code]int
	msgs  map[string]int
}

func (t *tally) add(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.codes == nil {
		t.codes, t.msgs = map[codes.Code]int{}, map[string]int{}
	}
	c := status.Code(err)
	t.codes[c]++
	if c != codes.OK {
		t.msgs[c.String()+": "+status.Convert(err).Message()]++
	}
}

func (t *tally) ok() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.codes[codes.OK]
}

func (t *tally) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, v := range t.codes {
		n += v
	}
	return n
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var parts []string
	for c, n := range t.codes {
		parts = append(parts, fmt.Sprintf("%v=%d", c, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// closedLoop runs callers that call until run ends (or maxCalls each), each
// call with the deadline the caller's index gives (0: none), and a 1 ms
// backoff after a failure, as the bench's callers; call makes one call.
// It returns when every caller has stopped.
func closedLoop(run context.Context, callers, maxCalls int, deadline func(i int) time.Duration,
	call func(ctx context.Context, i int) error, got func(i int, err error)) {
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			for n := 0; n < maxCalls && run.Err() == nil; n++ {
				ctx, cancel := run, context.CancelFunc(func() {})
				if d := deadline(i); d > 0 {
					ctx, cancel = context.WithTimeout(run, d)
				}
				err := call(ctx, i)
				cancel()
				got(i, err)
				if err != nil {
					time.Sleep(time.Millisecond) // the bench's backoff, not synchronisation
				}
			}
		})
	}
	wg.Wait()
}

func newSideShedder(t testing.TB, side loadSide) (*interceptors.Shedder, []grpc.ServerOption) {
	if side.edit == nil {
		return nil, nil
	}
	shed := makeShedder(t, telemetry.Nop{}, func(c *interceptors.ShedderConfig) {
		c.LogInterval = 0
		side.edit(c)
	})
	return shed, shedPaths[side.path].opts(shed)
}

func shedString(s *interceptors.Shedder) string {
	if s == nil {
		return "-"
	}
	snap := s.Snapshot()
	var parts []string
	for r, n := range snap.Shed {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", r, n))
		}
	}
	sort.Strings(parts)
	return fmt.Sprintf("limit %d, shed {%s}", snap.Limit, strings.Join(parts, " "))
}

var _ = rand.ExpFloat64

func explore(t *testing.T) {
	if os.Getenv("GRPCREUSE_FIELD2") == "" {
		t.Skip("exploration: set GRPCREUSE_FIELD2=1")
	}
}

var field2Sides = []loadSide{
	{name: "plain grpc-go"},
	{name: "fixed 4 tap", edit: func(c *interceptors.ShedderConfig) { c.Limit = 4 }},
	{name: "adaptive tap", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }},
}

// Shape 1: capacity halves mid-run (4 work slots to 2), then recovers.
func TestField2ExploreCapacityDrop(t *testing.T) {
	explore(t)
	for _, side := range field2Sides {
		shed, opts := newSideShedder(t, side)
		w := &workServer{cpu: make(chan struct{}, 4), work: func(*testpb.SimpleRequest) time.Duration { return 2 * time.Millisecond }}
		c := dial(t, startWork(t, w, opts...))
		var phases [3]tally
		var limits [3]string
		for p := range 3 {
			if p == 1 { // two work slots taken: capacity halves
				w.cpu <- struct{}{}
				w.cpu <- struct{}{}
			}
			if p == 2 {
				<-w.cpu
				<-w.cpu
			}
			run, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			closedLoop(run, 16, 100000, func(int) time.Duration { return 10 * time.Millisecond },
				func(ctx context.Context, _ int) error { return unary(ctx, c) }, func(_ int, err error) { phases[p].add(err) })
			cancel()
			limits[p] = shedString(shed)
		}
		for p := range 3 {
			t.Logf("%-14s phase %d: ok %5d of %5d  %s  | %s", side.name, p, phases[p].ok(), phases[p].total(), phases[p].String(), limits[p])
		}
	}
}

// Shape 2: one method, two kinds of request: batches (ResponseSize 1,
// 50 ms, callers with 200 ms deadlines) and lookups (1 ms, a caller
// with a 10 ms deadline, every 10 ms). No overload: no work slot bound.
func TestField2ExploreTwoKindsOneMethod(t *testing.T) {
	explore(t)
	for _, side := range []loadSide{{name: "plain grpc-go"}, {name: "default tap", edit: func(*interceptors.ShedderConfig) {}},
		{name: "default interceptor", edit: func(*interceptors.ShedderConfig) {}, path: 1}} {
		shed, opts := newSideShedder(t, side)
		w := &workServer{cpu: make(chan struct{}, 1000), work: func(r *testpb.SimpleRequest) time.Duration {
			if r.GetResponseSize() == 1 {
				return 50 * time.Millisecond
			}
			return time.Millisecond
		}}
		c := dial(t, startWork(t, w, opts...))
		run, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer cancel()
		var batches, lookups tally
		var wg sync.WaitGroup
		wg.Go(func() {
			closedLoop(run, 4, 1000, func(int) time.Duration { return 200 * time.Millisecond }, func(ctx context.Context, _ int) error {
				_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 1})
				return err
			}, func(_ int, err error) { batches.add(err) })
		})
		time.Sleep(500 * time.Millisecond) // the batches start first
		tick := time.NewTicker(10 * time.Millisecond)
		for run.Err() == nil {
			<-tick.C
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			lookups.add(unary(ctx, c))
			cancel()
		}
		tick.Stop()
		wg.Wait()
		t.Logf("%-20s batches %s | lookups %s | %s", side.name, batches.String(), lookups.String(), shedString(shed))
	}
}

// TestShedderDeadlineShedServesAQuickKindBesideASlowOne: one method, two
// kinds of request, as a method taking a batch or one key has: batches
// work 100 ms (callers with a 2 s deadline), lookups answer at once
// (callers with a 50 ms deadline). No overload: the server has no bound.
// The batches came first, so the method's estimate (the time under which
// one in ten of its successful calls ended) was 100 ms, and every lookup
// was shed for its deadline: shed requests are never measured, so the
// lookups could not teach the estimate they are quick, and each batch
// that ended raised it again and restarted the decay that sheds in a row
// bring. With three lookups per batch, all 60 were shed, where plain
// grpc-go served all 60 (at one lookup every 10 ms beside 4 batch
// callers of 50 ms work: 100 of 100 shed). One in ten of the requests
// the deadline shed refuses now goes through, and one that succeeds in
// time proves the estimate too high for requests like it.
func TestShedderDeadlineShedServesAQuickKindBesideASlowOne(t *testing.T) {
	sides := []loadSide{{name: "plain grpc-go"},
		{name: "shedder tap", edit: func(*interceptors.ShedderConfig) {}},
		{name: "shedder interceptor", edit: func(*interceptors.ShedderConfig) {}, path: 1}}
	for _, side := range sides {
		t.Run(side.name, func(t *testing.T) {
			shed, opts := newSideShedder(t, side)
			w := &workServer{cpu: make(chan struct{}, 1000), work: func(r *testpb.SimpleRequest) time.Duration {
				if r.GetResponseSize() == 1 {
					return 100 * time.Millisecond
				}
				return 0
			}}
			c := dial(t, startWork(t, w, opts...))
			batch := func(ctx context.Context, _ int) error {
				_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 1})
				return err
			}
			var batches tally
			closedLoop(context.Background(), 4, 3, func(int) time.Duration { return 2 * time.Second }, batch,
				func(_ int, err error) { batches.add(err) })
			if batches.ok() != 12 {
				t.Fatalf("12 batches on an idle server: %s", batches.String())
			}
			// Batches go on beside the lookups: three lookups after each
			// batch that ends.
			ended := make(chan struct{}, 1)
			run, stop := context.WithTimeout(context.Background(), time.Minute)
			var wg sync.WaitGroup
			wg.Go(func() {
				closedLoop(run, 4, 1000, func(int) time.Duration { return 2 * time.Second }, batch,
					func(int, error) {
						select {
						case ended <- struct{}{}:
						default:
						}
					})
			})
			var lookups tally
			for range 20 {
				select {
				case <-ended:
				case <-time.After(10 * time.Second):
					t.Fatal("no batch ended within 10s")
				}
				for range 3 {
					ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
					lookups.add(unary(ctx, c))
					cancel()
				}
			}
			stop()
			wg.Wait()
			t.Logf("lookups: %s; %s", lookups.String(), shedString(shed))
			if lookups.ok() < 45 {
				t.Errorf("60 lookups (no work, 50 ms deadline) beside batches on an idle server: %s, want at least 45 OK (plain grpc-go serves all)",
					lookups.String())
			}
		})
	}
}

// Shape 4: callers with 5 ms deadlines, with none, and with 1 s, on 4
// work slots of 2 ms: goodput by group and per caller.
func TestField2ExploreDeadlineMix(t *testing.T) {
	explore(t)
	groups := []struct {
		name string
		n    int
		d    time.Duration
	}{{"5ms", 8, 5 * time.Millisecond}, {"none", 4, 0}, {"1s", 4, time.Second}}
	for _, side := range field2Sides {
		shed, opts := newSideShedder(t, side)
		w := &workServer{cpu: make(chan struct{}, 4), work: func(*testpb.SimpleRequest) time.Duration { return 2 * time.Millisecond }}
		c := dial(t, startWork(t, w, opts...))
		var callerOK [16]atomic.Int64
		var tallies [3]tally
		group := func(i int) int {
			for g, n := 0, 0; g < len(groups); g++ {
				if n += groups[g].n; i < n {
					return g
				}
			}
			return 0
		}
		run, cancel := context.WithTimeout(context.Background(), time.Second)
		closedLoop(run, 16, 100000, func(i int) time.Duration { return groups[group(i)].d },
			func(ctx context.Context, _ int) error { return unary(ctx, c) },
			func(i int, err error) {
				tallies[group(i)].add(err)
				if err == nil {
					callerOK[i].Add(1)
				}
			})
		cancel()
		var per []int64
		for i := range callerOK {
			per = append(per, callerOK[i].Load())
		}
		for g := range groups {
			t.Logf("%-14s %-4s: %s", side.name, groups[g].name, tallies[g].String())
		}
		t.Logf("%-14s per caller OK %v | %s", side.name, per, shedString(shed))
	}
}

// msSpin returns a busy loop and the iterations of it that take about
// 1 ms of CPU on this machine (the fastest of 5 timings of 2^20).
func msSpin() (spin func(n int) uint64, iters int) {
	spin = func(n int) uint64 {
		x := uint64(1)
		for i := range n {
			x = x*6364136223846793005 + uint64(i)
		}
		return x
	}
	per := time.Hour
	for range 5 {
		start := time.Now()
		spin(1 << 20)
		per = min(per, time.Since(start))
	}
	return spin, int(float64(1<<20) * float64(time.Millisecond) / float64(per))
}

// Shape 3: a CPU-bound handler (a busy loop of about 1 ms, no work
// slots): overload is GOMAXPROCS saturated. 5 ms deadlines, 16 callers.
func TestField2ExploreCPUBound(t *testing.T) {
	explore(t)
	spin, iters := msSpin()
	start := time.Now()
	spin(iters)
	t.Logf("spin of %d iterations: %v alone", iters, time.Since(start))
	var sink atomic.Uint64
	for _, side := range append(field2Sides, loadSide{name: "fixed 2 tap", edit: func(c *interceptors.ShedderConfig) { c.Limit = 2 }}) {
		shed, opts := newSideShedder(t, side)
		w := &cpuServer{spin: func() { sink.Add(spin(iters)) }}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(opts...)
		testpb.RegisterTestServiceServer(srv, w)
		go srv.Serve(lis)
		c := dial(t, lis.Addr().String())
		var tl tally
		run, cancel := context.WithTimeout(context.Background(), time.Second)
		closedLoop(run, 16, 100000, func(int) time.Duration { return 5 * time.Millisecond },
			func(ctx context.Context, _ int) error { return unary(ctx, c) }, func(_ int, err error) { tl.add(err) })
		cancel()
		srv.Stop()
		t.Logf("%-14s %s | %s", side.name, tl.String(), shedString(shed))
	}
}

type cpuServer struct {
	testpb.UnimplementedTestServiceServer
	spin func()
}

func (s *cpuServer) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.spin()
	return &testpb.SimpleResponse{}, nil
}

// TestShedderStopsUnderOverload: a server stopped (GracefulStop, or Stop)
// in the middle of a 4× overload, with requests waiting for a slot and
// callers that give up while they wait (cancelled 0–3 ms into the call).
// Every call ends (its caller gets OK, a shed, Unavailable, or its own
// Canceled or DeadlineExceeded), the stop returns without waiting out any
// MaxWait, and nothing stays in flight, queued or passed by the tap
// afterwards; TestMain's leak check sees no goroutine left.
func TestShedderStopsUnderOverload(t *testing.T) {
	sides := []loadSide{
		{name: "fixed tap", edit: func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 4, time.Second }},
		{name: "fixed interceptor", edit: func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 4, time.Second }, path: 1},
		{name: "adaptive tap", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }},
	}
	for _, side := range sides {
		for _, graceful := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/graceful=%v", side.name, graceful), func(t *testing.T) {
				shed, opts := newSideShedder(t, side)
				w := &workServer{cpu: make(chan struct{}, 4), work: func(*testpb.SimpleRequest) time.Duration { return 2 * time.Millisecond }}
				addr, srv := startWorkServer(t, w, opts...)
				c := dial(t, addr)
				run, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				var got tally
				loaded := make(chan struct{})
				var once sync.Once
				var wg sync.WaitGroup
				wg.Go(func() {
					closedLoop(run, 16, 20000, func(i int) time.Duration { return 50 * time.Millisecond },
						func(ctx context.Context, i int) error {
							if i%4 == 0 { // a caller that gives up early
								ctx, stop := context.WithCancel(ctx)
								defer stop()
								t := time.AfterFunc(time.Duration(rand.IntN(3000))*time.Microsecond, stop)
								defer t.Stop()
								return unary(ctx, c)
							}
							return unary(ctx, c)
						},
						func(_ int, err error) {
							got.add(err)
							if got.ok() >= 300 {
								once.Do(func() { close(loaded) })
							}
						})
				})
				select {
				case <-loaded:
				case <-time.After(15 * time.Second):
					t.Fatalf("no 300 OK calls within 15s: %s", got.String())
				}
				stopped := make(chan struct{})
				go func() {
					defer close(stopped)
					if graceful {
						srv.GracefulStop()
					} else {
						srv.Stop()
					}
				}()
				select {
				case <-stopped:
				case <-time.After(10 * time.Second):
					t.Fatalf("the server's stop hung for 10s under overload: %+v", shed.Snapshot())
				}
				cancel()
				wg.Wait()
				for code := range got.codes {
					switch code {
					case codes.OK, codes.ResourceExhausted, codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
					default:
						t.Errorf("calls ended %v: %s", code, got.String())
					}
				}
				wantNoPasses(t, shed, "after the stop")
				if snap := shed.Snapshot(); snap.InFlight != 0 || snap.Queued != 0 {
					t.Fatalf("after the stop: %+v, want nothing in flight or queued", snap)
				}
				t.Logf("%s | %s", got.String(), shedString(shed))
			})
		}
	}
}

// Shape 5: grpc-go retry policy clients under overload: attempts per
// logical call, by path, at 4× and 10×, with an eager policy (1 ms
// initial backoff) and 20 ms deadlines.
func TestField2ExploreRetryAmplification(t *testing.T) {
	explore(t)
	const sc = `{"methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],"retryPolicy":{
		"maxAttempts":5,"initialBackoff":"0.001s","maxBackoff":"0.05s","backoffMultiplier":2,
		"retryableStatusCodes":["RESOURCE_EXHAUSTED"]}}]}`
	sides := []loadSide{{name: "plain grpc-go"},
		{name: "fixed 4 tap", edit: func(c *interceptors.ShedderConfig) { c.Limit = 4 }},
		{name: "fixed 4 interceptor", edit: func(c *interceptors.ShedderConfig) { c.Limit = 4 }, path: 1},
		{name: "fixed 4 tap no pushback", edit: func(c *interceptors.ShedderConfig) { c.Limit, c.Pushback = 4, 0 }},
		{name: "adaptive tap", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }},
	}
	for _, callers := range []int{16, 40} {
		for _, side := range sides {
			shed, opts := newSideShedder(t, side)
			w := &workServer{cpu: make(chan struct{}, 4), work: func(*testpb.SimpleRequest) time.Duration { return 2 * time.Millisecond }}
			c := dial(t, startWork(t, w, opts...), grpc.WithDefaultServiceConfig(sc))
			var got tally
			run, cancel := context.WithTimeout(context.Background(), time.Second)
			closedLoop(run, callers, 100000, func(int) time.Duration { return 20 * time.Millisecond },
				func(ctx context.Context, _ int) error { return unary(ctx, c) }, func(_ int, err error) { got.add(err) })
			cancel()
			attempts := w.handled.Load()
			if shed != nil {
				attempts += shedTotal(shed)
			}
			t.Logf("%d callers %-24s attempts/call %.2f  %s | %s", callers, side.name, float64(attempts)/float64(got.total()), got.String(), shedString(shed))
		}
	}
}

// TestShedderPushbackNeverOutlastsTheDeadline: a grpc-go client with a
// retry policy on RESOURCE_EXHAUSTED, a call with a 200 ms deadline, and
// a server at its limit whose sheds push back 1 s. grpc-go waits out the
// pushback even past the call's deadline (stream.go: "we could eagerly
// fail here if dur puts us past the deadline"), so the caller got
// DeadlineExceeded after its whole deadline instead of the shed's
// ResourceExhausted at once: a shed that answers the excess at once held
// the caller as long as a queue would have, and took its status and
// details from it. With 20 ms pushback and 20 ms deadlines, a 4× overload
// ended 535 of 2,043 calls that way. A shed whose pushback would outlast
// what is left of the deadline (less the method's service time) now says
// "do not retry" (a negative pushback, gRFC A6), and the caller gets the
// shed at once. Both paths: on the tap path the first attempt is shed by
// the tap and the retry attempt by the interceptor.
func TestShedderPushbackNeverOutlastsTheDeadline(t *testing.T) {
	const sc = `{"methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],"retryPolicy":{
		"maxAttempts":5,"initialBackoff":"0.01s","maxBackoff":"0.05s","backoffMultiplier":2,
		"retryableStatusCodes":["RESOURCE_EXHAUSTED"]}}]}`
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait, c.Pushback = 1, 0, time.Second })
			be := startGated(t, path.opts(shed)...)
			holdSlots(t, be, 1)
			c := dial(t, be.Addr, grpc.WithDefaultServiceConfig(sc))
			// The tap sheds only methods the interceptors have seen: the
			// held call made it seen.
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			var trailer metadata.MD
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
			if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
				t.Fatalf("call with 200 ms left against 1 s of pushback = %v, want ResourceExhausted %q at once", err, interceptors.MessageShedLimit)
			}
			if got := trailer.Get(interceptors.PushbackTrailer); len(got) != 1 || got[0] != "-1" {
				t.Errorf("pushback trailer = %q, want [\"-1\"] (do not retry)", got)
			}
			// A call whose deadline leaves room for the pushback (or that has
			// none) is told to wait it, as before (a client without a retry
			// policy, so that it does not wait).
			plain := dial(t, be.Addr)
			for _, d := range []time.Duration{0, 5 * time.Second} {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if d > 0 {
					ctx, cancel = context.WithTimeout(ctx, d)
				}
				var long metadata.MD
				_, err = plain.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&long))
				cancel()
				if path.name == "interceptor" { // the tap's own sheds carry no trailer
					if got := long.Get(interceptors.PushbackTrailer); status.Code(err) != codes.ResourceExhausted || len(got) != 1 || got[0] != "1000" {
						t.Errorf("deadline %v: %v, pushback %q, want ResourceExhausted and [\"1000\"]", d, err, got)
					}
				}
			}
		})
	}
}

// Shape 2b: no overload, variable service times: exponential (mean 2 ms),
// bimodal (1 ms, one in ten 20 ms), and a slow method (UnaryCall 20 ms)
// beside a fast one (EmptyCall), 8 callers, no work slot bound, 50 ms
// deadlines.
func TestField2ExploreVariableNoOverload(t *testing.T) {
	explore(t)
	shapes := []struct {
		name string
		work func(*testpb.SimpleRequest) time.Duration
		fast bool // half the callers call EmptyCall
	}{
		{"exponential 2ms", func(*testpb.SimpleRequest) time.Duration {
			return time.Duration(rand.ExpFloat64() * float64(2*time.Millisecond))
		}, false},
		{"bimodal 1/20ms", func(*testpb.SimpleRequest) time.Duration {
			if rand.IntN(10) == 0 {
				return 20 * time.Millisecond
			}
			return time.Millisecond
		}, false},
		{"slow+fast methods", func(*testpb.SimpleRequest) time.Duration { return 20 * time.Millisecond }, true},
	}
	sides := []loadSide{{name: "plain grpc-go"}, {name: "default tap", edit: func(*interceptors.ShedderConfig) {}},
		{name: "adaptive tap", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }},
		{name: "adaptive limit 8", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.Limit = true, 8 }}}
	for _, sh := range shapes {
		for _, side := range sides {
			shed, opts := newSideShedder(t, side)
			w := &workServer{cpu: make(chan struct{}, 1000), work: sh.work}
			c := dial(t, startWork(t, w, opts...))
			var got tally
			run, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			closedLoop(run, 8, 100000, func(int) time.Duration { return 50 * time.Millisecond },
				func(ctx context.Context, i int) error {
					if sh.fast && i%2 == 0 {
						_, err := c.EmptyCall(ctx, &testpb.Empty{})
						return err
					}
					return unary(ctx, c)
				}, func(_ int, err error) { got.add(err) })
			cancel()
			t.Logf("%-18s %-16s %s | %s", sh.name, side.name, got.String(), shedString(shed))
		}
	}
}

// Shape 4b: server-streaming calls (5 messages of 2 ms work each, 100 ms
// deadlines) beside unary callers (5 ms deadlines) on 4 work slots.
func TestField2ExploreStreamsBesideUnary(t *testing.T) {
	explore(t)
	for _, side := range field2Sides {
		shed, opts := newSideShedder(t, side)
		w := &workServer{cpu: make(chan struct{}, 4), work: func(*testpb.SimpleRequest) time.Duration { return 2 * time.Millisecond }}
		c := dial(t, startWork(t, w, opts...))
		var un, st tally
		run, cancel := context.WithTimeout(context.Background(), time.Second)
		var wg sync.WaitGroup
		wg.Go(func() {
			closedLoop(run, 4, 100000, func(int) time.Duration { return 100 * time.Millisecond },
				func(ctx context.Context, _ int) error {
					s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: make([]*testpb.ResponseParameters, 5)})
					if err != nil {
						return err
					}
					return recvAll(s.Recv)
				}, func(_ int, err error) { st.add(err) })
		})
		closedLoop(run, 12, 100000, func(int) time.Duration { return 5 * time.Millisecond },
			func(ctx context.Context, _ int) error { return unary(ctx, c) }, func(_ int, err error) { un.add(err) })
		wg.Wait()
		cancel()
		t.Logf("%-14s unary %s | streams %s | %s", side.name, un.String(), st.String(), shedString(shed))
	}
}

// Shape 2c: when does the adaptive limit shed with no overload?
func TestField2ExploreAdaptiveIdleSheds(t *testing.T) {
	explore(t)
	for _, name := range []string{"exponential", "bimodal"} {
		shed, opts := newSideShedder(t, loadSide{name: "adaptive", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }})
		w := &workServer{cpu: make(chan struct{}, 1000), work: func(*testpb.SimpleRequest) time.Duration {
			if name == "bimodal" {
				if rand.IntN(10) == 0 {
					return 20 * time.Millisecond
				}
				return time.Millisecond
			}
			return time.Duration(rand.ExpFloat64() * float64(2*time.Millisecond))
		}}
		c := dial(t, startWork(t, w, opts...))
		var got tally
		run, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var marks []string
		var wg sync.WaitGroup
		wg.Go(func() {
			for range 12 {
				time.Sleep(250 * time.Millisecond)
				snap := shed.Snapshot()
				marks = append(marks, fmt.Sprintf("%d/%d/%v", snap.Shed[interceptors.ReasonLimit], snap.Limit, snap.Baseline.Round(10*time.Microsecond)))
			}
		})
		closedLoop(run, 8, 100000, func(int) time.Duration { return 0 },
			func(ctx context.Context, i int) error { return unary(ctx, c) }, func(_ int, err error) { got.add(err) })
		cancel()
		wg.Wait()
		t.Logf("%s: %s; limit sheds/limit every 250ms: %v", name, got.String(), marks)
	}
}

const field2CPUEnv = "GRPCREUSE_FIELD2_CPU_SERVER"

// TestField2CPUServer is the server half of TestField2ExploreCPUBoundIsolated:
// a handler that spins about 1 ms of CPU (it never looks at its context),
// GOMAXPROCS 1, pinned by its parent to one CPU with taskset. It prints
// "addr ADDR" and, when stdin closes, "shed ..." and exits.
func TestField2CPUServer(t *testing.T) {
	side := os.Getenv(field2CPUEnv)
	if side == "" {
		t.Skip("the server half of TestField2ExploreCPUBoundIsolated")
	}
	runtime.GOMAXPROCS(1)
	spin, iters := msSpin()
	var sink atomic.Uint64
	var s loadSide
	for _, sd := range field2CPUSides {
		if sd.name == side {
			s = sd
		}
	}
	shed, opts := newSideShedder(t, s)
	addr, _ := startWorkServer(t, &cpuServer{spin: func() { sink.Add(spin(iters)) }}, opts...)
	fmt.Printf("addr %s\n", addr)
	_, _ = io.Copy(io.Discard, os.Stdin)
	fmt.Printf("shed %s\n", shedString(shed))
}

var field2CPUSides = []loadSide{
	{name: "plain"},
	{name: "fixed1", edit: func(c *interceptors.ShedderConfig) { c.Limit = 1 }},
	{name: "fixed2", edit: func(c *interceptors.ShedderConfig) { c.Limit = 2 }},
	{name: "fixed1-nowait", edit: func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 }},
	{name: "adaptive", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }},
}

// Shape 3, isolated: the CPU-bound server in a child process on CPU 1
// (GOMAXPROCS 1), 32 callers with 30 ms deadlines in this process.
func TestField2ExploreCPUBoundIsolated(t *testing.T) {
	explore(t)
	for _, side := range field2CPUSides {
		srv := startChild(t, field2CPUEnv+"="+side.name, "taskset", "-c", "1", os.Args[0], "-test.run=^TestField2CPUServer$", "-test.count=1")
		addr := srv.read("addr")
		c := dial(t, addr)
		var got tally
		var warm tally
		t0 := time.Now()
		for range 20 { // warm: the method is measured
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			warm.add(unary(ctx, c))
			cancel()
		}
		t.Logf("%s warm: %s in %v", side.name, warm.String(), time.Since(t0))
		run, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		closedLoop(run, 32, 100000, func(int) time.Duration { return 30 * time.Millisecond },
			func(ctx context.Context, _ int) error { return unary(ctx, c) }, func(_ int, err error) { got.add(err) })
		cancel()
		srv.stdin.Close() // the server prints what it shed, and stops
		sheds := srv.read("shed")
		srv.close()
		t.Logf("%-14s ok/s %5.0f  %s | %s", side.name, float64(got.ok())/2, got.String(), sheds)
	}
}

// Shape 2d: 16 honest callers (5 ms deadlines) beside 16 that send 1 ms
// deadlines (hopeless on 2 ms of work: the deadline shed's), on 4 work
// slots; the handler honours its context, or not (CPU-like work).
func TestField2ExploreHopelessDeadlines(t *testing.T) {
	explore(t)
	for _, honour := range []bool{true, false} {
		for _, side := range field2Sides {
			shed, opts := newSideShedder(t, side)
			w := &workServer{cpu: make(chan struct{}, 4), work: func(*testpb.SimpleRequest) time.Duration { return 2 * time.Millisecond }}
			var srv testpb.TestServiceServer = w
			if !honour {
				srv = &deafServer{w}
			}
			addr, _ := startWorkServer(t, srv, opts...)
			c := dial(t, addr)
			var honest, hopeless tally
			run, cancel := context.WithTimeout(context.Background(), time.Second)
			closedLoop(run, 32, 100000, func(i int) time.Duration {
				if i < 16 {
					return 5 * time.Millisecond
				}
				return time.Millisecond
			}, func(ctx context.Context, _ int) error { return unary(ctx, c) }, func(i int, err error) {
				if i < 16 {
					honest.add(err)
				} else {
					hopeless.add(err)
				}
			})
			cancel()
			t.Logf("honour=%v %-14s honest ok %4d  %s | hopeless %s | %s", honour, side.name, honest.ok(), honest.String(), hopeless.String(), shedString(shed))
		}
	}
}

// deafServer's UnaryCall works its time whatever its caller does.
type deafServer struct{ *workServer }

func (d *deafServer) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if err := d.doWork(context.Background(), d.work(req)); err != nil {
		return nil, err
	}
	return &testpb.SimpleResponse{}, nil
}
