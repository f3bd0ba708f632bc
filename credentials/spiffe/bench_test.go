package spiffe_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/credentials/spiffe"
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
	addr := startHandshakeServer(b, scfg)

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

// credsHandshake makes one client handshake with creds and checks that it
// resumed (or not) as the row claims.
func credsHandshake(addr string, creds grpccreds.TransportCredentials, wantResumed bool) func() error {
	first := true
	return func() error {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, ai, err := creds.ClientHandshake(ctx, "backend", raw)
		if err != nil {
			raw.Close()
			return err
		}
		defer conn.Close()
		if ti, _ := credentials.GRPCTLSInfo(ai); !first && ti.State.DidResume != wantResumed {
			return fmt.Errorf("handshake resumed = %v; want %v", ti.State.DidResume, wantResumed)
		}
		first = false
		var one [1]byte
		_, err = conn.Read(one[:]) // the server's byte; TLS 1.3 tickets arrive before it
		return err
	}
}

// startHandshakeServer accepts TLS connections with cfg, writes one byte
// on each and waits for the client to close.
func startHandshakeServer(tb testing.TB, cfg *tls.Config) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			raw, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := tls.Server(raw, cfg)
				defer c.Close()
				if _, err := c.Write([]byte{1}); err != nil {
					return
				}
				var buf [16]byte
				for {
					if _, err := c.Read(buf[:]); err != nil {
						return
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() { lis.Close(); wg.Wait() })
	return lis.Addr().String()
}
