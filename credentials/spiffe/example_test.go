package spiffe_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/credentials/spiffe"
)

// ExampleServerConfig runs a gRPC server with a SPIFFE identity on
// loopback and connects to it three times with one set of client
// credentials. Each side authorizes the other's SPIFFE ID on every
// handshake; the second and third connections resume the first one's
// session. In production the SVIDs and bundle come from a
// workloadapi.X509Source (SPIRE); here a throwaway CA mints them.
func ExampleServerConfig() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	backendID := spiffeid.RequireFromPath(td, "/backend")
	frontendID := spiffeid.RequireFromPath(td, "/frontend")
	bundle, backendSVID, frontendSVID, err := exampleSVIDs(td, backendID, frontendID)
	if err != nil {
		fmt.Println(err)
		return
	}

	// Server: accepts only the frontend; ticket keys rotate daily.
	serverTLS, err := spiffe.ServerConfig(nil, backendSVID, bundle, tlsconfig.AuthorizeID(frontendID))
	if err != nil {
		fmt.Println(err)
		return
	}
	rotator, err := credentials.NewTicketKeyRotator(credentials.WithRotationInterval(24 * time.Hour))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rotator.Close()
	if serverTLS, err = rotator.ServerConfig(serverTLS); err != nil {
		fmt.Println(err)
		return
	}
	serverCreds, err := credentials.NewTLS(serverTLS)
	if err != nil {
		fmt.Println(err)
		return
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := grpc.NewServer(grpc.Creds(serverCreds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); <-served }()

	// Client: accepts only the backend, whatever the host name.
	clientTLS, err := spiffe.ClientConfig(nil, frontendSVID, bundle, tlsconfig.AuthorizeID(backendID))
	if err != nil {
		fmt.Println(err)
		return
	}
	clientCreds, err := credentials.NewTLS(clientTLS)
	if err != nil {
		fmt.Println(err)
		return
	}
	for i := range 3 {
		cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
		if err != nil {
			fmt.Println(err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var p peer.Peer
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cancel()
		cc.Close()
		if err != nil {
			fmt.Println(err)
			return
		}
		info, ok := credentials.GRPCTLSInfo(p.AuthInfo)
		if !ok {
			fmt.Println("not TLS")
			return
		}
		fmt.Printf("connection %d: %v from %v, resumed %v\n", i+1, resp.GetStatus(), info.SPIFFEID, info.State.DidResume)
	}
	// Output:
	// connection 1: SERVING from spiffe://example.org/backend, resumed false
	// connection 2: SERVING from spiffe://example.org/backend, resumed true
	// connection 3: SERVING from spiffe://example.org/backend, resumed true
}

// exampleSVIDs mints a CA for td and an X509-SVID for each of two IDs.
func exampleSVIDs(td spiffeid.TrustDomain, a, b spiffeid.ID) (*x509bundle.Bundle, *x509svid.SVID, *x509svid.SVID, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), URIs: []*url.URL{td.ID().URL()},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	mint := func(id spiffeid.ID, serial int64) (*x509svid.SVID, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), URIs: []*url.URL{id.URL()},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			return nil, err
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: crypto.Signer(key)}, nil
	}
	sa, errA := mint(a, 2)
	sb, errB := mint(b, 3)
	if err := errors.Join(errA, errB); err != nil {
		return nil, nil, nil, err
	}
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{ca}), sa, sb, nil
}
