package credentials_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// tlsVersions are the versions every integration test runs under.
var tlsVersions = []struct {
	name string
	v    uint16
}{
	{"TLS12", tls.VersionTLS12},
	{"TLS13", tls.VersionTLS13},
}

// serverLog records, on the server, every handshake it completed: whether
// it resumed and the client certificate's serial (if any). It is the
// server-side witness for resumption and isolation claims.
type serverLog struct {
	mu      sync.Mutex
	resumed []bool
	clients []string
}

// verify is a tls.Config.VerifyConnection, which crypto/tls calls on every
// handshake, resumed or not.
func (l *serverLog) verify(cs tls.ConnectionState) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.resumed = append(l.resumed, cs.DidResume)
	serial := ""
	if len(cs.PeerCertificates) > 0 {
		serial = cs.PeerCertificates[0].SerialNumber.String()
	}
	l.clients = append(l.clients, serial)
	return nil
}

func (l *serverLog) handshakes() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bool(nil), l.resumed...)
}

func (l *serverLog) clientSerials() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.clients...)
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// serverConfig returns a server config with its own random ticket keys,
// recording handshakes in log.
func serverConfig(t testing.TB, pki *testutil.PKI, log *serverLog, names ...string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pki.Leaf(t, names...)},
		MinVersion:   tls.VersionTLS12,
	}
	if log != nil {
		cfg.VerifyConnection = log.verify
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		t.Fatal(err)
	}
	cfg.SetSessionTicketKeys([][32]byte{key})
	return cfg
}

// clientConfig trusts pki and speaks at most version.
func clientConfig(pki *testutil.PKI, version uint16) *tls.Config {
	cfg := pki.ClientConfig("")
	cfg.MaxVersion = version
	return cfg
}

// callOnce opens a new gRPC client to addr (with authority, if not ""),
// makes one unary call, closes the client and returns the connection's
// AuthInfo.
func callOnce(t testing.TB, creds grpccreds.TransportCredentials, addr, authority string, extra ...grpc.DialOption) grpccreds.AuthInfo {
	t.Helper()
	ai, err := tryCall(creds, addr, authority, extra...)
	if err != nil {
		t.Fatalf("call to %s: %v", addr, err)
	}
	return ai
}

// tryCall is callOnce that returns its error, for use off the test goroutine.
func tryCall(creds grpccreds.TransportCredentials, addr, authority string, extra ...grpc.DialOption) (grpccreds.AuthInfo, error) {
	if authority != "" {
		extra = append([]grpc.DialOption{grpc.WithAuthority(authority)}, extra...)
	}
	return testutil.CallTLS(creds, addr, extra...)
}

// resumed reports whether a client connection resumed, from either
// credentials' AuthInfo.
func resumed(t testing.TB, ai grpccreds.AuthInfo) bool {
	t.Helper()
	ti, ok := credentials.GRPCTLSInfo(ai)
	if !ok {
		t.Fatalf("AuthInfo is %T, not TLS", ai)
	}
	return ti.State.DidResume
}

// handshakeRecorder is a telemetry.HandshakeObserver that keeps every event.
type handshakeRecorder struct {
	telemetry.Nop
	mu     sync.Mutex
	events []telemetry.HandshakeInfo
}

func (r *handshakeRecorder) Handshake(hi telemetry.HandshakeInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, hi)
}

func (r *handshakeRecorder) all() []telemetry.HandshakeInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]telemetry.HandshakeInfo(nil), r.events...)
}

// newTicketKey returns a random key.
func newTicketKey(t testing.TB) [32]byte {
	t.Helper()
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

// keyFile formats keys in the key file format.
func keyFile(keys ...[32]byte) []byte {
	var b strings.Builder
	b.WriteString("# session ticket keys, first encrypts\n")
	for _, k := range keys {
		b.WriteString(base64.StdEncoding.EncodeToString(k[:]))
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// writeFile writes data to a new file in t's temporary directory.
func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// vipDialer simulates an L4 load balancer: every connection's remote
// address is vip, while connection n really goes to backends[n % len].
func vipDialer(vip string, backends []string) grpc.DialOption {
	var (
		mu sync.Mutex
		n  int
	)
	vipAddr := fakeAddr(vip)
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		mu.Lock()
		target := backends[n%len(backends)]
		n++
		mu.Unlock()
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
		if err != nil {
			return nil, err
		}
		return vipConn{Conn: c, remote: vipAddr}, nil
	})
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

type vipConn struct {
	net.Conn
	remote net.Addr
}

func (c vipConn) RemoteAddr() net.Addr { return c.remote }

// rawHandshake runs one handshake with creds to addr for authority
// (testutil.HandshakeTLS) and reports whether the session resumed.
func rawHandshake(creds grpccreds.TransportCredentials, addr, authority string) (bool, error) {
	_, ai, err := testutil.HandshakeTLS(creds, addr, authority)
	if err != nil {
		return false, err
	}
	ti, ok := credentials.GRPCTLSInfo(ai)
	return ok && ti.State.DidResume, nil
}

// callLoop makes calls with creds to addr, one after the other, in the
// background until stopped or until one fails.
type callLoop struct {
	t    *testing.T
	ok   atomic.Int64 // calls that succeeded
	stop chan struct{}
	errs chan error
	wg   sync.WaitGroup
}

func startCalling(t *testing.T, creds grpccreds.TransportCredentials, addr string) *callLoop {
	l := &callLoop{t: t, stop: make(chan struct{}), errs: make(chan error, 1)}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			if _, err := tryCall(creds, addr, ""); err != nil {
				l.errs <- err
				return
			}
			l.ok.Add(1)
		}
	}()
	return l
}

// progress waits up to limit for n more calls to succeed (or one to fail).
func (l *callLoop) progress(n int64, limit time.Duration, what string) {
	l.t.Helper()
	before := l.ok.Load()
	testutil.Eventually(l.t, limit, func() bool { return l.ok.Load() >= before+n || len(l.errs) > 0 }, "no calls completed after "+what)
}

// end stops the calls and returns the first failure, if a call failed.
func (l *callLoop) end() error {
	close(l.stop)
	l.wg.Wait()
	select {
	case err := <-l.errs:
		return err
	default:
		return nil
	}
}
