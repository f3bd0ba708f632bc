package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serverView is what the backends saw, counted on their side so no
// client can flatter itself: TCP connections accepted and TLS handshakes,
// full or resumed.
type serverView struct {
	accepts, full, resumed atomic.Int64
}

func (v *serverView) snapshot() (accepts, full, resumed int64) {
	return v.accepts.Load(), v.full.Load(), v.resumed.Load()
}

// countingListener counts accepted TCP connections.
type countingListener struct {
	net.Listener
	view *serverView
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.view.accepts.Add(1)
	}
	return c, err
}

// startBackends starts n TLS health servers on 127.0.0.1 that share one
// certificate and report into view. stop stops them all.
func startBackends(n int, cert tls.Certificate, view *serverView) (addrs []string, stop func(), err error) {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.DidResume {
				view.resumed.Add(1)
			} else {
				view.full.Add(1)
			}
			return nil
		},
	}
	var servers []*grpc.Server
	stop = func() {
		for _, s := range servers {
			s.Stop()
		}
	}
	for i := 0; i < n; i++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			stop()
			return nil, nil, err
		}
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(countingListener{lis, view})
		servers = append(servers, srv)
		addrs = append(addrs, lis.Addr().String())
	}
	return addrs, stop, nil
}

// selfSigned makes a throwaway certificate for 127.0.0.1 and a pool that
// trusts it, so the demo needs no files.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "grpcreuse demo"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
