package spiffe_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// testCA mints X509-SVIDs for one trust domain, as SPIRE would.
type testCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tdID := spiffeid.RequireTrustDomainFromString(td)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "test SPIFFE CA " + td},
		URIs:                  []*url.URL{tdID.ID().URL()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{td: tdID, cert: cert, key: key}
}

func (ca *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// svid mints an X509-SVID for id (a spiffe:// URI): one URI SAN, no DNS
// names, a leaf key usable by clients and servers.
func (ca *testCA) svid(t testing.TB, id string) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		URIs:         []*url.URL{spiffeid.RequireFromString(id).URL()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// svidSource is an x509svid.Source whose SVID a test rotates, as a
// workloadapi.X509Source does when SPIRE pushes a new one.
type svidSource struct{ cur atomic.Pointer[x509svid.SVID] }

func newSVIDSource(s *x509svid.SVID) *svidSource {
	src := &svidSource{}
	src.cur.Store(s)
	return src
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.cur.Load(), nil }

// policy is an authorizer whose rule a test changes between handshakes.
type policy struct {
	cur atomic.Pointer[tlsconfig.Authorizer]
}

func newPolicy(a tlsconfig.Authorizer) *policy {
	p := &policy{}
	p.set(a)
	return p
}

func (p *policy) set(a tlsconfig.Authorizer) { p.cur.Store(&a) }

func (p *policy) authorize(id spiffeid.ID, chains [][]*x509.Certificate) error {
	return (*p.cur.Load())(id, chains)
}

// handshake is what one side's VerifyConnection saw and answered.
type handshake struct {
	resumed bool
	serial  string
	err     error
}

// witness wraps a finished config's VerifyConnection (the SPIFFE check)
// and records every handshake and its verdict: the test's proof that a
// refusal happened on a resumed handshake.
type witness struct {
	mu   sync.Mutex
	seen []handshake
}

func (w *witness) wrap(cfg *tls.Config) *tls.Config {
	inner := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := inner(cs)
		h := handshake{resumed: cs.DidResume, err: err}
		if len(cs.PeerCertificates) > 0 {
			h.serial = cs.PeerCertificates[0].SerialNumber.String()
		}
		w.mu.Lock()
		w.seen = append(w.seen, h)
		w.mu.Unlock()
		return err
	}
	return cfg
}

func (w *witness) all() []handshake {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]handshake(nil), w.seen...)
}

func (w *witness) last(t testing.TB) handshake {
	t.Helper()
	all := w.all()
	if len(all) == 0 {
		t.Fatal("no handshake seen")
	}
	return all[len(all)-1]
}

// tryCall makes one call on a new client: one handshake (testutil.CallTLS).
func tryCall(creds grpccreds.TransportCredentials, addr string) (grpccreds.AuthInfo, error) {
	return testutil.CallTLS(creds, addr)
}
