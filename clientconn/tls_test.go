package clientconn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/grpcreuse/grpcreuse/clientconn"
	grcreds "github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// tlsBackend is a TLS backend that records, per handshake, whether it
// resumed: the server's own view, which a client cannot fake.
type tlsBackend struct {
	*testutil.Backend
	mu      sync.Mutex
	resumed []bool
}

func startTLSBackend(t *testing.T, pki *testutil.PKI, version uint16, opts ...grpc.ServerOption) *tlsBackend {
	t.Helper()
	tb := &tlsBackend{}
	cfg := pki.ServerConfig(t)
	cfg.MinVersion, cfg.MaxVersion = version, version
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		tb.mu.Lock()
		defer tb.mu.Unlock()
		tb.resumed = append(tb.resumed, cs.DidResume)
		return nil
	}
	tb.Backend = testutil.StartBackend(t, testutil.BackendOptions{TLS: cfg, ServerOptions: opts})
	return tb
}

func (b *tlsBackend) handshakes() []bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]bool(nil), b.resumed...)
}

// connectOnce makes one fresh connection through f (WithMaxIdle(0) closes
// it with its handle), calls once, and reports whether the client saw the
// handshake resume.
func connectOnce(t *testing.T, f *clientconn.Factory, target string, opts ...clientconn.GetOption) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, target, opts...)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	var p peer.Peer
	if _, err := testpb.NewTestServiceClient(c).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Peer(&p)); err != nil {
		t.Fatalf("UnaryCall: %v", err)
	}
	c.Close()
	testutil.Eventually(t, 5*time.Second, func() bool { return f.Stats().Open == 0 }, "connection closed with its handle")
	info, ok := p.AuthInfo.(grcreds.TLSInfo)
	if !ok {
		t.Fatalf("AuthInfo is %T, want credentials.TLSInfo", p.AuthInfo)
	}
	if info.HandshakeDuration <= 0 || info.Resumed != info.State.DidResume {
		t.Errorf("TLSInfo = {Resumed: %v, HandshakeDuration: %v, DidResume: %v}", info.Resumed, info.HandshakeDuration, info.State.DidResume)
	}
	return info.Resumed
}

func TestFactoryResumesTLSSessions(t *testing.T) {
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			pki := testutil.NewPKI(t, testutil.ECDSAP256)
			b := startTLSBackend(t, pki, v.version)
			cache, err := grcreds.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithSessionCache(cache), clientconn.WithMaxIdle(0))
			defer f.Close()
			var client []bool
			for i := 0; i < 5; i++ {
				client = append(client, connectOnce(t, f, b.Addr))
			}
			want := []bool{false, true, true, true, true}
			if got := b.handshakes(); !slices.Equal(got, want) || !slices.Equal(client, want) {
				t.Errorf("resumed per connection: server %v, client %v; want %v", got, client, want)
			}
			if st := cache.Stats(); st.Offered != 4 || st.Resumed != 4 {
				t.Errorf("session cache Stats = %+v, want 4 offered and 4 resumed", st)
			}
		})
	}
}

func TestFactoryKeepsTenantSessionsApart(t *testing.T) {
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			pki := testutil.NewPKI(t, testutil.ECDSAP256)
			b := startTLSBackend(t, pki, v.version)
			f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0))
			defer f.Close()
			a, bt := clientconn.WithTenant("tenant-a"), clientconn.WithTenant("tenant-b")
			connectOnce(t, f, b.Addr, a)  // full
			connectOnce(t, f, b.Addr, a)  // resumes A's session
			connectOnce(t, f, b.Addr, bt) // must not use A's session
			connectOnce(t, f, b.Addr, bt) // resumes B's own
			connectOnce(t, f, b.Addr, a)  // A's again, after B's
			connectOnce(t, f, b.Addr)     // no tenant: its own slot too
			if got, want := b.handshakes(), []bool{false, true, false, true, true, false}; !slices.Equal(got, want) {
				t.Errorf("server saw resumed = %v, want %v (tenant B's and no tenant's first handshakes full)", got, want)
			}
		})
	}
}

func TestFactoryTLSBadInputs(t *testing.T) {
	verifyPeer := &tls.Config{VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return nil }}
	cache, err := grcreds.NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    []clientconn.Option
		wantErr string
	}{
		{name: "VerifyPeerCertificate", opts: []clientconn.Option{clientconn.WithTLS(verifyPeer)}, wantErr: "VerifyConnection"},
		{name: "TLS and creds", opts: []clientconn.Option{clientconn.WithTLS(&tls.Config{}), plaintext}, wantErr: "WithTLS and WithTransportCredentials are both set"},
		{name: "cache without TLS", opts: []clientconn.Option{plaintext, clientconn.WithSessionCache(cache)}, wantErr: "WithSessionCache needs WithTLS"},
		{name: "nil cache", opts: []clientconn.Option{clientconn.WithTLS(&tls.Config{}), clientconn.WithSessionCache(nil)}, wantErr: "WithSessionCache: cache is nil"},
	}
	for _, tt := range tests {
		f, err := clientconn.New(tt.opts...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: New error = %v, want containing %q", tt.name, err, tt.wantErr)
		}
		if f != nil {
			f.Close()
		}
	}
}

// TestTenantCredentialsDoNotAccumulate: credentials of tenants whose
// connections are all gone are dropped, while sessions (kept in the shared
// cache, per tenant) still resume when a tenant comes back.
func TestTenantCredentialsDoNotAccumulate(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	b := startTLSBackend(t, pki, tls.VersionTLS13)
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0))
	defer f.Close()
	for i := 0; i < 20; i++ {
		connectOnce(t, f, b.Addr, clientconn.WithTenant(fmt.Sprintf("tenant-%d", i)))
	}
	if n := clientconn.TenantCredsForTest(f); n > 1 {
		t.Errorf("Factory keeps credentials for %d tenants after all their connections closed, want at most 1", n)
	}
	if !connectOnce(t, f, b.Addr, clientconn.WithTenant("tenant-3")) {
		t.Errorf("a returning tenant did not resume its session")
	}
}
