package clientconn_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

var plaintext = clientconn.WithTransportCredentials(insecure.NewCredentials())

func newFactory(t *testing.T, opts ...clientconn.Option) *clientconn.Factory {
	t.Helper()
	return mustNew(t, append([]clientconn.Option{plaintext}, opts...)...)
}

func get(t *testing.T, f *clientconn.Factory, target string, opts ...clientconn.GetOption) *clientconn.Conn {
	t.Helper()
	c, err := f.Get(context.Background(), target, opts...)
	if err != nil {
		t.Fatalf("Get(%q): %v", target, err)
	}
	return c
}

func unary(ctx context.Context, cc grpc.ClientConnInterface) error {
	_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

func mustUnary(t *testing.T, cc grpc.ClientConnInterface) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := unary(ctx, cc); err != nil {
		t.Fatalf("UnaryCall: %v", err)
	}
}

func TestGetSharesOneConnectionPerKey(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	port := b.Addr[strings.LastIndex(b.Addr, ":"):]
	spellings := []string{b.Addr, "dns:///" + b.Addr, "dns:" + b.Addr}
	var conns []*clientconn.Conn
	for _, s := range spellings {
		c := get(t, f, s)
		mustUnary(t, c)
		conns = append(conns, c)
	}
	for _, c := range conns[1:] {
		if c.ClientConn() != conns[0].ClientConn() {
			t.Errorf("spellings %q and %q got different *grpc.ClientConn", conns[0].Target(), c.Target())
		}
	}
	if got := b.Listener.Accepts(); got != 1 {
		t.Errorf("backend accepted %d connections for %d spellings of one target, want 1", got, len(spellings))
	}
	if st := f.Stats(); st.Hits != 2 || st.Misses != 1 || st.Open != 1 || st.Handles != 3 {
		t.Errorf("Stats = %+v, want 2 hits, 1 miss, 1 open, 3 handles", st)
	}

	// Each part of the key separates connections.
	other := []*clientconn.Conn{
		get(t, f, b.Addr, clientconn.WithTenant("tenant-b")),
		get(t, f, b.Addr, clientconn.WithTargetCredentials(grpccreds.NewTLS(&tls.Config{}))),
		get(t, f, b.Addr, clientconn.WithTargetServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`)),
		get(t, f, "localhost"+port),
	}
	seen := map[*grpc.ClientConn]bool{conns[0].ClientConn(): true}
	for _, c := range other {
		if seen[c.ClientConn()] {
			t.Errorf("Get(%q) with a different key shared a connection", c.Target())
		}
		seen[c.ClientConn()] = true
	}
	// The same tenant again is a hit.
	if c := get(t, f, b.Addr, clientconn.WithTenant("tenant-b")); c.ClientConn() != other[0].ClientConn() {
		t.Errorf("second Get for tenant-b got a new connection")
	}
}

func TestConnCloseIsIdempotentAndCallsFailClearly(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	c := get(t, f, b.Addr)
	other := get(t, f, b.Addr)
	mustUnary(t, c)
	for i := 0; i < 3; i++ {
		if err := c.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if st := f.Stats(); st.Handles != 1 {
		t.Errorf("after closing one of two handles three times, Handles = %d, want 1", st.Handles)
	}
	err := unary(context.Background(), c)
	if status.Code(err) != codes.Canceled || !errors.Is(err, clientconn.ErrClosed) {
		t.Errorf("call on closed Conn: %v (code %v); want Canceled wrapping ErrClosed", err, status.Code(err))
	}
	if !strings.Contains(err.Error(), "UnaryCall") || !strings.Contains(err.Error(), b.Addr) {
		t.Errorf("error %q should name the method and target", err)
	}
	_, err = testpb.NewTestServiceClient(c).FullDuplexCall(context.Background())
	if !errors.Is(err, clientconn.ErrClosed) {
		t.Errorf("stream on closed Conn: %v, want ErrClosed", err)
	}
	// The other handle still works on the shared connection.
	mustUnary(t, other)

	if err := f.Close(); err != nil {
		t.Fatalf("Factory.Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Factory.Close: %v", err)
	}
	if err := unary(context.Background(), other); !errors.Is(err, clientconn.ErrClosed) || status.Code(err) != codes.Canceled {
		t.Errorf("call after Factory.Close: %v, want Canceled wrapping ErrClosed", err)
	}
	if _, err := f.Get(context.Background(), b.Addr); !errors.Is(err, clientconn.ErrClosed) {
		t.Errorf("Get after Factory.Close: %v, want ErrClosed", err)
	}
	if st := f.Stats(); st.Open != 0 {
		t.Errorf("Open = %d after Close, want 0", st.Open)
	}
}

func TestIdleTimeoutClosesConnectionWithoutHandles(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t, clientconn.WithIdleTimeout(50*time.Millisecond))
	c := get(t, f, b.Addr)
	mustUnary(t, c)
	cc := c.ClientConn()
	c.Close()
	testutil.Eventually(t, 5*time.Second, func() bool { return f.Stats().Open == 0 }, "idle connection closed")
	if cc.GetState() != connectivity.Shutdown {
		t.Errorf("evicted connection state = %v, want SHUTDOWN", cc.GetState())
	}
	if st := f.Stats(); st.Evictions != 1 {
		t.Errorf("Stats = %+v, want 1 eviction, 0 open", st)
	}
	// A new Get dials again.
	c2 := get(t, f, b.Addr)
	mustUnary(t, c2)
	if got := b.Listener.Accepts(); got != 2 {
		t.Errorf("accepts = %d, want 2 (one before eviction, one after)", got)
	}
}

func TestIdleConnectionRevivedByGetIsNotClosed(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	// A second of idle timeout: each close-and-reopen below must fit in it
	// even on a loaded machine, or the eviction would be legitimate.
	const idle = time.Second
	f := newFactory(t, clientconn.WithIdleTimeout(idle))
	for i := 0; i < 5; i++ { // close and reopen within the idle timeout
		c := get(t, f, b.Addr)
		mustUnary(t, c)
		c.Close()
	}
	c := get(t, f, b.Addr)
	defer c.Close()
	// Well past the idle timeout, the connection with a live handle still serves.
	deadline := time.Now().Add(idle * 3 / 2)
	for time.Now().Before(deadline) {
		mustUnary(t, c)
	}
	if st := f.Stats(); st.Evictions != 0 || st.Misses != 1 {
		t.Errorf("Stats = %+v, want no eviction and 1 miss", st)
	}
}

func TestMaxIdleClosesLeastRecentlyUsed(t *testing.T) {
	backends := make([]*testutil.Backend, 4)
	for i := range backends {
		backends[i] = testutil.StartBackend(t, testutil.BackendOptions{})
	}
	f := newFactory(t, clientconn.WithMaxIdle(2))
	var ccs []*grpc.ClientConn
	for _, b := range backends {
		c := get(t, f, b.Addr)
		mustUnary(t, c)
		ccs = append(ccs, c.ClientConn())
		c.Close() // idle in order 0, 1, 2, 3
	}
	// Capacity 2: backends 0 and 1 (least recently used) are closed.
	for i, want := range []bool{true, true, false, false} {
		i, want := i, want
		if want {
			testutil.Eventually(t, 5*time.Second, func() bool { return ccs[i].GetState() == connectivity.Shutdown },
				fmt.Sprintf("idle connection %d closed", i))
		} else if ccs[i].GetState() == connectivity.Shutdown {
			t.Errorf("connection %d closed, want kept (more recently used)", i)
		}
	}
	// Open drops once each evicted connection's Close has returned.
	testutil.Eventually(t, 5*time.Second, func() bool { st := f.Stats(); return st.Evictions == 2 && st.Open == 2 },
		"Stats show 2 evictions and 2 open")
}

func TestMaxIdleZeroClosesOnLastHandle(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t, clientconn.WithMaxIdle(0))
	c := get(t, f, b.Addr)
	mustUnary(t, c)
	cc := c.ClientConn()
	c.Close()
	testutil.Eventually(t, 5*time.Second, func() bool { return cc.GetState() == connectivity.Shutdown }, "connection closed with its last handle")
}

func TestMaxConnectionAgeDrainsStreamsAndUnaryCalls(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t, clientconn.WithMaxConnectionAge(150*time.Millisecond), clientconn.NoJitter())
	c := get(t, f, b.Addr)
	defer c.Close()
	client := testpb.NewTestServiceClient(c)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Open streams on the first connection, then let it be replaced twice.
	first := c.ClientConn()
	var streams []testpb.TestService_FullDuplexCallClient
	for i := 0; i < 5; i++ {
		s, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatalf("FullDuplexCall: %v", err)
		}
		streams = append(streams, s)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	stop := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := unary(ctx, c); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return b.Listener.Accepts() >= 3 }, "two replacements")
	// The streams started on the first connection still work.
	for i, s := range streams {
		if err := s.Send(&testpb.StreamingOutputCallRequest{}); err != nil {
			t.Fatalf("stream %d Send after rotation: %v", i, err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("stream %d Recv after rotation: %v", i, err)
		}
		if err := s.CloseSend(); err != nil {
			t.Fatalf("stream %d CloseSend: %v", i, err)
		}
		if _, err := s.Recv(); err != io.EOF {
			t.Fatalf("stream %d ended with %v, want io.EOF (OK status)", i, err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("unary call failed during rotation: %v", err)
	}
	if c.ClientConn() == first {
		t.Errorf("connection was not replaced")
	}
	// Once its streams ended, the first connection closes.
	testutil.Eventually(t, 5*time.Second, func() bool { return first.GetState() == connectivity.Shutdown }, "drained connection closed")
}

func TestWaitForReady(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, b.Addr, clientconn.WithWaitForReady()) // the deprecated alias of WithWarmUp still works
	if err != nil {
		t.Fatalf("Get with WithWaitForReady: %v", err)
	}
	if st := c.GetState(); st != connectivity.Ready {
		t.Errorf("state after WithWaitForReady = %v, want READY", st)
	}
	c.Close()

	// Nothing listens on a port that was just closed.
	dead := testutil.StartBackend(t, testutil.BackendOptions{})
	dead.Stop()
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = f.Get(ctx, dead.Addr, clientconn.WithWarmUp())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get on a dead backend: %v, want DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "last connection error") {
		t.Errorf("error %q should carry the last connection error", err)
	}
	if st := f.Stats(); st.Handles != 0 {
		t.Errorf("failed Get left %d handles", st.Handles)
	}
}

func TestPreconnect(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t, clientconn.WithPreconnect(b.Addr))
	testutil.Eventually(t, 5*time.Second, func() bool { return b.Listener.Accepts() == 1 }, "preconnect dialled")
	c := get(t, f, "dns:///"+b.Addr)
	testutil.Eventually(t, 5*time.Second, func() bool { return c.GetState() == connectivity.Ready }, "preconnected connection READY")
	mustUnary(t, c)
	if got := b.Listener.Accepts(); got != 1 {
		t.Errorf("accepts = %d, want 1: the Get must use the preconnected connection", got)
	}
	if st := f.Stats(); st.Misses != 1 || st.Hits != 1 {
		t.Errorf("Stats = %+v, want the preconnect as the one miss and the Get a hit", st)
	}
}

func TestBadInputs(t *testing.T) {
	tests := []struct {
		name    string
		opts    []clientconn.Option
		target  string
		getOpts []clientconn.GetOption
		wantErr string
	}{
		{name: "negative idle timeout", opts: []clientconn.Option{clientconn.WithIdleTimeout(-time.Second)}, wantErr: "WithIdleTimeout is -1s; must be positive"},
		{name: "zero idle timeout", opts: []clientconn.Option{clientconn.WithIdleTimeout(0)}, wantErr: "WithIdleTimeout is 0s"},
		{name: "negative max idle", opts: []clientconn.Option{clientconn.WithMaxIdle(-3)}, wantErr: "WithMaxIdle is -3; must be 0 or more"},
		{name: "zero max age", opts: []clientconn.Option{clientconn.WithMaxConnectionAge(0)}, wantErr: "WithMaxConnectionAge is 0s"},
		{name: "zero drain", opts: []clientconn.Option{clientconn.WithDrainTimeout(0)}, wantErr: "WithDrainTimeout is 0s"},
		{name: "nil TLS", opts: []clientconn.Option{clientconn.WithTLS(nil)}, wantErr: "WithTLS: config is nil"},
		{name: "nil creds", opts: []clientconn.Option{clientconn.WithTransportCredentials(nil)}, wantErr: "WithTransportCredentials: credentials are nil"},
		{name: "nil option", opts: []clientconn.Option{nil}, wantErr: "option 1 is nil"},
		{name: "nil dialer", opts: []clientconn.Option{clientconn.WithDialer(nil)}, wantErr: "WithDialer: dialer is nil"},
		{name: "nil observer", opts: []clientconn.Option{clientconn.WithObserver(nil)}, wantErr: "WithObserver: observer is nil"},
		{name: "service config not JSON", opts: []clientconn.Option{clientconn.WithServiceConfig(`{"loadBalancingConfig":`)}, wantErr: "WithServiceConfig: service config is not valid JSON"},
		{name: "service config unknown policy", opts: []clientconn.Option{clientconn.WithServiceConfig(`{"loadBalancingConfig":[{"no_such_policy":{}}]}`)}, wantErr: "no_such_policy"},
		{name: "keepalive mismatch", opts: []clientconn.Option{clientconn.WithKeepalive(clientconn.Keepalive{Client: clientconn.KeepaliveDefault().Client})}, wantErr: "too_many_pings"},
		{name: "preconnect bad target", opts: []clientconn.Option{clientconn.WithPreconnect("a:b:c")}, wantErr: `WithPreconnect: clientconn: target "a:b:c"`},
		{name: "empty target", target: "", wantErr: "target is empty"},
		{name: "garbage target", target: "nosuchscheme://x", wantErr: `no resolver is registered for scheme "nosuchscheme"`},
		{name: "bad target service config", getOpts: []clientconn.GetOption{clientconn.WithTargetServiceConfig("[")}, wantErr: "WithTargetServiceConfig: service config is not valid JSON"},
		{name: "nil target creds", getOpts: []clientconn.GetOption{clientconn.WithTargetCredentials(nil)}, wantErr: "WithTargetCredentials: credentials are nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := clientconn.New(append([]clientconn.Option{plaintext}, tt.opts...)...)
			if len(tt.opts) > 0 {
				// Options are validated by New, as grpc.NewClient does.
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New error = %v, want containing %q", err, tt.wantErr)
				}
				if f != nil {
					t.Errorf("New returned a Factory with its error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			target := tt.target
			if target == "" && !strings.Contains(tt.wantErr, "empty") {
				target = "127.0.0.1:1"
			}
			c, err := f.Get(context.Background(), target, tt.getOpts...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Get error = %v, want containing %q", err, tt.wantErr)
			}
			if c != nil {
				t.Errorf("Get returned a Conn with its error")
			}
			if st := f.Stats(); st.Open != 0 || st.Handles != 0 {
				t.Errorf("failed Get left Stats = %+v", st)
			}
		})
	}
	t.Run("no credentials", func(t *testing.T) {
		f := mustNew(t)
		defer f.Close()
		if _, err := f.Get(context.Background(), "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "no transport credentials") {
			t.Fatalf("Get without credentials: %v", err)
		}
	})
}

func TestConcurrentGetCallClose(t *testing.T) {
	const targets, workers, rounds = 10, 1000, 3
	backends := make([]*testutil.Backend, targets)
	for i := range backends {
		backends[i] = testutil.StartBackend(t, testutil.BackendOptions{})
	}
	f := mustNew(t, plaintext)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for r := 0; r < rounds; r++ {
				c, err := f.Get(ctx, backends[(w+r)%targets].Addr)
				if err != nil {
					errs <- err
					return
				}
				err = unary(ctx, c)
				c.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("worker: %v", err)
	}
	st := f.Stats()
	if st.Misses != targets || st.Hits != workers*rounds-targets || st.Open != targets || st.Handles != 0 {
		t.Errorf("Stats = %+v; want %d misses, %d hits, %d open, 0 handles", st, targets, workers*rounds-targets, targets)
	}
	var accepts int64
	for _, b := range backends {
		accepts += b.Listener.Accepts()
	}
	if accepts != targets {
		t.Errorf("backends accepted %d connections, want exactly %d", accepts, targets)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats(); st.Open != 0 {
		t.Errorf("Open = %d after Close", st.Open)
	}
}

func TestGetHitAllocatesOnlyTheHandle(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	f := newFactory(t)
	keep := get(t, f, b.Addr)
	defer keep.Close()
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		c, err := f.Get(ctx, b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
	if allocs > 1 {
		t.Errorf("Get+Close of a live key allocates %v times, want at most 1 (the Conn)", allocs)
	}
}

// mustNew is New for options a test expects to be valid; the Factory is
// closed when the test ends.
func mustNew(tb testing.TB, opts ...clientconn.Option) *clientconn.Factory {
	tb.Helper()
	f, err := clientconn.New(opts...)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}
