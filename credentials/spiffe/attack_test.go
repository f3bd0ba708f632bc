package spiffe_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/grpcreuse/grpcreuse/credentials/spiffe"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// mint issues a leaf signed by ca with the given URI SANs, validity and
// CA flag, and wraps it as an X509-SVID without validating it: what a
// hostile or broken workload could present.
func (ca *testCA) mint(t *testing.T, uris []string, notAfter time.Time, isCA bool) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(clientID), Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// Hostile clients present SVIDs that must not pass: the server refuses each
// on the full handshake with an error that says why, and no session is
// made that could be resumed.
func TestSPIFFEHostileClientSVIDsRefused(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			f := newFleet(t, tv.v)
			other := newTestCA(t, "example.org") // same trust domain name, not in the bundle
			foreign := newTestCA(t, "other.org")
			hour := time.Now().Add(time.Hour)
			for _, tc := range []struct {
				name    string
				svid    *x509svid.SVID
				wantErr string
			}{
				{"chain not to the bundle", other.mint(t, []string{clientID}, hour, false), "x509svid: could not verify leaf certificate"},
				{"no URI SAN", f.ca.mint(t, nil, hour, false), "certificate contains no URI SAN"},
				{"two URI SANs", f.ca.mint(t, []string{clientID, intruderID}, hour, false), "certificate contains more than one URI SAN"},
				{"trust domain not in the bundle", foreign.mint(t, []string{"spiffe://other.org/frontend"}, hour, false), `no X.509 bundle found for trust domain: "other.org"`},
				{"a CA as leaf", f.ca.mint(t, []string{clientID}, hour, true), "leaf certificate with CA flag set to true"},
				{"expired", f.ca.mint(t, []string{clientID}, time.Now().Add(-time.Hour), false), "certificate has expired"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					creds, _ := f.client(t, newSVIDSource(tc.svid))
					for i := range 2 { // the second proves no session was kept
						if _, err := tryCall(creds, f.addr); err == nil {
							t.Fatalf("call %d with a hostile SVID succeeded", i+1)
						}
						h := f.serverSaw.last(t)
						if h.resumed || h.err == nil || !strings.Contains(h.err.Error(), tc.wantErr) {
							t.Fatalf("call %d: server saw %+v; want a refused full handshake containing %q", i+1, h, tc.wantErr)
						}
					}
				})
			}
		})
	}
}

// Hostile servers present SVIDs that must not pass: the client refuses each
// on the full handshake with an error that says why, and keeps no session.
func TestSPIFFEHostileServerSVIDsRefused(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			f := newFleet(t, tv.v)
			other := newTestCA(t, "example.org")
			hour := time.Now().Add(time.Hour)
			for _, tc := range []struct {
				name    string
				svid    *x509svid.SVID
				wantErr string
			}{
				{"chain not to the bundle", other.mint(t, []string{serverID}, hour, false), "x509svid: could not verify leaf certificate"},
				{"no URI SAN", f.ca.mint(t, nil, hour, false), "certificate contains no URI SAN"},
				{"two URI SANs", f.ca.mint(t, []string{serverID, intruderID}, hour, false), "certificate contains more than one URI SAN"},
				{"another ID", f.ca.mint(t, []string{intruderID}, hour, false), `SPIFFE ID "` + intruderID + `" is not authorized`},
			} {
				t.Run(tc.name, func(t *testing.T) {
					scfg, err := spiffe.ServerConfig(&tls.Config{MaxVersion: tv.v}, newSVIDSource(tc.svid), f.ca.bundle(), tlsconfig.AuthorizeAny())
					if err != nil {
						t.Fatal(err)
					}
					addr := testutil.StartBackend(t, testutil.BackendOptions{TLS: scfg}).Addr
					creds, saw := f.client(t, f.clientSVID)
					for i := range 2 {
						if _, err := tryCall(creds, addr); err == nil {
							t.Fatalf("call %d to a hostile server succeeded", i+1)
						}
						h := saw.last(t)
						if h.resumed || h.err == nil || !strings.Contains(h.err.Error(), tc.wantErr) {
							t.Fatalf("call %d: client saw %+v; want a refused full handshake containing %q", i+1, h, tc.wantErr)
						}
					}
				})
			}
		})
	}
}
