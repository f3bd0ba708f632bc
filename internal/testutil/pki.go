package testutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"testing"
	"time"
)

// KeyType selects the key algorithm of generated certificates.
type KeyType int

// Key algorithms for NewPKI.
const (
	ECDSAP256 KeyType = iota
	RSA2048
)

// String names the key type for test and benchmark names.
func (k KeyType) String() string {
	if k == RSA2048 {
		return "RSA2048"
	}
	return "ECDSAP256"
}

// PKI is a throwaway certificate authority for one test.
type PKI struct {
	keyType KeyType
	caCert  *x509.Certificate
	caKey   crypto.Signer
	// Pool trusts the CA; use it as RootCAs (clients) or ClientCAs (servers).
	Pool *x509.CertPool
	// CAPEM is the CA certificate in PEM form.
	CAPEM []byte
}

// NewPKI makes a CA whose certificates use keys of type kt.
func NewPKI(tb testing.TB, kt KeyType) *PKI {
	tb.Helper()
	key := newKey(tb, kt)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: "grpcreuse test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatalf("testutil: create CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testutil: parse CA: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &PKI{keyType: kt, caCert: cert, caKey: key, Pool: pool,
		CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Leaf issues a certificate for the given DNS names plus 127.0.0.1, ::1
// and localhost, usable by servers and clients alike.
func (p *PKI) Leaf(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	certPEM, keyPEM := p.LeafPEM(tb, names...)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatalf("testutil: key pair: %v", err)
	}
	return cert
}

// LeafPEM is Leaf in PEM form, for tests that read certificates from files.
func (p *PKI) LeafPEM(tb testing.TB, names ...string) (certPEM, keyPEM []byte) {
	tb.Helper()
	key := newKey(tb, p.keyType)
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: "grpcreuse test leaf"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     append([]string{"localhost"}, names...),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, key.Public(), p.caKey)
	if err != nil {
		tb.Fatalf("testutil: create leaf: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("testutil: marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// ServerConfig returns a server tls.Config with a fresh leaf certificate.
func (p *PKI) ServerConfig(tb testing.TB, names ...string) *tls.Config {
	tb.Helper()
	return &tls.Config{Certificates: []tls.Certificate{p.Leaf(tb, names...)}, MinVersion: tls.VersionTLS12}
}

// ClientConfig returns a client tls.Config that trusts the CA and expects
// serverName ("" lets gRPC fill it from the target's authority).
func (p *PKI) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: p.Pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
}

func newKey(tb testing.TB, kt KeyType) crypto.Signer {
	tb.Helper()
	var (
		key crypto.Signer
		err error
	)
	if kt == RSA2048 {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		tb.Fatalf("testutil: generate %v key: %v", kt, err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatalf("testutil: serial: %v", err)
	}
	return n
}
