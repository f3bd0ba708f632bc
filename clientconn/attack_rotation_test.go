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
