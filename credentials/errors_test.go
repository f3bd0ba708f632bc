package credentials_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// Every bad input gets an error that names the option or field and the
// value, never a panic and never a silent default.
func TestBadInputs(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	certPEM, keyPEM := pki.LeafPEM(t)
	_, otherKeyPEM := pki.LeafPEM(t)
	secret := newTicketKey(t)
	short := base64.StdEncoding.EncodeToString(secret[:16])
	dir := t.TempDir()
	file := func(name string, data []byte) string { return writeFile(t, name, data) }
	verifyPeer := &tls.Config{VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return nil }}
	cache, err := credentials.NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		run     func() error
		wantErr string
	}{
		// NewSessionCache
		{"zero capacity", func() error { _, err := credentials.NewSessionCache(credentials.WithCapacity(0)); return err },
			"credentials: WithCapacity is 0; must be at least 1"},
		{"negative capacity", func() error { _, err := credentials.NewSessionCache(credentials.WithCapacity(-3)); return err },
			"credentials: WithCapacity is -3; must be at least 1"},
		{"zero TTL", func() error { _, err := credentials.NewSessionCache(credentials.WithTTL(0)); return err },
			"credentials: WithTTL is 0s; must be positive"},
		{"negative TTL", func() error { _, err := credentials.NewSessionCache(credentials.WithTTL(-time.Second)); return err },
			"credentials: WithTTL is -1s; must be positive"},

		// NewTLS
		{"nil config", func() error { _, err := credentials.NewTLS(nil); return err },
			"credentials: NewTLS: tls.Config is nil"},
		{"VerifyPeerCertificate with resumption", func() error { _, err := credentials.NewTLS(verifyPeer); return err },
			"tls.Config.VerifyPeerCertificate is set, but crypto/tls skips it on resumed handshakes; move the check to VerifyConnection"},
		{"two caches", func() error {
			_, err := credentials.NewTLS(&tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(1)}, credentials.WithSessionCache(cache))
			return err
		}, "both WithSessionCache and tls.Config.ClientSessionCache are set"},
		{"across addresses with a foreign cache", func() error {
			_, err := credentials.NewTLS(&tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(1)}, credentials.WithResumptionAcrossAddresses())
			return err
		}, "credentials: NewTLS: WithResumptionAcrossAddresses needs this package's SessionCache, but tls.Config.ClientSessionCache is set"},
		{"across addresses without tickets", func() error {
			_, err := credentials.NewTLS(&tls.Config{SessionTicketsDisabled: true}, credentials.WithResumptionAcrossAddresses())
			return err
		}, "credentials: NewTLS: WithResumptionAcrossAddresses is given, but tls.Config.SessionTicketsDisabled is true"},

		// NewTicketKeyRotator
		{"zero rotation interval", func() error { return rotatorErr(credentials.WithRotationInterval(0)) },
			"credentials: WithRotationInterval is 0s; must be at least 1ms"},
		{"negative rotation interval", func() error { return rotatorErr(credentials.WithRotationInterval(-time.Minute)) },
			"credentials: WithRotationInterval is -1m0s; must be at least 1ms"},
		{"nanosecond rotation interval", func() error { return rotatorErr(credentials.WithRotationInterval(time.Nanosecond)) },
			"credentials: WithRotationInterval is 1ns; must be at least 1ms"},
		{"microsecond poll interval", func() error { return rotatorErr(credentials.WithPollInterval(time.Microsecond)) },
			"credentials: WithPollInterval is 1µs; must be at least 1ms"},
		{"negative previous keys", func() error { return rotatorErr(credentials.WithPreviousKeys(-1)) },
			"credentials: WithPreviousKeys is -1; must be between 0 and 100"},
		{"too many previous keys", func() error { return rotatorErr(credentials.WithPreviousKeys(101)) },
			"credentials: WithPreviousKeys is 101; must be between 0 and 100"},
		{"zero poll interval", func() error { return rotatorErr(credentials.WithPollInterval(0)) },
			"credentials: WithPollInterval is 0s; must be at least 1ms"},
		{"key file with rotation interval", func() error {
			return rotatorErr(credentials.WithTicketKeyFile(file("k", keyFile(secret))), credentials.WithRotationInterval(time.Hour))
		}, "credentials: WithRotationInterval cannot be combined with WithTicketKeyFile"},
		{"key file with previous keys", func() error {
			return rotatorErr(credentials.WithPreviousKeys(2), credentials.WithTicketKeyFile(file("k", keyFile(secret))))
		}, "credentials: WithPreviousKeys cannot be combined with WithTicketKeyFile"},
		{"empty key file name", func() error { return rotatorErr(credentials.WithTicketKeyFile("")) },
			`credentials: WithTicketKeyFile is ""; must name a file`},
		{"missing key file", func() error { return rotatorErr(credentials.WithTicketKeyFile(filepath.Join(dir, "nope"))) },
			"credentials: ticket key file: open " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{"empty key file", func() error { return rotatorErr(credentials.WithTicketKeyFile(file("empty", nil))) },
			`empty": no keys; want at least one base64-encoded 32-byte key per line`},
		{"short key", func() error {
			return rotatorErr(credentials.WithTicketKeyFile(file("short", []byte(base64.StdEncoding.EncodeToString(secret[:])+"\n"+short+"\n"))))
		}, `short": line 2: key is 16 bytes; want 32`},
		{"corrupt key file", func() error {
			return rotatorErr(credentials.WithTicketKeyFile(file("corrupt", append([]byte("#ok\n"), rawBinaryKey()...))))
		}, `corrupt": line 2: not standard base64`},
		{"huge key file", func() error {
			return rotatorErr(credentials.WithTicketKeyFile(file("huge", []byte(strings.Repeat("#", 70<<10)))))
		}, `huge" is larger than 65536 bytes`},
		{"ServerConfig nil", func() error { return serverConfigErr(nil) },
			"credentials: ServerConfig: tls.Config is nil"},
		{"ServerConfig tickets disabled", func() error { return serverConfigErr(&tls.Config{SessionTicketsDisabled: true}) },
			"credentials: ServerConfig: tls.Config.SessionTicketsDisabled is true"},

		// NewCertificateReloader
		{"no cert file", func() error { return reloaderErr("", "k") },
			`credentials: NewCertificateReloader: certFile is ""`},
		{"no key file", func() error { return reloaderErr("c", "") },
			`credentials: NewCertificateReloader: keyFile is ""`},
		{"missing cert file", func() error { return reloaderErr(filepath.Join(dir, "nocert"), file("key.pem", keyPEM)) },
			"credentials: certificate file: open " + filepath.Join(dir, "nocert")},
		{"garbage certificate", func() error { return reloaderErr(file("cert.pem", []byte("garbage")), file("key.pem", keyPEM)) },
			"cert.pem\" with key file"},
		{"mismatched key", func() error { return reloaderErr(file("cert.pem", certPEM), file("key.pem", otherKeyPEM)) },
			"private key does not match public key"},
		{"reloader poll interval", func() error {
			_, err := credentials.NewCertificateReloader(file("cert.pem", certPEM), file("key.pem", keyPEM), credentials.WithPollInterval(-time.Second))
			return err
		}, "credentials: WithPollInterval is -1s; must be at least 1ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v; want it to contain %q", err, tc.wantErr)
			}
			errorMustNotLeak(t, err, secret)
		})
	}
}

