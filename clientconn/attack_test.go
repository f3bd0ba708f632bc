package clientconn_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

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
// fails leaves nothing behind. A WithWarmUp Get that times out on a
// failing target (refused port, unknown host) must not leave its
// connection in the idle pool, redialling a dead address for the idle
// timeout; a plain grpc-go user would Close the ClientConn on failure.
func TestFailedWarmUpLeavesNoConnection(t *testing.T) {
	f := newFactory(t)
	dead := refusedAddr(t)
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

// TestWarmUpTooShortForASlowHandshakeKeepsTheConnection: a warm-up that
// times out while the connection is still connecting (a slow, healthy
// backend) leaves it in the pool, so a retry with more time finds it
// further on instead of starting over each time.
func TestWarmUpTooShortForASlowHandshakeKeepsTheConnection(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	proxy := testutil.StartProxy(t, be.Addr)
	proxy.SetLatency(300 * time.Millisecond)
	f := newFactory(t)
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := f.Get(short, proxy.Addr, clientconn.WithWarmUp()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get with a 50ms warm-up on a 300ms link = %v, want DeadlineExceeded", err)
	}
	long, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	c, err := f.Get(long, proxy.Addr, clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := f.Stats(); st.Misses != 1 || st.Hits != 1 {
		t.Errorf("Stats = %+v, want the retry to find the first Get's connection", st)
	}
	if n := proxy.Accepts(); n != 1 {
		t.Errorf("proxy accepted %d connections, want 1", n)
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

// TestTargetSpellingsAttack: odd spellings either canonicalise to what
// grpc-go would resolve, or fail Get naming the target; none panics.
func TestTargetSpellingsAttack(t *testing.T) {
	f := newFactory(t)
	for _, tt := range []struct{ target, want, wantErr string }{
		{target: "DNS:///Example.COM:80", want: "dns:///example.com:80"},
		{target: "dns://8.8.8.8:53/Example.com:80", want: "dns://8.8.8.8:53/example.com:80"},
		{target: "dns://8.8.8.8/example.com", want: "dns://8.8.8.8/example.com:443"},
		{target: "dns://8.8.8.8:53", wantErr: "no host to resolve"},
		{target: "dns://8.8.8.8/", wantErr: "no host to resolve"},
		{target: "dns://8.8.8.8/h:0", wantErr: "out of range"},
		{target: "PASSTHROUGH:///Host:1", want: "passthrough:///Host:1"},
		{target: "unix:///tmp/x.sock", want: "unix:///tmp/x.sock"},
		{target: "UNIX:/tmp/x.sock", want: "unix:/tmp/x.sock"},
		{target: "[::1]:50051", want: "dns:///[::1]:50051"},
		{target: "[0:0::1]:50051", want: "dns:///[::1]:50051"},
		{target: "dns:///[fe80::1%25eth0]:80", want: "dns:///[fe80::1%25eth0]:80"},
		{target: "[fe80::1%25lo]:80", want: "dns:///[fe80::1%25lo]:80"},
		{target: "dns:[fe80::1%lo]:80", want: "dns:///[fe80::1%25lo]:80"},
		{target: "dns:///[fe80::1%eth0]:80", wantErr: "%25"},
		{target: "dns:///Host%2eExample:80", want: "dns:///host.example:80"},
		{target: "Localhost:80", want: "dns:///localhost:80"},
		{target: "host.:80", want: "dns:///host.:80"},
		{target: "h:99999", wantErr: "out of range"},
		{target: "h:", wantErr: "names no port"},
		{target: "nosuch:///x", wantErr: "no resolver is registered"},
	} {
		c, err := f.Get(context.Background(), tt.target)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.target) {
				t.Errorf("Get(%q) = %v, want an error naming it and saying %q", tt.target, err, tt.wantErr)
			}
			if c != nil {
				c.Close()
			}
		case err != nil:
			t.Errorf("Get(%q): %v", tt.target, err)
		default:
			if c.Target() != tt.want {
				t.Errorf("Get(%q).Target() = %q, want %q", tt.target, c.Target(), tt.want)
			}
			c.Close()
		}
	}
}

// TestPreconnectThatCannotBeKeptFailsNew: WithPreconnect connects ahead
// so the first Get finds a warm connection, and the connections wait in
// the idle pool. With WithMaxIdle(0), or more targets than WithMaxIdle,
// the pool cannot keep them: New silently dialled and closed them. New
// must say so instead.
func TestPreconnectThatCannotBeKeptFailsNew(t *testing.T) {
	a := testutil.StartBackend(t, testutil.BackendOptions{})
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	for _, tt := range []struct {
		name    string
		opts    []clientconn.Option
		wantErr string
	}{
		{"max idle 0", []clientconn.Option{clientconn.WithMaxIdle(0), clientconn.WithPreconnect(a.Addr)}, "WithMaxIdle"},
		{"more targets than max idle", []clientconn.Option{clientconn.WithMaxIdle(1), clientconn.WithPreconnect(a.Addr, b.Addr)}, "WithMaxIdle"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := clientconn.New(append([]clientconn.Option{plaintext}, tt.opts...)...)
			if err == nil {
				defer f.Close()
				t.Fatalf("New = %+v, want an error saying %q", f.Stats(), tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "WithPreconnect") {
				t.Fatalf("New: %v, want it to name WithPreconnect and %q", err, tt.wantErr)
			}
		})
	}
	// Preconnecting the same target twice is one connection, within the bound.
	f := newFactory(t, clientconn.WithMaxIdle(1), clientconn.WithPreconnect(a.Addr, "dns:///"+a.Addr))
	if st := f.Stats(); st.Open != 1 {
		t.Fatalf("Stats = %+v, want the one preconnected connection kept", st)
	}
}

// TestWarmUpNamesMutualTLSRefusal: with TLS 1.3 a server that requires a
// client certificate refuses it after the client's handshake returned;
// the warm-up error must still say why, not only "context deadline
// exceeded".
func TestWarmUpNamesMutualTLSRefusal(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	cfg := pki.ServerConfig(t)
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = pki.Pool
	be := testutil.StartBackend(t, testutil.BackendOptions{TLS: cfg})
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")))
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := f.Get(ctx, be.Addr, clientconn.WithWarmUp())
	// Which one explains it depends on whether the server's alert was read
	// before the connection closed: the alert itself, or the probe's reading
	// of a connection ended right after the handshake.
	named := err != nil && (strings.Contains(err.Error(), "certificate required") || strings.Contains(err.Error(), "require a client certificate"))
	if !errors.Is(err, context.DeadlineExceeded) || !named {
		t.Fatalf("Get(WithWarmUp) = %v, want a DeadlineExceeded naming the server's refusal", err)
	}
}

// TestNilDialOptionsAndInterceptorsFailNew: a nil grpc.DialOption made
// the first Get panic inside grpc.NewClient, and a nil interceptor made
// the first call panic; New validates every option, so it names them.
func TestNilDialOptionsAndInterceptorsFailNew(t *testing.T) {
	for _, tt := range []struct {
		name    string
		opt     clientconn.Option
		wantErr string
	}{
		{"nil dial option", clientconn.WithDialOptions(grpc.WithUserAgent("x"), nil), "WithDialOptions: option 1 is nil"},
		{"nil unary interceptor", clientconn.WithUnaryInterceptors(nil), "WithUnaryInterceptors: interceptor 0 is nil"},
		{"nil stream interceptor", clientconn.WithStreamInterceptors(nil), "WithStreamInterceptors: interceptor 0 is nil"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := clientconn.New(plaintext, tt.opt)
			if err == nil {
				defer f.Close()
				func() {
					defer func() {
						if r := recover(); r != nil {
							t.Errorf("New accepted it, then Get or a call panicked: %v", r)
						}
					}()
					b := testutil.StartBackend(t, testutil.BackendOptions{})
					c, err := f.Get(context.Background(), b.Addr)
					if err == nil {
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						defer cancel()
						_ = unary(ctx, c)
						_, _ = testpb.NewTestServiceClient(c).FullDuplexCall(ctx)
						c.Close()
					}
				}()
				t.Fatalf("New accepted %s", tt.name)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestPanickingStreamInterceptorLeaksNoCallSlot: a user's stream
// interceptor that panics propagates the panic as in grpc-go, but the
// stream it never created must not stay counted in flight: that held
// every drain (rotation, eviction, Factory.Close) for the drain timeout.
func TestPanickingStreamInterceptorLeaksNoCallSlot(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	boom := func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, grpc.Streamer, ...grpc.CallOption) (grpc.ClientStream, error) {
		panic("interceptor bug")
	}
	f := newFactory(t, clientconn.WithStreamInterceptors(boom))
	c := get(t, f, be.Addr)
	defer c.Close()
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Fatal("the interceptor's panic did not reach the caller")
			}
		}()
		_, _ = testpb.NewTestServiceClient(c).FullDuplexCall(context.Background())
	}()
	snap := debugJSON(t, f.DebugHandler())
	if len(snap.Connections) != 1 || snap.Connections[0].InFlight != 0 {
		t.Fatalf("connections = %+v, want one with nothing in flight", snap.Connections)
	}
}

// TestBadTargetServiceConfigNamesTheFieldAndStoresNothing: a per-Get
// document whose gRPC part grpc refuses fails that Get, naming the
// field and value, and leaves no connection, document or policy behind.
func TestBadTargetServiceConfigNamesTheFieldAndStoresNothing(t *testing.T) {
	f := newFactory(t)
	for range 3 { // the first and later Gets of the same bad document
		_, err := f.Get(context.Background(), "127.0.0.1:1", clientconn.WithTargetServiceConfig(
			`{"methodConfig":[{"name":[{}],"timeout":"x"}],"grpcreuse":{"methodConfig":[{"name":[{}],"circuitBreaker":{}}]}}`))
		if err == nil || !strings.Contains(err.Error(), `"methodConfig" is [{"name":[{}],"timeout":"x"}]`) || !strings.Contains(err.Error(), "malformed duration") {
			t.Fatalf("Get = %v, want the field, the value and grpc's reason", err)
		}
	}
	if st := f.Stats(); st.Open != 0 || st.Handles != 0 {
		t.Errorf("Stats = %+v, want nothing open", st)
	}
	if cfgs, pols := clientconn.PolicyStateForTest(f); cfgs != 1 || pols != 0 {
		t.Errorf("kept %d documents and %d policy states, want only the default document", cfgs, pols)
	}
}

// TestSharedConnectionClosedByOneServiceRecovers: Conn.ClientConn's godoc
// says not to Close the result, but a careless service that does closed
// the connection every other service of the tenant shares, for good:
// their calls failed with Canceled until a rotation or eviction. With a
// grpc.NewClient per service only the careless one would suffer. The
// first call that meets the closed connection fails as grpc-go fails it
// (codes.Canceled: it may have reached the server, so it is not retried),
// and the Factory replaces the connection: later calls go on.
func TestSharedConnectionClosedByOneServiceRecovers(t *testing.T) {
	be := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	careless := get(t, f, be.Addr)
	other := get(t, f, be.Addr)
	defer careless.Close()
	defer other.Close()
	mustUnary(t, other)
	careless.ClientConn().Close()
	if err := unary(context.Background(), other); err != nil && status.Code(err) != codes.Canceled {
		t.Fatalf("the call that met the closed connection: %v, want nil or Canceled", err)
	}
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := unary(ctx, other)
		cancel()
		if err != nil {
			t.Fatalf("call %d of another service after one closed the shared *grpc.ClientConn: %v", i, err)
		}
	}
	s, err := testpb.NewTestServiceClient(other).FullDuplexCall(context.Background())
	if err != nil {
		t.Fatalf("stream after the shared connection was closed: %v", err)
	}
	_ = s.CloseSend()
	_, _ = s.Recv()
	if st := f.Stats(); st.Open != 1 {
		t.Errorf("Stats = %+v, want the replacement open and the closed one gone", st)
	}
}
