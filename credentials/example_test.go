package credentials_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/grpcreuse/grpcreuse/credentials"
)

// ExampleNewTLS starts a TLS gRPC server on loopback whose ticket keys come
// from a TicketKeyRotator, and connects to it three times with one set of
// client credentials: the second and third connections resume the first
// one's session, as their AuthInfo shows.
func ExampleNewTLS() {
	serverTLS, clientTLS, err := exampleTLSConfigs()
	if err != nil {
		fmt.Println(err)
		return
	}

	// Server: ticket keys rotate daily; one creds type serves both sides.
	rotator, err := credentials.NewTicketKeyRotator(credentials.WithRotationInterval(24 * time.Hour))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rotator.Close()
	serverTLS, err = rotator.ServerConfig(serverTLS)
	if err != nil {
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

	// Client: one bounded cache for the process, a view per tenant.
	cache, err := credentials.NewSessionCache(credentials.WithCapacity(256), credentials.WithTTL(time.Hour))
	if err != nil {
		fmt.Println(err)
		return
	}
	creds, err := credentials.NewTLS(clientTLS, credentials.WithSessionCache(cache), credentials.WithTenant("billing"))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 1; i <= 3; i++ {
		cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			fmt.Println(err)
			return
		}
		var p peer.Peer
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cc.Close()
		if err != nil {
			fmt.Println(err)
			return
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			fmt.Printf("unexpected AuthInfo %T\n", p.AuthInfo)
			return
		}
		fmt.Printf("connection %d: resumed=%v handshake measured=%v\n", i, info.Resumed, info.HandshakeDuration > 0)
	}
	st := cache.Stats()
	fmt.Printf("session cache: %d offered, %d resumed, %d misses, %d held\n", st.Offered, st.Resumed, st.Misses, st.Len)
	// Output:
	// connection 1: resumed=false handshake measured=true
	// connection 2: resumed=true handshake measured=true
	// connection 3: resumed=true handshake measured=true
	// session cache: 2 offered, 2 resumed, 1 misses, 1 held
}

// ExampleSessionCache_ForTenant shows that a session stored for one tenant
// is not offered to another.
func ExampleSessionCache_ForTenant() {
	cache, err := credentials.NewSessionCache(credentials.WithCapacity(2))
	if err != nil {
		fmt.Println(err)
		return
	}
	cache.ForTenant("a").Put("backend.example", new(tls.ClientSessionState))
	_, hitA := cache.ForTenant("a").Get("backend.example")
	_, hitB := cache.ForTenant("b").Get("backend.example")
	fmt.Println("tenant a:", hitA, "tenant b:", hitB)
	st := cache.Stats()
	fmt.Printf("offered %d, misses %d, stored %d, held %d\n", st.Offered, st.Misses, st.Puts, st.Len)
	// Output:
	// tenant a: true tenant b: false
	// offered 1, misses 1, stored 1, held 1
}

// ExampleServerHandshakeRecorder observes a server's TLS handshakes: of
// three connections from one client, the first is a full handshake and the
// next two resume its session. A debug page would show the snapshot.
func ExampleServerHandshakeRecorder() {
	serverTLS, clientTLS, err := exampleTLSConfigs()
	if err != nil {
		fmt.Println(err)
		return
	}
	handshakes := credentials.NewServerHandshakeRecorder()
	serverCreds, err := credentials.NewTLS(serverTLS, credentials.WithServerHandshakeObserver(handshakes))
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

	clientCreds, err := credentials.NewTLS(clientTLS)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
		if err != nil {
			fmt.Println(err)
			return
		}
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cc.Close()
		if err != nil {
			fmt.Println(err)
			return
		}
	}
	for _, s := range handshakes.Snapshot() {
		fmt.Printf("server %v: %d full, %d resumed (%.0f%%), %d failed, p50 measured: %v\n",
			s.Server == lis.Addr().String(), s.Full, s.Resumed, 100*s.ResumedShare, s.Failed, s.FullP50 > 0)
	}
	// Output:
	// server true: 1 full, 2 resumed (67%), 0 failed, p50 measured: true
}

// exampleTLSConfigs makes a throwaway self-signed certificate for
// 127.0.0.1 and returns a server config using it and a client config
// trusting it.
func exampleTLSConfigs() (server, client *tls.Config, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "example"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}}}
	client = &tls.Config{RootCAs: pool}
	return server, client, nil
}
