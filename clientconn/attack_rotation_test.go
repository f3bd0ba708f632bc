package clientconn_test

import (
	"context"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestRotationKeepsHealthyConnectionWhenReplacementFails: when the
// backend refuses new connections (connection limit, an overloaded
// accept queue) but the open connection works, a max-age rotation must
// not swap the working connection for one that cannot connect: plain
// grpc-go, which has no client-side max age, would keep serving.
func TestRotationKeepsHealthyConnectionWhenReplacementFails(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	proxy := testutil.StartProxy(t, be.Addr)
	f := newFactory(t, clientconn.WithMaxConnectionAge(30*time.Millisecond), clientconn.NoJitter(),
		clientconn.WithDrainTimeout(50*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, proxy.Addr, clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustUnary(t, c)
	proxy.Refuse(true)
	refusedFrom := proxy.Accepts()
	// Several replacement attempts are refused; calls keep working.
	deadline := time.Now().Add(10 * time.Second)
	calls := 0
	for proxy.Accepts() < refusedFrom+4 || calls < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("after %d calls, %d refused dials: not enough rotation attempts", calls, proxy.Accepts()-refusedFrom)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		err := unary(cctx, c)
		ccancel()
		if err != nil {
			t.Fatalf("call %d after %d refused replacement dials: %v; the working connection was replaced by one that cannot connect",
				calls, proxy.Accepts()-refusedFrom, err)
		}
		calls++
	}
	proxy.Refuse(false)
	// Once the backend accepts again, rotation resumes.
	before := proxy.Accepts()
	testutil.Eventually(t, 10*time.Second, func() bool { return proxy.Accepts() > before }, "a rotation after the backend accepts again")
	mustUnary(t, c)
}

// TestIdleConnectionIsNotRotated: max-age rotation exists so connections
// in use pick up new backends. A connection without handles, waiting in
// the idle pool, was still replaced every period: a new TCP (and TLS)
// handshake to the backend each time for a connection nobody uses. It is
// rotated again once a Get takes it back.
func TestIdleConnectionIsNotRotated(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t, clientconn.WithMaxConnectionAge(10*time.Millisecond), clientconn.NoJitter(),
		clientconn.WithDrainTimeout(50*time.Millisecond), clientconn.WithIdleTimeout(time.Hour))
	c := get(t, f, be.Addr)
	mustUnary(t, c)
	// In use, it rotates.
	testutil.Eventually(t, 10*time.Second, func() bool { return be.Listener.Accepts() >= 3 }, "rotations while in use")
	c.Close()
	accepts := be.Listener.Accepts()
	// Idle for 30 periods.
	until := time.Now().Add(300 * time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { return !time.Now().Before(until) }, "30 max-age periods")
	if got := be.Listener.Accepts() - accepts; got > 1 { // one rotation may have been under way at Close
		t.Errorf("%d new connections to the backend while the connection sat idle, want at most 1", got)
	}
	c = get(t, f, be.Addr)
	defer c.Close()
	mustUnary(t, c)
	idle := be.Listener.Accepts()
	testutil.Eventually(t, 10*time.Second, func() bool { return be.Listener.Accepts() > idle }, "rotation once back in use")
	mustUnary(t, c)
}