// The opt-outs for VerifyPeerCertificate are accepted.
func TestVerifyPeerCertificateOptOuts(t *testing.T) {
	vp := func([][]byte, [][]*x509.Certificate) error { return nil }
	if _, err := credentials.NewTLS(&tls.Config{VerifyPeerCertificate: vp},
		credentials.WithVerifyPeerCertificateSkippedOnResumption()); err != nil {
		t.Errorf("explicit opt-out refused: %v", err)
	}
	if _, err := credentials.NewTLS(&tls.Config{VerifyPeerCertificate: vp, SessionTicketsDisabled: true}); err != nil {
		t.Errorf("config without resumption refused: %v", err)
	}
	if _, err := credentials.NewTLS(&tls.Config{VerifyConnection: func(tls.ConnectionState) error { return nil }}); err != nil {
		t.Errorf("VerifyConnection refused: %v", err)
	}
}

func rotatorErr(opts ...credentials.TicketKeyOption) error {
	r, err := credentials.NewTicketKeyRotator(opts...)
	if err == nil {
		r.Close()
	}
	return err
}

func serverConfigErr(base *tls.Config) error {
	r, err := credentials.NewTicketKeyRotator()
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = r.ServerConfig(base)
	return err
}

func reloaderErr(certFile, keyFile string) error {
	r, err := credentials.NewCertificateReloader(certFile, keyFile)
	if err == nil {
		r.Close()
	}
	return err
}
