package spiffe_test

import (
	"crypto/tls"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/credentials/spiffe"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

var tlsVersions = []struct {
	name string
	v    uint16
}{
	{"TLS12", tls.VersionTLS12},
	{"TLS13", tls.VersionTLS13},
}

const (
	serverID   = "spiffe://example.org/backend"
	clientID   = "spiffe://example.org/frontend"
	intruderID = "spiffe://example.org/intruder"
)

// fleet is one SPIFFE server (with a ticket-key rotator, as in a fleet)
// and the pieces a test changes: SVID sources, policies and witnesses.
type fleet struct {
	ca                     *testCA
	serverSVID, clientSVID *svidSource
	serverPolicy           *policy // which clients the server accepts
	clientPolicy           *policy // which servers clients accept
	serverSaw              witness
	addr                   string
	version                uint16
}

func newFleet(t *testing.T, version uint16) *fleet {
	t.Helper()
	f := &fleet{ca: newTestCA(t, "example.org"), version: version}
	f.serverSVID = newSVIDSource(f.ca.svid(t, serverID))
	f.clientSVID = newSVIDSource(f.ca.svid(t, clientID))
	f.serverPolicy = newPolicy(tlsconfig.AuthorizeID(spiffeid.RequireFromString(clientID)))
	f.clientPolicy = newPolicy(tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	scfg, err := spiffe.ServerConfig(&tls.Config{MaxVersion: version}, f.serverSVID, f.ca.bundle(), f.serverPolicy.authorize)
	if err != nil {
		t.Fatal(err)
	}
	f.serverSaw.wrap(scfg)
	rot, err := credentials.NewTicketKeyRotator(credentials.WithRotationInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rot.Close() })
	scfg, err = rot.ServerConfig(scfg)
	if err != nil {
		t.Fatal(err)
	}
	f.addr = testutil.StartBackend(t, testutil.BackendOptions{TLS: scfg}).Addr
	return f
}

// client returns credentials.NewTLS credentials over a SPIFFE client
// config presenting src, and the witness of its handshakes.
func (f *fleet) client(t *testing.T, src *svidSource) (grpccreds.TransportCredentials, *witness) {
	t.Helper()
	cfg, err := spiffe.ClientConfig(&tls.Config{MaxVersion: f.version}, src, f.ca.bundle(), f.clientPolicy.authorize)
	if err != nil {
		t.Fatal(err)
	}
	w := &witness{}
	creds, err := credentials.NewTLS(w.wrap(cfg))
	if err != nil {
		t.Fatal(err)
	}
	return creds, w
}

func resumed(t *testing.T, ai grpccreds.AuthInfo) bool {
	t.Helper()
	ti, ok := credentials.GRPCTLSInfo(ai)
	if !ok {
		t.Fatalf("AuthInfo is %T", ai)
	}
	return ti.State.DidResume
}

// Issue 12 (SPIFFE): an authorized SPIFFE ID connects, and later
// connections resume its session through credentials.NewTLS's cache and a
// TicketKeyRotator's keys; the client's AuthInfo names the server's ID.
func TestSPIFFEAuthorizedIDConnectsAndResumes(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			f := newFleet(t, tv.v)
			creds, _ := f.client(t, f.clientSVID)
			for i := range 3 {
				ai, err := tryCall(creds, f.addr)
				if err != nil {
					t.Fatalf("call %d: %v", i+1, err)
				}
				if got := resumed(t, ai); got != (i > 0) {
					t.Fatalf("connection %d resumed = %v; want %v", i+1, got, i > 0)
				}
				ti, _ := credentials.GRPCTLSInfo(ai)
				if ti.SPIFFEID == nil || ti.SPIFFEID.String() != serverID {
					t.Fatalf("connection %d: server SPIFFE ID %v; want %s", i+1, ti.SPIFFEID, serverID)
				}
			}
			want := []bool{false, true, true}
			for i, h := range f.serverSaw.all() {
				if h.err != nil || h.resumed != want[i] {
					t.Fatalf("server handshake %d: resumed %v, err %v; want resumed %v, accepted", i+1, h.resumed, h.err, want[i])
				}
			}
		})
	}
}

