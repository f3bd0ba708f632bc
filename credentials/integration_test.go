//lint:file-ignore SA1019 tests that Info and OverrideServerName behave as grpc-go's TLS credentials do

package credentials_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// The 2nd..Nth connection to a backend resumes, through plain
// grpc.NewClient with NewTLS; client, server and observer all agree.
func TestResumesThroughGRPCNewClient(t *testing.T) {
	const conns = 5
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &slog)})
			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			obs := &handshakeRecorder{}
			creds, err := credentials.NewTLS(clientConfig(pki, tv.v),
				credentials.WithSessionCache(cache), credentials.WithHandshakeObserver(obs))
			if err != nil {
				t.Fatal(err)
			}
			for i := range conns {
				ai := callOnce(t, creds, b.Addr, "")
				info, ok := ai.(credentials.TLSInfo)
				if !ok {
					t.Fatalf("connection %d: AuthInfo is %T; want credentials.TLSInfo", i+1, ai)
				}
				if want := i > 0; info.Resumed != want || info.State.DidResume != want {
					t.Errorf("connection %d: Resumed = %v, State.DidResume = %v; want %v", i+1, info.Resumed, info.State.DidResume, want)
				}
				if info.HandshakeDuration <= 0 {
					t.Errorf("connection %d: HandshakeDuration = %v; want > 0", i+1, info.HandshakeDuration)
				}
				if info.State.Version != tv.v {
					t.Errorf("connection %d: version %x; want %x", i+1, info.State.Version, tv.v)
				}
				if info.AuthType() != "tls" {
					t.Errorf("AuthType() = %q; want tls", info.AuthType())
				}
			}
			if got, want := slog.handshakes(), []bool{false, true, true, true, true}; !slices.Equal(got, want) {
				t.Errorf("server saw DidResume %v; want %v", got, want)
			}
			if got := b.Listener.Accepts(); got != conns {
				t.Errorf("server accepted %d connections; want %d", got, conns)
			}
			if st := cache.Stats(); st.Offered != conns-1 || st.Resumed != conns-1 || st.NotResumed != 0 {
				t.Errorf("cache Stats() = %+v; want %d offered and resumed", st, conns-1)
			}
			events := obs.all()
			if len(events) != conns {
				t.Fatalf("observer saw %d handshakes; want %d", len(events), conns)
			}
			for i, e := range events {
				if e.Resumed != (i > 0) || e.Err != nil || e.Version != tv.v || e.Addr != b.Addr ||
					e.Authority != "127.0.0.1" || e.Duration <= 0 {
					t.Errorf("handshake event %d = %+v", i+1, e)
				}
			}
		})
	}
}

// Three backends behind one server name, each with its own ticket keys:
// with NewTLS every backend resumes its own sessions; with grpc's
// credentials and the standard LRU cache, keyed by server name only, the
// client always offers the previous backend's ticket and never resumes.
func TestThreeBackendsBehindOneName(t *testing.T) {
	const rounds = 4 // connections go 0,1,2,0,1,2,...
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			logs := make([]*serverLog, 3)
			addrs := make([]string, 3)
			for i := range logs {
				logs[i] = &serverLog{}
				addrs[i] = testutil.StartBackend(t, testutil.BackendOptions{
					TLS: serverConfig(t, pki, logs[i], "backend.test")}).Addr
			}
			serverResumed := func() int {
				n := 0
				for _, l := range logs {
					n += countTrue(l.handshakes())
				}
				return n
			}
			run := func(creds grpccreds.TransportCredentials) (clientResumed int) {
				for range rounds {
					for _, addr := range addrs {
						if resumed(t, callOnce(t, creds, addr, "backend.test")) {
							clientResumed++
						}
					}
				}
				return clientResumed
			}

			std := clientConfig(pki, tv.v)
			std.ClientSessionCache = tls.NewLRUClientSessionCache(64)
			if got := run(grpccreds.NewTLS(std)); got != 0 {
				t.Errorf("standard cache: %d of %d connections resumed; want 0", got, 3*rounds)
			}
			if got := serverResumed(); got != 0 {
				t.Errorf("standard cache: servers saw %d resumptions; want 0", got)
			}

			ours, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			want := 3 * (rounds - 1) // all but the first connection to each backend
			if got := run(ours); got != want {
				t.Errorf("NewTLS: %d of %d connections resumed; want %d", got, 3*rounds, want)
			}
			if got := serverResumed(); got != want {
				t.Errorf("NewTLS: servers saw %d resumptions; want %d", got, want)
			}
		})
	}
}

// Tenant A's session is never used for tenant B, even with one shared
// cache: the server sees B's first handshake as full.
func TestTenantSessionsAreIsolated(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &slog)})
			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			credsFor := func(tenant string) grpccreds.TransportCredentials {
				c, err := credentials.NewTLS(clientConfig(pki, tv.v),
					credentials.WithSessionCache(cache), credentials.WithTenant(tenant))
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			a, bb := credsFor("a"), credsFor("b")
			callOnce(t, a, b.Addr, "")  // A: full
			callOnce(t, a, b.Addr, "")  // A: resumed
			callOnce(t, bb, b.Addr, "") // B: must be full
			callOnce(t, bb, b.Addr, "") // B: resumes its own
			callOnce(t, credsFor("a"), b.Addr, "")
			if got, want := slog.handshakes(), []bool{false, true, false, true, true}; !slices.Equal(got, want) {
				t.Fatalf("server saw DidResume %v; want %v (A full, A resumed, B full, B resumed, A resumed)", got, want)
			}
		})
	}
}

