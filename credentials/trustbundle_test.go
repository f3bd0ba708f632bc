package credentials_test

import (
	"bytes"
	"crypto/tls"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

func newTrustBundle(t *testing.T, path string) *credentials.TrustBundle {
	t.Helper()
	b, err := credentials.NewTrustBundle(path, credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newReloader(t *testing.T, certFile, keyFile string) *credentials.CertificateReloader {
	t.Helper()
	r, err := credentials.NewCertificateReloader(certFile, keyFile, credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func bundlePEM(pkis ...*testutil.PKI) []byte {
	var b bytes.Buffer
	for _, p := range pkis {
		b.Write(p.CAPEM)
	}
	return b.Bytes()
}

// Issue 16 (trust-bundle reload): an mTLS fleet rolls its CA from CA1 to
// CA2 through an overlap bundle (CA1+CA2), on servers (client
// verification) and clients (server verification), under traffic over
// real TLS, and no call fails. Afterwards a peer whose certificate chains
// to CA1 is refused, and a session it established while CA1 was trusted
// is not resumed.
func TestTrustBundleCARotationFailsNoCall(t *testing.T) {
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			ca1, ca2 := testutil.NewPKI(t, testutil.ECDSAP256), testutil.NewPKI(t, testutil.ECDSAP256)
			dir := t.TempDir()
			srvBundleFile, cliBundleFile := filepath.Join(dir, "server-ca.pem"), filepath.Join(dir, "client-ca.pem")
			publish := func(pkis ...*testutil.PKI) {
				testutil.WriteFileAtomic(t, srvBundleFile, bundlePEM(pkis...))
				testutil.WriteFileAtomic(t, cliBundleFile, bundlePEM(pkis...))
			}
			publish(ca1)
			sb, cb := newTrustBundle(t, srvBundleFile), newTrustBundle(t, cliBundleFile)
			reloadBundles := func() {
				t.Helper()
				for _, b := range []*credentials.TrustBundle{sb, cb} {
					if err := b.Reload(); err != nil {
						t.Fatal(err)
					}
				}
			}
			srvDir, cliDir := t.TempDir(), t.TempDir()
			c, k := ca1.LeafPEM(t)
			sc, sk := writePairFiles(t, srvDir, c, k)
			srvRel := newReloader(t, sc, sk)
			c, k = ca1.LeafPEM(t)
			cc, ck := writePairFiles(t, cliDir, c, k)
			cliRel := newReloader(t, cc, ck)

			// The server verifies clients against sb; no explicit ticket
			// keys, so derived configs must keep the server's own.
			var slog serverLog
			scfg, err := sb.ServerConfig(&tls.Config{
				GetCertificate:   srvRel.GetCertificate,
				ClientAuth:       tls.RequireAndVerifyClientCert,
				MinVersion:       tls.VersionTLS12,
				MaxVersion:       tv.v,
				VerifyConnection: slog.verify,
			})
			if err != nil {
				t.Fatal(err)
			}
			srv := testutil.StartBackend(t, testutil.BackendOptions{TLS: scfg})
			creds, err := credentials.NewTLS(&tls.Config{GetClientCertificate: cliRel.GetClientCertificate, MinVersion: tls.VersionTLS12, MaxVersion: tv.v},
				credentials.WithTrustBundle(cb))
			if err != nil {
				t.Fatal(err)
			}

			calls := startCalling(t, creds, srv.Addr)
			progress := func(step string) { t.Helper(); calls.progress(3, hangLimit, step) }
			progress("start")

			// Peers that stay on CA1, with sessions made while CA1 is trusted.
			oldCert := ca1.Leaf(t)
			oldClient, err := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{oldCert}, MinVersion: tls.VersionTLS12, MaxVersion: tv.v},
				credentials.WithTrustBundle(cb))
			if err != nil {
				t.Fatal(err)
			}
			var oldSrvLog serverLog
			oldSrvCfg := serverConfig(t, ca1, &oldSrvLog)
			oldSrvCfg.MaxVersion = tv.v
			oldSrv := testutil.StartBackend(t, testutil.BackendOptions{TLS: oldSrvCfg})
			for i := range 2 {
				if got := resumed(t, callOnce(t, oldClient, srv.Addr, "")); got != (i == 1) {
					t.Fatalf("CA1 client connection %d: resumed %v", i+1, got)
				}
				if got := resumed(t, callOnce(t, creds, oldSrv.Addr, "")); got != (i == 1) {
					t.Fatalf("connection %d to the CA1 server: resumed %v", i+1, got)
				}
			}

			publish(ca1, ca2) // 1. overlap bundle everywhere
			reloadBundles()
			progress("publishing the overlap bundle")
			c, k = ca2.LeafPEM(t) // 2. certificates move to CA2
			writePairFiles(t, srvDir, c, k)
			c, k = ca2.LeafPEM(t)
			writePairFiles(t, cliDir, c, k)
			for _, r := range []*credentials.CertificateReloader{srvRel, cliRel} {
				if err := r.Reload(); err != nil {
					t.Fatal(err)
				}
			}
			progress("moving the certificates to CA2")
			publish(ca2) // 3. CA1 leaves the bundles
			reloadBundles()
			mark := len(slog.handshakes())
			progress("dropping CA1")
			progress("dropping CA1 (resumed again)")
			if err := calls.end(); err != nil {
				t.Fatalf("a call failed during the CA rotation (after %d good calls): %v", calls.ok.Load(), err)
			}
			hs := slog.handshakes()
			if after := hs[mark:]; countTrue(after) == 0 {
				t.Fatalf("no resumed handshake after dropping CA1 (%d handshakes); resumption should survive the rotation", len(after))
			}

			// The CA1 client is refused: its session is not resumed (the
			// server re-verifies against the new bundle) and its certificate
			// fails the full handshake.
			oldSerial := oldCert.Leaf.SerialNumber.String()
			if _, err := tryCall(oldClient, srv.Addr, ""); err == nil {
				t.Fatal("a client with a CA1 certificate was accepted after CA1 left the server's bundle")
			}
			n := 0
			for _, s := range slog.clientSerials() {
				if s == oldSerial {
					n++
				}
			}
			if n != 2 {
				t.Fatalf("the server accepted the CA1 client %d times; want only the 2 connections before the rotation", n)
			}
			// The CA1 server is refused by the client, resumed session or not.
			if _, err := tryCall(creds, oldSrv.Addr, ""); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
				t.Fatalf("call to a CA1 server after CA1 left the client's bundle: %v; want unknown authority", err)
			}
			// (In TLS 1.3 the server's VerifyConnection may run before the
			// client rejects it, so the witness is "never resumed".)
			if got := oldSrvLog.handshakes(); len(got) < 2 || countTrue(got[2:]) != 0 {
				t.Fatalf("the CA1 server saw DidResume %v; want no resumption after the rotation", got)
			}
		})
	}
}