// Issue 12 (SPIFFE): an unauthorized SPIFFE ID is refused on a full
// handshake, and on a resumed one: a session made while the policy allowed
// the peer is refused once the policy changes, by the server (client ID
// disallowed) and by the client (server ID disallowed).
func TestSPIFFEUnauthorizedRefusedOnFullAndResumedHandshakes(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			f := newFleet(t, tv.v)

			// Full handshake: an intruder with a valid SVID of the trust
			// domain but an ID the server does not allow.
			intruder, _ := f.client(t, newSVIDSource(f.ca.svid(t, intruderID)))
			if _, err := tryCall(intruder, f.addr); err == nil {
				t.Fatal("the intruder's call succeeded")
			}
			if h := f.serverSaw.last(t); h.resumed || h.err == nil || !strings.Contains(h.err.Error(), `SPIFFE ID "`+intruderID+`" is not authorized`) {
				t.Fatalf("server saw %+v; want a refused full handshake naming the intruder's ID", h)
			}

			// Resumed handshake refused by the server.
			creds, _ := f.client(t, f.clientSVID)
			for i := range 2 {
				ai, err := tryCall(creds, f.addr)
				if err != nil {
					t.Fatal(err)
				}
				if resumed(t, ai) != (i == 1) {
					t.Fatalf("connection %d: resumed %v", i+1, !(i == 1))
				}
			}
			f.serverPolicy.set(tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/someone-else")))
			if _, err := tryCall(creds, f.addr); err == nil {
				t.Fatal("a client whose ID the server no longer allows resumed its session")
			}
			if h := f.serverSaw.last(t); !h.resumed || h.err == nil || !strings.Contains(h.err.Error(), "(resumed: true)") {
				t.Fatalf("server saw %+v; want a refused resumed handshake", h)
			}

			// Resumed handshake refused by the client.
			f.serverPolicy.set(tlsconfig.AuthorizeID(spiffeid.RequireFromString(clientID)))
			creds2, clientSaw2 := f.client(t, f.clientSVID)
			for range 2 {
				if _, err := tryCall(creds2, f.addr); err != nil {
					t.Fatal(err)
				}
			}
			if h := clientSaw2.last(t); !h.resumed || h.err != nil {
				t.Fatalf("client saw %+v; want an accepted resumed handshake before the policy change", h)
			}
			f.clientPolicy.set(tlsconfig.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("other.example")))
			if _, err := tryCall(creds2, f.addr); err == nil {
				t.Fatal("a client resumed a session with a server whose ID it no longer allows")
			}
			if h := clientSaw2.last(t); !h.resumed || h.err == nil || !strings.Contains(h.err.Error(), `server's SPIFFE ID "`+serverID+`" is not authorized (resumed: true)`) {
				t.Fatalf("client saw %+v; want a refused resumed handshake", h)
			}
		})
	}
}

