package spiffe_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/credentials/spiffe"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// BenchmarkSPIFFEHandshake compares, in one run over loopback TLS 1.3, a
// client handshake with this package's configs (authorization in
// VerifyConnection, so sessions can be resumed) resumed and full, with
// go-spiffe's own tlsconfig.MTLSClientConfig, whose VerifyPeerCertificate
// authorization forces a full handshake every time if it is to hold.
//
//	go test -run '^$' -bench BenchmarkSPIFFEHandshake -benchmem -count 3 ./credentials/spiffe/
func BenchmarkSPIFFEHandshake(b *testing.B) {
	ca := newTestCA(b, "example.org")
	serverSrc, clientSrc := newSVIDSource(ca.svid(b, serverID)), newSVIDSource(ca.svid(b, clientID))
	allowClient := tlsconfig.AuthorizeID(spiffeid.RequireFromString(clientID))
	allowServer := tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID))
	scfg, err := spiffe.ServerConfig(&tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}, serverSrc, ca.bundle(), allowClient)
	if err != nil {
		b.Fatal(err)
	}
	addr := testutil.StartTLSServer(b, scfg).Addr

	ours := func(disableTickets bool) grpccreds.TransportCredentials {
		cfg, err := spiffe.ClientConfig(&tls.Config{SessionTicketsDisabled: disableTickets}, clientSrc, ca.bundle(), allowServer)
		if err != nil {
			b.Fatal(err)
		}
		creds, err := credentials.NewTLS(cfg)
		if err != nil {
			b.Fatal(err)
		}
		return creds
	}
	goSpiffe := tlsconfig.MTLSClientConfig(clientSrc, ca.bundle(), allowServer)
	goSpiffe.SessionTicketsDisabled = true // VerifyPeerCertificate is skipped on resumption

	for _, bc := range []struct {
		name string
		run  func() error
	}{
		{"grpcreuse-spiffe/resumed", credsHandshake(addr, ours(false), true)},
		{"grpcreuse-spiffe/full", credsHandshake(addr, ours(true), false)},
		{"go-spiffe-tlsconfig/full", func() error {
			raw, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			c := tls.Client(raw, goSpiffe)
			defer c.Close()
			if err := c.Handshake(); err != nil {
				return err
			}
			var one [1]byte
			_, err = c.Read(one[:])
			return err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if err := bc.run(); err != nil { // warm-up: the first session
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := bc.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// credsHandshake makes one client handshake with creds
// (testutil.HandshakeTLS) and checks that it resumed (or not) as the row
// claims.
func credsHandshake(addr string, creds grpccreds.TransportCredentials, wantResumed bool) func() error {
	first := true
	return func() error {
		_, ai, err := testutil.HandshakeTLS(creds, addr, "backend")
		if err != nil {
			return err
		}
		if ti, _ := credentials.GRPCTLSInfo(ai); !first && ti.State.DidResume != wantResumed {
			return fmt.Errorf("handshake resumed = %v; want %v", ti.State.DidResume, wantResumed)
		}
		first = false
		return nil
	}
}