// writePairFiles writes a certificate and key into dir atomically and
// returns their names.
func writePairFiles(t testing.TB, dir string, certPEM, keyPEM []byte) (string, string) {
	return writePair(t, dir, certPEM, keyPEM)
}

// A bad bundle keeps the last good one and is reported once; bad
// configurations are refused with errors naming the field.
func TestTrustBundleBadInputs(t *testing.T) {
	ca1, ca2 := testutil.NewPKI(t, testutil.ECDSAP256), testutil.NewPKI(t, testutil.ECDSAP256)
	_, keyPEM := ca1.LeafPEM(t)
	good := writeFile(t, "ca.pem", ca1.CAPEM)
	b := newTrustBundle(t, good)
	for _, tc := range []struct {
		name    string
		run     func() error
		wantErr string
	}{
		{"no file", func() error { _, err := credentials.NewTrustBundle(""); return err },
			`credentials: NewTrustBundle: file is ""`},
		{"missing file", func() error { _, err := credentials.NewTrustBundle(filepath.Join(t.TempDir(), "nope")); return err },
			"credentials: trust bundle file: open "},
		{"no certificates", func() error {
			_, err := credentials.NewTrustBundle(writeFile(t, "empty.pem", []byte("\n")))
			return err
		},
			`empty.pem": no certificates; want one or more PEM CERTIFICATE blocks`},
		{"private key in bundle", func() error {
			_, err := credentials.NewTrustBundle(writeFile(t, "withkey.pem", append(append([]byte{}, ca1.CAPEM...), keyPEM...)))
			return err
		}, `withkey.pem": PEM block 2 is "PRIVATE KEY"; want only CERTIFICATE blocks`},
		{"truncated bundle", func() error {
			both := bundlePEM(ca1, ca2)
			_, err := credentials.NewTrustBundle(writeFile(t, "cut.pem", both[:len(both)-40]))
			return err
		}, `cut.pem": 5`},
		{"zero read timeout", func() error { _, err := credentials.NewTrustBundle(good, credentials.WithReadTimeout(0)); return err },
			"credentials: WithReadTimeout is 0s; must be positive"},
		{"zero poll interval", func() error { _, err := credentials.NewTrustBundle(good, credentials.WithPollInterval(0)); return err },
			"credentials: WithPollInterval is 0s; must be at least 1ms"},
		{"ServerConfig nil", func() error { _, err := b.ServerConfig(nil); return err },
			"credentials: TrustBundle.ServerConfig: tls.Config is nil"},
		{"ServerConfig without client verification", func() error {
			_, err := b.ServerConfig(&tls.Config{ClientAuth: tls.RequireAnyClientCert})
			return err
		}, "tls.Config.ClientAuth is RequireAnyClientCert; must be RequireAndVerifyClientCert or VerifyClientCertIfGiven"},
		{"ServerConfig with ClientCAs", func() error {
			_, err := b.ServerConfig(&tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca1.Pool})
			return err
		}, "tls.Config.ClientCAs is set; the trust bundle replaces it"},
		{"NewTLS with RootCAs", func() error {
			_, err := credentials.NewTLS(ca1.ClientConfig(""), credentials.WithTrustBundle(b))
			return err
		},
			"both WithTrustBundle and tls.Config.RootCAs are set"},
		{"NewTLS insecure", func() error {
			_, err := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}, credentials.WithTrustBundle(b))
			return err
		}, "WithTrustBundle is set but tls.Config.InsecureSkipVerify is true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v; want it to contain %q", err, tc.wantErr)
			}
		})
	}

	// Reload: a bad file keeps the last good bundle; one report per error.
	var reports atomic.Int64
	path := writeFile(t, "reload.pem", ca1.CAPEM)
	rb, err := credentials.NewTrustBundle(path, credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle(),
		credentials.WithErrorHandler(func(error) { reports.Add(1) }))
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	before := rb.Pool()
	testutil.WriteFileAtomic(t, path, []byte("garbage"))
	for range 2 {
		if err := rb.Reload(); err == nil {
			t.Fatal("Reload of a garbage bundle succeeded")
		}
	}
	if rb.Pool() != before || rb.Err() == nil || reports.Load() != 1 {
		t.Fatalf("after a bad reload: pool kept %v, Err %v, reports %d; want the old pool, an error, 1 report",
			rb.Pool() == before, rb.Err(), reports.Load())
	}
	testutil.WriteFileAtomic(t, path, bundlePEM(ca1, ca2))
	if err := rb.Reload(); err != nil || rb.Err() != nil || rb.Pool().Equal(before) {
		t.Fatalf("good reload: %v, Err %v, pool changed %v", err, rb.Err(), !rb.Pool().Equal(before))
	}
}