// Issue 12 (SPIFFE): a rotated SVID is used for new connections: after the
// client's SVID rotates, its next connection is a full handshake with the
// new SVID (not a resumption of a session made with the old one) and later
// ones resume with it; after the server's rotates, a new client sees it.
func TestSPIFFERotatedSVIDUsedForNewConnections(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			f := newFleet(t, tv.v)
			creds, _ := f.client(t, f.clientSVID)
			for range 2 {
				if _, err := tryCall(creds, f.addr); err != nil {
					t.Fatal(err)
				}
			}
			oldSerial := f.serverSaw.last(t).serial
			rotated := f.ca.svid(t, clientID)
			f.clientSVID.cur.Store(rotated)
			newSerial := rotated.Certificates[0].SerialNumber.String()
			for i, wantResumed := range []bool{false, true} {
				ai, err := tryCall(creds, f.addr)
				if err != nil {
					t.Fatal(err)
				}
				h := f.serverSaw.last(t)
				if h.serial != newSerial || h.resumed != wantResumed || resumed(t, ai) != wantResumed {
					t.Fatalf("connection %d after rotation: server saw serial %s (old %s, new %s), resumed %v; want the new SVID, resumed %v",
						i+1, h.serial, oldSerial, newSerial, h.resumed, wantResumed)
				}
			}

			// The server's SVID rotates: new connections present it.
			rotatedServer := f.ca.svid(t, serverID)
			f.serverSVID.cur.Store(rotatedServer)
			fresh, _ := f.client(t, f.clientSVID)
			ai, err := tryCall(fresh, f.addr)
			if err != nil {
				t.Fatal(err)
			}
			ti, _ := credentials.GRPCTLSInfo(ai)
			if got, want := ti.State.PeerCertificates[0].SerialNumber.String(), rotatedServer.Certificates[0].SerialNumber.String(); got != want {
				t.Fatalf("new connection got server SVID serial %s; want the rotated %s", got, want)
			}
		})
	}
}

// Bad arguments are refused with errors naming what is wrong.
func TestSPIFFEBadInputs(t *testing.T) {
	ca := newTestCA(t, "example.org")
	src, b, anyID := newSVIDSource(ca.svid(t, clientID)), ca.bundle(), tlsconfig.AuthorizeAny()
	cert := tls.Certificate{}
	for _, tc := range []struct {
		name    string
		run     func() error
		wantErr string
	}{
		{"client nil source", func() error { _, err := spiffe.ClientConfig(nil, nil, b, anyID); return err }, "spiffe: ClientConfig: the X509-SVID source is nil"},
		{"client nil bundle", func() error { _, err := spiffe.ClientConfig(nil, src, nil, anyID); return err }, "spiffe: ClientConfig: the X.509 bundle source is nil"},
		{"client nil authorizer", func() error { _, err := spiffe.ClientConfig(nil, src, b, nil); return err }, "spiffe: ClientConfig: the authorizer is nil"},
		{"client certificates", func() error {
			_, err := spiffe.ClientConfig(&tls.Config{Certificates: []tls.Certificate{cert}}, src, b, anyID)
			return err
		}, "tls.Config.Certificates is set"},
		{"client RootCAs", func() error {
			_, err := spiffe.ClientConfig(testutil.NewPKI(t, testutil.ECDSAP256).ClientConfig(""), src, b, anyID)
			return err
		}, "tls.Config.RootCAs is set"},
		{"server nil authorizer", func() error { _, err := spiffe.ServerConfig(nil, src, b, nil); return err }, "spiffe: ServerConfig: the authorizer is nil"},
		{"server ClientCAs", func() error {
			_, err := spiffe.ServerConfig(&tls.Config{ClientCAs: testutil.NewPKI(t, testutil.ECDSAP256).Pool}, src, b, anyID)
			return err
		}, "tls.Config.ClientCAs is set"},
		{"server GetConfigForClient", func() error {
			_, err := spiffe.ServerConfig(&tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }}, src, b, anyID)
			return err
		}, "tls.Config.GetConfigForClient is set; apply it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v; want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// Only credentials/spiffe brings go-spiffe into the module's import graph.
func TestOnlySPIFFEPackageImportsGoSpiffe(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}`,
		"github.com/grpcreuse/grpcreuse/clientconn", "github.com/grpcreuse/grpcreuse/credentials",
		"github.com/grpcreuse/grpcreuse/balancer", "github.com/grpcreuse/grpcreuse/interceptors",
		"github.com/grpcreuse/grpcreuse/telemetry").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "github.com/spiffe/") {
		t.Fatal("a package other than credentials/spiffe depends on go-spiffe")
	}
}
