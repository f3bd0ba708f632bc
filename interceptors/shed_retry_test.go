package interceptors_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestShedderTapSendsPushbackToRetries: grpc-go's early answer (the tap
// path) cannot carry the grpc-retry-pushback-ms trailer, so a client with
// a retry policy would retry after its own short backoff. Its retry
// attempts carry grpc-previous-rpc-attempts: the tap passes those to the
// interceptor, whose shed carries the trailer. A first attempt, or a
// client without a retry policy, is still shed by the tap.
func TestShedderTapSendsPushbackToRetries(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 })
	be := startGated(t, shed.ServerOptions()...)
	defer close(be.gate)
	const sc = `{"methodConfig":[{"name":[{"service":"grpc.testing.TestService"}],"retryPolicy":{
		"maxAttempts":2,"initialBackoff":"0.001s","maxBackoff":"0.001s","backoffMultiplier":1,
		"retryableStatusCodes":["RESOURCE_EXHAUSTED"]}}]}`
	retrying := testpb.NewTestServiceClient(dialConn(t, be.Addr, grpc.WithDefaultServiceConfig(sc)))
	plain := dial(t, be.Addr)
	ctx := context.Background()
	held := make(chan error, 1)
	go func() { held <- unary(ctx, plain) }()
	testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the slot is held")
	// The interceptors have seen the method now: the tap decides on it.

	var trailer metadata.MD
	_, err := plain.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.ResourceExhausted || trailer.Get(interceptors.PushbackTrailer) != nil {
		t.Fatalf("first attempt, no retry policy = %v, trailer %v; want ResourceExhausted by the tap, no trailer", err, trailer)
	}
	before := shed.Snapshot().Shed[interceptors.ReasonLimit]
	trailer = nil
	_, err = retrying.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
	// grpc-go prefixes the last attempt's message ("max retries exhausted: ...").
	if status.Code(err) != codes.ResourceExhausted || !strings.HasSuffix(status.Convert(err).Message(), interceptors.MessageShedLimit) {
		t.Fatalf("retried call at the limit = %v, want ResourceExhausted ending %q", err, interceptors.MessageShedLimit)
	}
	if got := trailer.Get(interceptors.PushbackTrailer); !slices.Equal(got, []string{"20"}) {
		t.Fatalf("pushback trailer of the retry attempt's shed = %q, want [20]", got)
	}
	if n := shed.Snapshot().Shed[interceptors.ReasonLimit] - before; n != 2 {
		t.Fatalf("%d sheds for a call of 2 attempts, want 2 (each counted once)", n)
	}
}

// TestShedderTapBoundsRequestsItPasses: the tap lets requests through at
// the limit in two cases, and counts each from the tap on, until it
// reaches the interceptor or its stream ends, so that a client sending
// headers but never their messages (a hostile one, or a slow upload)
// cannot pile up streams and goroutines past the tap:
//   - one request at a time, to wait for a slot (MaxWait): 50 header-only
//     requests at the limit all used to pass, where MaxWait 0 refused them;
//   - retry attempts (grpc-previous-rpc-attempts), the limit's worth at once.
//
// Once a passed request's stream ends, another may pass.
func TestShedderTapBoundsRequestsItPasses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		limit   int
		maxWait time.Duration
		header  [][2]string
		passes  int // how many of the requests pass at once
	}{
		{"wait", 1, 10 * time.Second, nil, 1},
		{"retry", 2, 0, [][2]string{{"grpc-previous-rpc-attempts", "1"}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = tc.limit, tc.maxWait })
			interceptors.SetShedderServiceTime(shed, unaryMethod, 10*time.Second, 100)
			// raw.sync pings, and the tap's answers, written before a stream
			// exists, do not clear grpc-go's ping strikes as a stream's
			// writes do: at the third ping that the poll below sends while
			// the reset's release is still on its way, the server went away
			// (GOAWAY ENHANCE_YOUR_CALM). Allow the pings.
			pings := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Nanosecond, PermitWithoutStream: true})
			be := startGated(t, append(shed.ServerOptions(), pings)...)
			c := dial(t, be.Addr)
			held := make(chan error, tc.limit)
			for range tc.limit {
				go func() { held <- unary(context.Background(), c) }()
			}
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == int64(tc.limit) }, "the slots are held")
			raw := dialRawH2(t, be.Addr)
			const n = 50
			first := raw.start(unaryMethod, "", false, tc.header...)
			for range n - 1 {
				raw.start(unaryMethod, "", false, tc.header...)
			}
			raw.sync() // the tap has seen all n
			if got := shed.Snapshot().Shed[interceptors.ReasonLimit]; got != int64(n-tc.passes) {
				t.Fatalf("the tap shed %d of %d header-only requests at the limit, want %d (%d pass)", got, n, n-tc.passes, tc.passes)
			}
			raw.reset(first)
			raw.sync()
			testutil.Eventually(t, 5*time.Second, func() bool {
				before := shed.Snapshot().Shed[interceptors.ReasonLimit]
				id := raw.start(unaryMethod, "", false, tc.header...)
				raw.sync()
				passed := shed.Snapshot().Shed[interceptors.ReasonLimit] == before
				raw.reset(id)
				raw.sync()
				return passed
			}, "after the reset, a request may pass again")
			close(be.gate)
			for range tc.limit {
				if err := <-held; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestShedderStreamTakenForUnaryReleasesItsPass: between a streaming
// method's entry being made and its being marked a stream, the tap takes
// its requests for unary calls; a retry attempt among them, at the unary
// limit, passes counted. The stream interceptor releases that count when
// the stream starts, not when it ends, so a long-lived stream does not
// hold one of the limit's retry passes for its whole life.
func TestShedderStreamTakenForUnaryReleasesItsPass(t *testing.T) {
	shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 })
	// The window: an entry for the streaming method, not yet marked a stream.
	interceptors.SetShedderServiceTime(shed, "/grpc.testing.TestService/FullDuplexCall", time.Millisecond, 100)
	be := startGated(t, shed.ServerOptions()...)
	defer close(be.gate)
	c := dial(t, be.Addr)
	held := make(chan error, 1)
	go func() { held <- unary(context.Background(), c) }()
	testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the unary slot is held")
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "grpc-previous-rpc-attempts", "1"))
	defer cancel()
	_ = streamOnce(t, ctx, c, "stream")
	if waiting, retries := interceptors.ShedderPasses(shed); waiting != 0 || retries != 0 {
		t.Fatalf("while the stream is open: %d wait and %d retry passes counted, want 0", waiting, retries)
	}
}