// A session made with one client certificate is never resumed by
// credentials presenting another, even in the same tenant of one cache: the
// server sees the second certificate in a full handshake.
func TestClientIdentitiesAreIsolated(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			var slog serverLog
			scfg := serverConfig(t, pki, &slog)
			scfg.ClientAuth = tls.RequireAndVerifyClientCert
			scfg.ClientCAs = pki.Pool
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: scfg})
			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			credsWith := func(cert tls.Certificate) grpccreds.TransportCredentials {
				cfg := clientConfig(pki, tv.v)
				cfg.Certificates = []tls.Certificate{cert}
				c, err := credentials.NewTLS(cfg, credentials.WithSessionCache(cache))
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			cert1, cert2 := pki.Leaf(t), pki.Leaf(t)
			callOnce(t, credsWith(cert1), b.Addr, "")
			callOnce(t, credsWith(cert1), b.Addr, "") // same certificate, new credentials: resumes
			callOnce(t, credsWith(cert2), b.Addr, "") // other certificate: full
			if got, want := slog.handshakes(), []bool{false, true, false}; !slices.Equal(got, want) {
				t.Fatalf("server saw DidResume %v; want %v", got, want)
			}
			serials := slog.clientSerials()
			if serials[0] != cert1.Leaf.SerialNumber.String() || serials[2] != cert2.Leaf.SerialNumber.String() {
				t.Fatalf("server saw client serials %v; want cert1 %v first and cert2 %v third",
					serials, cert1.Leaf.SerialNumber, cert2.Leaf.SerialNumber)
			}
		})
	}
}

// A failing handshake is reported with its error and fails the call.
func TestHandshakeObserverSeesFailures(t *testing.T) {
	pki, other := testutil.NewPKI(t, testutil.ECDSAP256), testutil.NewPKI(t, testutil.ECDSAP256)
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, nil)})
	obs := &handshakeRecorder{}
	creds, err := credentials.NewTLS(other.ClientConfig(""), credentials.WithHandshakeObserver(obs),
		credentials.WithTenant("t1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tryCall(creds, b.Addr, ""); err == nil {
		t.Fatal("call to a server with an untrusted certificate succeeded")
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return len(obs.all()) > 0 }, "no handshake reported")
	e := obs.all()[0]
	var uae x509.UnknownAuthorityError
	if e.Err == nil || !errors.As(e.Err, &uae) || e.Tenant != "t1" || e.Addr != b.Addr || e.Resumed {
		t.Fatalf("handshake event = %+v; want a failed, not resumed handshake of tenant t1 to %s with an unknown-authority error", e, b.Addr)
	}
}

// NewTLS serves the server side too, and its AuthInfo there stays grpc's
// own credentials.TLSInfo, so grpc/authz and similar code keep working.
func TestServerHandshakeKeepsGRPCTLSInfo(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	screds, err := credentials.NewTLS(pki.ServerConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	authInfos := make(chan grpccreds.AuthInfo, 4)
	b := testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: []grpc.ServerOption{grpc.Creds(screds)},
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if p, ok := peer.FromContext(ctx); ok {
				authInfos <- p.AuthInfo
			}
			return &testpb.SimpleResponse{}, nil
		},
	})
	ccreds, err := credentials.NewTLS(pki.ClientConfig(""))
	if err != nil {
		t.Fatal(err)
	}
	callOnce(t, ccreds, b.Addr, "")
	callOnce(t, ccreds, b.Addr, "")
	for i, wantResumed := range []bool{false, true} {
		ai := <-authInfos
		ti, ok := ai.(grpccreds.TLSInfo)
		if !ok {
			t.Fatalf("server AuthInfo %d is %T; want grpc credentials.TLSInfo", i+1, ai)
		}
		if ti.State.DidResume != wantResumed {
			t.Errorf("server connection %d DidResume = %v; want %v", i+1, ti.State.DidResume, wantResumed)
		}
	}
}

func TestGRPCTLSInfo(t *testing.T) {
	g := grpccreds.TLSInfo{State: tls.ConnectionState{ServerName: "x"}}
	ours := credentials.TLSInfo{TLSInfo: g, Resumed: true}
	for _, tc := range []struct {
		name string
		ai   grpccreds.AuthInfo
		ok   bool
	}{
		{"ours", ours, true},
		{"ours pointer", &ours, true},
		{"grpc", g, true},
		{"grpc pointer", &g, true},
		{"nil ours pointer", (*credentials.TLSInfo)(nil), false},
		{"nil", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := credentials.GRPCTLSInfo(tc.ai)
			if ok != tc.ok || (ok && got.State.ServerName != "x") {
				t.Fatalf("GRPCTLSInfo(%T) = %+v, %v; want ok %v", tc.ai, got.State.ServerName, ok, tc.ok)
			}
		})
	}
}

// A clone shares the original's sessions; Info names the protocol and the
// configured server name.
func TestCloneSharesSessions(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	var slog serverLog
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &slog)})
	creds, err := credentials.NewTLS(pki.ClientConfig("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if info := creds.Info(); info.SecurityProtocol != "tls" || info.ServerName != "127.0.0.1" {
		t.Fatalf("Info() = %+v", info)
	}
	callOnce(t, creds, b.Addr, "")
	clone := creds.Clone()
	if !resumed(t, callOnce(t, clone, b.Addr, "")) {
		t.Fatal("clone did not resume the original's session")
	}
	if err := clone.OverrideServerName("localhost"); err != nil {
		t.Fatal(err)
	}
	if creds.Info().ServerName != "127.0.0.1" || clone.Info().ServerName != "localhost" {
		t.Fatalf("OverrideServerName on the clone changed the original: %q, clone %q", creds.Info().ServerName, clone.Info().ServerName)
	}
}
