package interceptors_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestIssue13ShortClientDeadlinesCannotMoveTheLimit is issue 13 item 2: a
// client sending 60 requests with a 5 ms deadline on 50 ms of work drove
// the AIMD limit from 64 to 1, and then 140 of 160 well-behaved calls
// were shed. Neither the AIMD nor the adaptive limit may move for a
// client's deadline; afterwards every well-behaved call is admitted.
func TestIssue13ShortClientDeadlinesCannotMoveTheLimit(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*interceptors.ShedderConfig)
	}{
		{"aimd", func(c *interceptors.ShedderConfig) { c.Algorithm = interceptors.AIMD; c.Limit = 64 }},
		{"adaptive", func(c *interceptors.ShedderConfig) {
			c.Adaptive, c.Limit, c.Window = true, 64, 10*time.Millisecond
		}},
	} {
		for _, path := range shedPaths {
			t.Run(tc.name+"/"+path.name, func(t *testing.T) {
				shed := makeShedder(t, &events{}, tc.edit)
				be := testutil.StartBackend(t, testutil.BackendOptions{
					ServerOptions: path.opts(shed),
					Unary:         working(func() time.Duration { return 50 * time.Millisecond }),
				})
				c := dial(t, be.Addr)
				for range 12 { // the server measures its 50 ms
					if err := unary(context.Background(), c); err != nil {
						t.Fatal(err)
					}
				}
				var wg sync.WaitGroup
				for range 6 { // 60 hostile requests, 6 at a time
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range 10 {
							ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
							_ = unary(ctx, c)
							cancel()
						}
					}()
				}
				wg.Wait()
				if l, _ := shed.InFlight(); l < 64 {
					t.Fatalf("after 60 requests with 5 ms deadlines the limit is %d, want at least 64", l)
				}
				// 160 well-behaved calls, 16 at a time, with and without deadlines.
				errs := make(chan error, 160)
				for i := range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range 10 {
							ctx, cancel := context.Background(), context.CancelFunc(func() {})
							if i%2 == 0 {
								ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
							}
							errs <- unary(ctx, c)
							cancel()
						}
					}()
				}
				wg.Wait()
				close(errs)
				shedCalls := 0
				for err := range errs {
					if err != nil {
						shedCalls++
						t.Log(err)
					}
				}
				if shedCalls != 0 {
					t.Fatalf("%d of 160 well-behaved calls failed, want 0", shedCalls)
				}
			})
		}
	}
}

// TestIssue13IdleStreamsDoNotStarveUnaryCalls is issue 13 item 11: 4 idle
// streams without deadlines shed 40 of 40 unary calls, and stream
// lifetimes fed the method's service time. Streams have their own limit
// now, and their lifetime is never a service time.
func TestIssue13IdleStreamsDoNotStarveUnaryCalls(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MinSamples = 4, 3 })
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: path.opts(shed)})
			c := dial(t, be.Addr)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			for range 4 { // idle, no deadline
				streamOnce(t, ctx, c, "stream")
			}
			for i := range 40 {
				if err := unary(context.Background(), c); err != nil {
					t.Fatalf("unary call %d with 4 idle streams open = %v", i, err)
				}
			}
			if snap := shed.Snapshot(); snap.Streams != 4 {
				t.Errorf("Snapshot().Streams = %d, want 4", snap.Streams)
			}
			cancel()
			testutil.Eventually(t, 5*time.Second, func() bool { return shed.Snapshot().Streams == 0 }, "streams released")
			// Long-lived streams that ended OK do not become a service time:
			// a stream with a short deadline is still admitted.
			for range 5 {
				s, err := c.FullDuplexCall(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				_ = s.CloseSend()
				if _, err := s.Recv(); err == nil {
					t.Fatal("stream sent a message it was not asked for")
				}
			}
			sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer scancel()
			_ = streamOnce(t, sctx, c, "stream with a deadline after long-lived streams")
		})
	}
}

