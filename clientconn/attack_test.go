package clientconn_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// refusedAddr returns a loopback address nothing listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestFailedWarmUpLeavesNoConnection: Get's godoc promises that a Get that
// fails leaves nothing behind. A WithWarmUp Get that times out (refused
// port, unknown host, or a context already cancelled) must not leave its
// connection in the idle pool, redialling a dead address for the idle
// timeout; a plain grpc-go user would Close the ClientConn on failure.
func TestFailedWarmUpLeavesNoConnection(t *testing.T) {
	f := newFactory(t)
	dead := refusedAddr(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		name   string
		target string
		ctx    func() (context.Context, context.CancelFunc)
	}{
		{"refused port", dead, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 300*time.Millisecond)
		}},
		{"unknown host", "dns:///nosuchhost.invalid:443", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 300*time.Millisecond)
		}},
		{"context already cancelled", dead, func() (context.Context, context.CancelFunc) { return cancelled, func() {} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			_, err := f.Get(ctx, tt.target, clientconn.WithWarmUp())
			if err == nil {
				t.Fatal("Get(WithWarmUp) succeeded on a dead target")
			}
			testutil.Eventually(t, 10*time.Second, func() bool { return f.Stats().Open == 0 },
				"the failed Get's connection to close")
		})
	}
}

// TestFailedWarmUpKeepsOthersConnection: a failing WithWarmUp Get must not
// close a connection that other handles use.
func TestFailedWarmUpKeepsOthersConnection(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	c := get(t, f, be.Addr)
	defer c.Close()
	mustUnary(t, c)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.Get(cancelled, be.Addr, clientconn.WithWarmUp()); err == nil {
		// READY already: a cancelled context may still succeed; fine.
		t.Log("warm-up on a READY connection succeeded despite a cancelled context")
	}
	mustUnary(t, c)
	if st := f.Stats(); st.Open != 1 || st.Handles < 1 {
		t.Fatalf("Stats = %+v, want the shared connection kept", st)
	}
}

// TestSchemeCaseSharesConnection: grpc-go matches schemes case-blind (url
// parsing lower-cases them), so "DNS:///h:p" is the same target as
// "dns:///h:p" and "h:p" and must share their connection.
func TestSchemeCaseSharesConnection(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	var conns []*clientconn.Conn
	for _, target := range []string{be.Addr, "DNS:///" + be.Addr, "Dns:" + be.Addr} {
		c := get(t, f, target)
		defer c.Close()
		mustUnary(t, c)
		conns = append(conns, c)
	}
	for _, c := range conns[1:] {
		if c.ClientConn() != conns[0].ClientConn() {
			t.Errorf("%q and %q do not share a connection", c.Target(), conns[0].Target())
		}
	}
	if got := be.Listener.Accepts(); got != 1 {
		t.Errorf("backend accepted %d connections, want 1", got)
	}
}

// TestDNSAuthorityWithoutEndpointFailsGet: "dns://h:p" (two slashes, a
// common slip for "dns:///h:p") names a DNS server and no host. grpc-go
// accepts it in NewClient and fails every call later; Get should say so.
func TestDNSAuthorityWithoutEndpointFailsGet(t *testing.T) {
	f := newFactory(t)
	_, err := f.Get(context.Background(), "dns://127.0.0.1:50051")
	if err == nil || !strings.Contains(err.Error(), "dns://127.0.0.1:50051") {
		t.Fatalf("Get(dns://h:p) = %v, want an error naming the target", err)
	}
	_ = errors.New
}