// TrustBundle.ServerConfig and TicketKeyRotator.ServerConfig compose in
// either order: clients resume on the rotator's keys and the bundle still
// decides which client certificates are accepted.
func TestTrustBundleComposesWithTicketKeyRotator(t *testing.T) {
	ca, other := testutil.NewPKI(t, testutil.ECDSAP256), testutil.NewPKI(t, testutil.ECDSAP256)
	sb := newTrustBundle(t, writeFile(t, "ca.pem", ca.CAPEM))
	for _, tv := range tlsVersions {
		for _, order := range []string{"RotatorOutside", "BundleOutside"} {
			t.Run(tv.name+"/"+order, func(t *testing.T) {
				rot := newRotator(t, credentials.WithPreviousKeys(0), credentials.WithTickChannel(make(chan time.Time)))
				var slog serverLog
				base := serverConfig(t, ca, &slog)
				base.ClientAuth = tls.RequireAndVerifyClientCert
				var cfg *tls.Config
				var err error
				if order == "RotatorOutside" {
					if cfg, err = sb.ServerConfig(base); err == nil {
						cfg, err = rot.ServerConfig(cfg)
					}
				} else {
					if cfg, err = rot.ServerConfig(base); err == nil {
						cfg, err = sb.ServerConfig(cfg)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
				srv := testutil.StartBackend(t, testutil.BackendOptions{TLS: cfg})
				ccfg := clientConfig(ca, tv.v)
				ccfg.Certificates = []tls.Certificate{ca.Leaf(t)}
				creds, err := credentials.NewTLS(ccfg)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					if got := resumed(t, callOnce(t, creds, srv.Addr, "")); got != (i > 0) {
						t.Fatalf("connection %d resumed = %v", i+1, got)
					}
				}
				// The rotator's keys are in use: after a rotation that drops
				// every earlier key, the next connection is full.
				if err := rot.Rotate(); err != nil {
					t.Fatal(err)
				}
				callOnce(t, creds, srv.Addr, "")
				if got := slog.handshakes(); len(got) != 4 || got[3] {
					t.Fatalf("server saw DidResume %v; want a full handshake after the rotation pushed the key out", got)
				}
				stranger := clientConfig(ca, tv.v)
				stranger.Certificates = []tls.Certificate{other.Leaf(t)}
				screds, err := credentials.NewTLS(stranger)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tryCall(screds, srv.Addr, ""); err == nil {
					t.Fatal("a client certificate from a CA outside the bundle was accepted")
				}
			})
		}
	}
}