// TestShedderStreamLimit: streams beyond StreamLimit are shed with their
// own reason and message.
func TestShedderStreamLimit(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			ev := &events{}
			shed := makeShedder(t, ev, func(c *interceptors.ShedderConfig) { c.StreamLimit = 2 })
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: path.opts(shed)})
			c := dial(t, be.Addr)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			open := func() error {
				s, err := c.FullDuplexCall(ctx)
				if err != nil {
					return err
				}
				// A Send racing the server's early answer returns io.EOF, and
				// the status is Recv's to tell (grpc-go's ClientStream
				// contract): the tap answers a shed stream at once.
				if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil && err != io.EOF {
					return err
				}
				_, err = s.Recv()
				return err
			}
			for range 2 {
				if err := open(); err != nil {
					t.Fatal(err)
				}
			}
			err := open()
			if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedStreamLimit {
				t.Fatalf("third stream = %v, want %q", err, interceptors.MessageShedStreamLimit)
			}
			if info, _ := shedInfo(err); info == nil || info.Metadata["streamLimit"] != "2" {
				t.Errorf("ErrorInfo = %v", info)
			}
			if ev.shedCount(interceptors.ReasonStreamLimit) != 1 {
				t.Errorf("shed: %v", ev.shed)
			}
			if err := unary(context.Background(), c); err != nil {
				t.Fatalf("unary call at the stream limit = %v", err)
			}
			// Health's Watch is a long-lived stream too: it opens at the
			// stream limit and is not counted against it.
			w, err := healthpb.NewHealthClient(dialConn(t, be.Addr)).Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if r, err := w.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health Watch at the stream limit = %v, %v; want SERVING", r, err)
			}
			if snap := shed.Snapshot(); snap.Streams != 2 {
				t.Errorf("Snapshot().Streams = %d with a Watch open beside 2 streams, want 2", snap.Streams)
			}
		})
	}
}

// TestShedderCriticality: sheddable requests (by header, or by the
// method's default) are shed once SheddableShare of the limit is in use;
// critical ones keep the rest; the header overrides the default.
func TestShedderCriticality(t *testing.T) {
	const method = "/grpc.testing.TestService/UnaryCall"
	for _, tc := range []struct {
		name       string
		defaults   map[string]interceptors.Criticality
		header     string
		wantShed   bool
		wantReason string
	}{
		{name: "no header, no default: critical"},
		{name: "header sheddable", header: "sheddable", wantShed: true},
		{name: "method default sheddable", defaults: map[string]interceptors.Criticality{method: interceptors.Sheddable}, wantShed: true},
		{name: "service default sheddable", defaults: map[string]interceptors.Criticality{"/grpc.testing.TestService/": interceptors.Sheddable}, wantShed: true},
		{name: "header critical overrides the default", defaults: map[string]interceptors.Criticality{method: interceptors.Sheddable}, header: "critical"},
		{name: "unknown header value takes the default", defaults: map[string]interceptors.Criticality{method: interceptors.Sheddable}, header: "urgent", wantShed: true},
	} {
		for _, path := range shedPaths {
			t.Run(tc.name+"/"+path.name, func(t *testing.T) {
				ev := &events{}
				shed := makeShedder(t, ev, func(c *interceptors.ShedderConfig) {
					c.Limit, c.SheddableShare, c.Criticality = 4, 0.5, tc.defaults
				})
				be := startGated(t, path.opts(shed)...)
				c := dial(t, be.Addr)
				results := make(chan error, 3)
				for range 2 { // critical work fills the sheddable share
					go func() { results <- unary(interceptors.WithCriticality(context.Background(), interceptors.Critical), c) }()
				}
				testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 2 }, "two requests running")
				ctx := context.Background()
				if tc.header != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, interceptors.CriticalityHeader, tc.header)
				}
				if !tc.wantShed {
					go func() { results <- unary(ctx, c) }()
					testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 3 }, "critical request admitted")
				} else {
					err := unary(ctx, c)
					if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedSheddable {
						t.Fatalf("sheddable request = %v, want %q", err, interceptors.MessageShedSheddable)
					}
					if info, _ := shedInfo(err); info == nil || info.Metadata["sheddableLimit"] != "2" || info.Metadata["limit"] != "4" {
						t.Errorf("ErrorInfo = %v", info)
					}
					if ev.shedCount(interceptors.ReasonSheddable) != 1 {
						t.Errorf("shed: %v", ev.shed)
					}
					results <- nil
				}
				close(be.gate)
				for range 3 {
					if err := <-results; err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}

