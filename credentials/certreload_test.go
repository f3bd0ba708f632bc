package credentials_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

func pemSerial(t testing.TB, certPEM []byte) string {
	t.Helper()
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

// writePair writes a certificate and key into dir atomically.
func writePair(t testing.TB, dir string, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	testutil.WriteFileAtomic(t, certFile, certPEM)
	testutil.WriteFileAtomic(t, keyFile, keyPEM)
	return certFile, keyFile
}

// A server certificate reloads from files; a bad pair keeps the last good
// one serving and is reported once.
func TestCertificateReloaderServer(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	dir := t.TempDir()
	cert1, key1 := pki.LeafPEM(t)
	certFile, keyFile := writePair(t, dir, cert1, key1)
	var (
		mu       sync.Mutex
		reported []error
	)
	ticks := make(chan time.Time)
	rel, err := credentials.NewCertificateReloader(certFile, keyFile, credentials.WithTickChannel(ticks),
		credentials.WithErrorHandler(func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }))
	if err != nil {
		t.Fatal(err)
	}
	defer rel.Close()
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: &tls.Config{GetCertificate: rel.GetCertificate}})

	ccfg := pki.ClientConfig("")
	ccfg.SessionTicketsDisabled = true // every handshake full, so every one shows the server certificate
	creds, err := credentials.NewTLS(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	serverSerial := func() string {
		ti, _ := credentials.GRPCTLSInfo(callOnce(t, creds, b.Addr, ""))
		return ti.State.PeerCertificates[0].SerialNumber.String()
	}
	if got, want := serverSerial(), pemSerial(t, cert1); got != want {
		t.Fatalf("server certificate serial %s; want %s", got, want)
	}

	cert2, key2 := pki.LeafPEM(t)
	writePair(t, dir, cert2, key2)
	ticks <- time.Now() // the background loop reloads
	testutil.Eventually(t, 5*time.Second, func() bool {
		c, _ := rel.GetCertificate(nil)
		return c.Leaf.SerialNumber.String() == pemSerial(t, cert2)
	}, "new certificate not loaded on tick")
	if got, want := serverSerial(), pemSerial(t, cert2); got != want {
		t.Fatalf("after reload, server certificate serial %s; want %s", got, want)
	}

	// A certificate whose key does not match, then an unreadable file.
	cert3, _ := pki.LeafPEM(t)
	testutil.WriteFileAtomic(t, certFile, cert3)
	for range 2 {
		if err := rel.Reload(); err == nil || !strings.Contains(err.Error(), "private key does not match public key") {
			t.Fatalf("Reload() = %v; want a key mismatch error", err)
		}
	}
	if err := rel.Err(); err == nil {
		t.Fatal("Err() = nil after a failed reload")
	}
	if got, want := serverSerial(), pemSerial(t, cert2); got != want {
		t.Fatalf("after a bad reload, server certificate serial %s; want the last good %s", got, want)
	}
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	if err := rel.Reload(); err == nil || !strings.Contains(err.Error(), "credentials: certificate file: open") {
		t.Fatalf("Reload() = %v; want a missing file error", err)
	}
	mu.Lock()
	n := len(reported)
	mu.Unlock()
	if n != 2 {
		t.Fatalf("error handler called %d times; want 2 (once per distinct error)", n)
	}

	// Good files again: the error clears.
	writePair(t, dir, cert1, key1)
	if err := rel.Reload(); err != nil {
		t.Fatal(err)
	}
	if rel.Err() != nil {
		t.Fatalf("Err() = %v after a good reload", rel.Err())
	}
	if err := rel.Close(); err != nil {
		t.Fatal(err)
	}
}

// A client certificate (mTLS) reloads from files, polled by the real timer.
func TestCertificateReloaderClient(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	dir := t.TempDir()
	cert1, key1 := pki.LeafPEM(t)
	certFile, keyFile := writePair(t, dir, cert1, key1)
	rel, err := credentials.NewCertificateReloader(certFile, keyFile, credentials.WithPollInterval(2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer rel.Close()

	var slog serverLog
	scfg := serverConfig(t, pki, &slog)
	scfg.ClientAuth = tls.RequireAndVerifyClientCert
	scfg.ClientCAs = pki.Pool
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: scfg})

	ccfg := pki.ClientConfig("")
	ccfg.GetClientCertificate = rel.GetClientCertificate
	ccfg.SessionTicketsDisabled = true
	creds, err := credentials.NewTLS(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	callOnce(t, creds, b.Addr, "")
	cert2, key2 := pki.LeafPEM(t)
	writePair(t, dir, cert2, key2)
	testutil.Eventually(t, 5*time.Second, func() bool {
		c, _ := rel.GetClientCertificate(nil)
		return c.Leaf.SerialNumber.String() == pemSerial(t, cert2)
	}, "new client certificate not picked up by polling")
	callOnce(t, creds, b.Addr, "")
	if got, want := slog.clientSerials(), []string{pemSerial(t, cert1), pemSerial(t, cert2)}; !slices.Equal(got, want) {
		t.Fatalf("server saw client serials %v; want %v", got, want)
	}
}
