package testutil

import (
	"crypto/tls"
	"net"
	"slices"
	"testing"

	grpccreds "google.golang.org/grpc/credentials"
)

// The server records, per handshake, the client's address (the local
// address HandshakeTLS returns), whether it resumed, and the serial of
// the client's certificate, also on resumption; a gRPC client (ALPN h2)
// connects although cfg names no protocol.
func TestTLSServerRecordsWhatClientsPresented(t *testing.T) {
	pki := NewPKI(t, ECDSAP256)
	scfg := pki.ServerConfig(t)
	scfg.ClientAuth = tls.RequireAndVerifyClientCert
	scfg.ClientCAs = pki.Pool
	srv := StartTLSServer(t, scfg)
	if scfg.NextProtos != nil {
		t.Errorf("StartTLSServer changed the caller's NextProtos to %q", scfg.NextProtos)
	}
	for _, tc := range []struct {
		name    string
		version uint16
	}{{"TLS12", tls.VersionTLS12}, {"TLS13", tls.VersionTLS13}} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM := pki.LeafPEM(t)
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			cfg := pki.ClientConfig("localhost")
			cfg.MinVersion, cfg.MaxVersion = tc.version, tc.version
			cfg.Certificates = []tls.Certificate{cert}
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			creds := grpccreds.NewTLS(cfg)
			before := len(srv.Handshakes())
			var want []TLSHandshake
			for i := range 2 {
				local, ai, err := HandshakeTLS(creds, srv.Addr, "localhost")
				if err != nil {
					t.Fatal(err)
				}
				ti := ai.(grpccreds.TLSInfo)
				if ti.State.DidResume != (i == 1) {
					t.Fatalf("handshake %d: DidResume = %v; want %v", i, ti.State.DidResume, i == 1)
				}
				want = append(want, TLSHandshake{Remote: local.String(), Resumed: i == 1,
					PeerSerial: cert.Leaf.SerialNumber.String()})
			}
			if got := srv.Handshakes()[before:]; !slices.Equal(got, want) {
				t.Errorf("Handshakes() = %+v; want %+v", got, want)
			}
		})
	}
	if resumed, total := srv.Counts(); resumed != 2 || total != 4 {
		t.Errorf("Counts() = %d resumed of %d; want 2 of 4", resumed, total)
	}
}

// A client that never closes its connection, or never finishes its
// handshake, cannot hold up the test's end: the cleanup closes both (and
// TestMain's leak check sees no server goroutine left).
func TestTLSServerCleanupClosesOpenConnections(t *testing.T) {
	pki := NewPKI(t, ECDSAP256)
	var open []net.Conn // closed only after the server's cleanup has returned
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	t.Run("server", func(t *testing.T) {
		srv := StartTLSServer(t, pki.ServerConfig(t))
		silent, err := net.Dial("tcp", srv.Addr) // no ClientHello
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, silent)
		c, err := tls.Dial("tcp", srv.Addr, pki.ClientConfig("localhost"))
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		var one [1]byte
		if _, err := c.Read(one[:]); err != nil { // the handshake completed
			t.Fatal(err)
		}
		if _, total := srv.Counts(); total != 1 {
			t.Fatalf("Counts() total = %d; want 1", total)
		}
	})
}