// TestShedderExpiredDeadline: a request whose deadline passed before it
// was admitted answers DeadlineExceeded, not ResourceExhausted; its slot
// is not kept.
func TestShedderExpiredDeadline(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, nil)
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: path.opts(shed)})
			c := dial(t, be.Addr)
			if err := unary(context.Background(), c); err != nil { // the method is known
				t.Fatal(err)
			}
			raw := dialRawH2(t, be.Addr)
			for range 5 {
				id := raw.start("/grpc.testing.TestService/UnaryCall", "1n", false)
				raw.message(id)
				code, msg := raw.status(id)
				if codes.Code(code) != codes.DeadlineExceeded {
					t.Fatalf("expired request = %v %q, want DeadlineExceeded", codes.Code(code), msg)
				}
			}
			if _, n := shed.InFlight(); n != 0 {
				t.Fatalf("%d in flight after expired requests", n)
			}
		})
	}
}

// TestShedderTapReleasesExactlyOnce: a request the tap admitted releases
// its slot exactly once whether or not it reaches an interceptor: the
// client resets it before its message, it names a method the server does
// not have, or it completes.
func TestShedderTapReleasesExactlyOnce(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit = 3 })
	be := startGated(t, shed.ServerOptions()...)
	close(be.gate)
	cc := dialConn(t, be.Addr)
	c := testpb.NewTestServiceClient(cc)
	if err := unary(context.Background(), c); err != nil { // the method is known: the tap decides
		t.Fatal(err)
	}
	raw := dialRawH2(t, be.Addr)
	for range 20 { // reset before the message: the handler never runs
		id := raw.start("/grpc.testing.TestService/UnaryCall", "", false)
		raw.reset(id)
	}
	raw.sync() // every reset request has been through the tap: none can be admitted later
	testutil.Eventually(t, 5*time.Second, func() bool { _, n := shed.InFlight(); return n == 0 }, "reset requests release their slots")
	for i := range 20 {
		err := cc.Invoke(context.Background(), "/grpc.testing.TestService/NoSuchMethod", &testpb.SimpleRequest{}, &testpb.SimpleResponse{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("unknown method %d = %v", i, err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 60)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				errs <- unary(context.Background(), c)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("call within the limit = %v (a slot leaked or was released twice)", err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() bool { _, n := shed.InFlight(); return n == 0 }, "every slot released")
	if _, n := shed.InFlight(); n < 0 {
		t.Fatalf("in flight %d: a slot was released twice", n)
	}
}

// TestShedderLogSummary: one line per interval when something was shed,
// none when nothing was.
func TestShedderLogSummary(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.LogInterval = 1, time.Hour })
	logged := captureLog(shed)
	be := startGated(t, shed.ServerOptions()...)
	c := dial(t, be.Addr)
	done := make(chan error, 1)
	go func() { done <- unary(context.Background(), c) }()
	testutil.Eventually(t, 2*time.Second, func() bool { return be.inflight.Load() == 1 }, "one request running")
	for range 5 {
		if err := unary(context.Background(), c); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("over the limit = %v", err)
		}
	}
	close(be.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := logged()
	if len(lines) != 1 || !strings.Contains(lines[0], "shed 1 requests") || !strings.Contains(lines[0], "limit 1") {
		t.Fatalf("log lines = %q, want one summary of the first shed (then nothing for an hour)", lines)
	}
}

// captureLog makes s write its log lines to a list instead of the logger,
// and returns a function that reads what it wrote so far.
func captureLog(s *interceptors.Shedder) func() []string {
	var mu sync.Mutex
	var lines []string
	interceptors.SetShedderLogf(s, func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(lines)
	}
}
