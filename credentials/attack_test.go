package credentials_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// Attacks on the TLS half made as a careless operator, a hostile tenant and
// a hostile client would, each compared with what plain grpc-go and
// crypto/tls do. Every test here failed before its fix.

// A careless operator sets a tenant's view (ForTenant) as
// tls.Config.ClientSessionCache and gives NewTLS no WithTenant: sessions
// must stay in that tenant's partition, and the client-certificate check
// must apply.
func TestTenantViewInConfigIsTheTenantsPartition(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, nil)})
	cache, err := credentials.NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientConfig(pki, tls.VersionTLS13)
	cfg.ClientSessionCache = cache.ForTenant("a")
	creds, err := credentials.NewTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	callOnce(t, creds, b.Addr, "")
	if !resumed(t, callOnce(t, creds, b.Addr, "")) {
		t.Fatal("second connection did not resume")
	}
	if n := cache.PurgeTenant("b"); n != 0 {
		t.Errorf("PurgeTenant(b) dropped %d sessions; want 0", n)
	}
	if n := cache.PurgeTenant("a"); n == 0 {
		t.Error("PurgeTenant(a) dropped nothing: the sessions are not in tenant a's partition")
	}
	if st := cache.Stats(); st.Resumed != 1 {
		t.Errorf("Stats() = %+v; want 1 resumed", st)
	}
	// A different WithTenant on top of a tenant's view is a contradiction.
	cfg.ClientSessionCache = cache.ForTenant("a")
	if _, err := credentials.NewTLS(cfg, credentials.WithTenant("b")); err == nil ||
		!strings.Contains(err.Error(), `"a"`) || !strings.Contains(err.Error(), `"b"`) {
		t.Errorf("NewTLS(view of tenant a, WithTenant(b)) = %v; want an error naming both tenants", err)
	}
}

// The emergency-revocation procedure for key files, as an operator runs it
// on a fleet whose replicas poll on their own schedule. The old procedure
// ("write one fresh key, then call Revoke") lost the race against a poll: a
// replica that had already read the fresh key revoked it too and stayed on
// a local key (no resumption across replicas) until someone wrote yet
// another key. The documented order is now Revoke first, then write: no
// poll can interleave badly, and within one poll every replica shares the
// fresh key again.
func TestRevokeProcedureSurvivesPollRace(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	k1 := newTicketKey(t)
	path := writeFile(t, "ticket.keys", keyFile(k1))
	var logA, logB serverLog
	rotA := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
	rotB := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
	a := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rotA, serverConfig(t, pki, &logA, "backend.test"))}).Addr
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rotB, serverConfig(t, pki, &logB, "backend.test"))}).Addr
	newClient := func() grpccreds.TransportCredentials {
		c, err := credentials.NewTLS(clientConfig(pki, tls.VersionTLS13), credentials.WithResumptionAcrossAddresses())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old := newClient()
	callOnce(t, old, a, "backend.test") // full, k1
	callOnce(t, old, b, "backend.test") // resumed across replicas, k1

	// The race of the old procedure: replica A polls between the write
	// of the fresh key and the Revoke call; the fresh key is revoked.
	k2 := newTicketKey(t)
	testutil.WriteFileAtomic(t, path, keyFile(k2))
	if err := rotA.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := rotA.Revoke(); err == nil || !strings.Contains(err.Error(), "Revoke first") {
		t.Fatalf("Revoke() after a poll took the fresh key = %v; want the error to explain the procedure (Revoke first)", err)
	}

	// The procedure: 1. Revoke on every replica, 2. write one fresh key,
	// 3. every replica polls.
	for _, rot := range []*credentials.TicketKeyRotator{rotA, rotB} {
		_ = rot.Revoke() // the file holds only revoked keys: a local key until step 2
	}
	k3 := newTicketKey(t)
	testutil.WriteFileAtomic(t, path, keyFile(k3))
	for name, rot := range map[string]*credentials.TicketKeyRotator{"A": rotA, "B": rotB} {
		if err := rot.Rotate(); err != nil {
			t.Fatalf("replica %s: Rotate() after the fresh key was written = %v", name, err)
		}
		if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k3}) {
			t.Fatalf("replica %s does not use exactly the fresh key", name)
		}
	}
	callOnce(t, old, a, "backend.test") // full: k1 revoked
	callOnce(t, old, b, "backend.test") // full: its own session is of k1
	fresh := newClient()
	callOnce(t, fresh, a, "backend.test") // full
	callOnce(t, fresh, b, "backend.test") // resumed across replicas: both use k3
	if got, want := logA.handshakes(), []bool{false, false, false}; !slices.Equal(got, want) {
		t.Errorf("replica A saw DidResume %v; want %v", got, want)
	}
	if got, want := logB.handshakes(), []bool{true, false, true}; !slices.Equal(got, want) {
		t.Errorf("replica B saw DidResume %v; want %v", got, want)
	}
}

// A key file saved by a Windows editor starts with a UTF-8 byte-order mark.
// The error must say so: "line 1: not standard base64 (bad data at byte 0)"
// sent the operator looking at a line that looks like valid base64.
func TestTicketKeyFileWithByteOrderMark(t *testing.T) {
	k := newTicketKey(t)
	_, err := credentials.ParseTicketKeys(append([]byte("\uFEFF"), keyFile(k)...))
	if err == nil || !strings.Contains(err.Error(), "byte-order mark") {
		t.Fatalf("ParseTicketKeys(BOM + keys) = %v; want an error naming the byte-order mark", err)
	}
	errorMustNotLeak(t, fmt.Errorf("credentials: %w", err), k)
}

// A typed nil *SessionCache as tls.Config.ClientSessionCache is refused by
// NewTLS with an error, instead of a nil-pointer panic on the first
// handshake.
func TestNilSessionCacheInConfigRefused(t *testing.T) {
	cfg := &tls.Config{ClientSessionCache: (*credentials.SessionCache)(nil)}
	if _, err := credentials.NewTLS(cfg); err == nil || !strings.Contains(err.Error(), "nil") {
		t.Fatalf("NewTLS(ClientSessionCache: nil *SessionCache) = %v; want an error", err)
	}
}

// What an operator's file system can do to a reloaded key file while the
// server runs: each case keeps the last good keys, reports an error that
// names the file, never contains key material, and the file taken back
// when it is good again.
func TestTicketKeyFileHostileFileSystem(t *testing.T) {
	k1, k2 := newTicketKey(t), newTicketKey(t)
	for _, tc := range []struct {
		name    string
		break_  func(t *testing.T, path string)
		wantErr string
	}{
		{"vanishes", func(t *testing.T, path string) { mustRemove(t, path) }, "no such file"},
		{"directory in its place", func(t *testing.T, path string) {
			mustRemove(t, path)
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "is not a regular file (directory)"},
		{"symlink loop", func(t *testing.T, path string) {
			mustRemove(t, path)
			if err := os.Symlink(path, path); err != nil {
				t.Fatal(err)
			}
		}, "too many levels of symbolic links"},
		{"dangling symlink", func(t *testing.T, path string) {
			mustRemove(t, path)
			if err := os.Symlink(path+".gone", path); err != nil {
				t.Fatal(err)
			}
		}, "no such file"},
		{"trailing garbage", func(t *testing.T, path string) {
			testutil.WriteFileAtomic(t, path, append(keyFile(k2), "garbage\n"...))
		}, "line 3: not standard base64"},
		{"10k keys", func(t *testing.T, path string) {
			testutil.WriteFileAtomic(t, path, bytes.Repeat(keyFile(k2), 10000))
		}, "is larger than 65536 bytes"},
		{"empty", func(t *testing.T, path string) { testutil.WriteFileAtomic(t, path, nil) }, "no keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, "ticket.keys", keyFile(k1))
			var (
				mu   sync.Mutex
				seen []error
			)
			rot := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)),
				credentials.NoSettle(), credentials.WithErrorHandler(func(err error) {
					mu.Lock()
					defer mu.Unlock()
					seen = append(seen, err)
				}))
			tc.break_(t, path)
			err := rot.Rotate()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Rotate() = %v; want an error naming %q and containing %q", err, path, tc.wantErr)
			}
			errorMustNotLeak(t, err, k1, k2)
			if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k1}) {
				t.Fatal("the last good key is not in use")
			}
			_ = rot.Rotate() // the same error again is reported once
			mu.Lock()
			if len(seen) != 1 {
				t.Errorf("error handler heard %d errors; want 1", len(seen))
			}
			mu.Unlock()
			// It comes back good.
			_ = os.RemoveAll(path)
			testutil.WriteFileAtomic(t, path, keyFile(k2))
			if err := rot.Rotate(); err != nil || rot.Err() != nil {
				t.Fatalf("Rotate() after the file came back = %v", err)
			}
			if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k2}) {
				t.Fatal("the good file was not taken back")
			}
		})
	}
}

func mustRemove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// Hostile tenants hammer one tiny shared cache (capacity 1 and 2) at the
// same time, each with its own client certificate and tenant, so sessions
// are evicted and replaced under every handshake. The server records, per
// connection, which client certificate the session it accepted carries; the
// client side records which certificate each connection's credentials hold.
// No connection may be accepted under another client's certificate, while
// purges of every kind race the handshakes.
func TestTinySharedCacheUnderConcurrencyNeverCrossesClients(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		for _, capacity := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s/capacity%d", tv.name, capacity), func(t *testing.T) {
				scfg := serverConfig(t, pki, nil)
				scfg.ClientAuth = tls.RequireAndVerifyClientCert
				scfg.ClientCAs = pki.Pool
				srv := testutil.StartTLSServer(t, scfg) // records each client's certificate
				cache, err := credentials.NewSessionCache(credentials.WithCapacity(capacity))
				if err != nil {
					t.Fatal(err)
				}
				const clients, rounds = 6, 15
				var (
					wg   sync.WaitGroup
					mu   sync.Mutex
					want = map[string]string{} // client local address -> its certificate's serial
					errs = make(chan error, clients*rounds)
				)
				for i := range clients {
					certPEM, keyPEM := pki.LeafPEM(t)
					cert, err := tls.X509KeyPair(certPEM, keyPEM)
					if err != nil {
						t.Fatal(err)
					}
					serial := serialOf(t, certPEM)
					cfg := clientConfig(pki, tv.v)
					cfg.Certificates = []tls.Certificate{cert}
					// Two clients per tenant: tenants and identities both vary.
					creds, err := credentials.NewTLS(cfg, credentials.WithSessionCache(cache),
						credentials.WithTenant(fmt.Sprintf("tenant-%d", i/2)), credentials.WithResumptionAcrossAddresses())
					if err != nil {
						t.Fatal(err)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range rounds {
							local, _, err := testutil.HandshakeTLS(creds, srv.Addr, "localhost")
							if err != nil {
								errs <- err
								return
							}
							mu.Lock()
							want[local.String()] = serial
							mu.Unlock()
						}
					}()
				}
				// Purges race the handshakes (for -race; what a purge
				// promises is proven by TestPurgeForcesFullHandshakes).
				stop := make(chan struct{})
				purged := make(chan struct{})
				go func() {
					defer close(purged)
					for i := 0; i < 200; i++ {
						select {
						case <-stop:
							return
						default:
						}
						switch i % 3 {
						case 0:
							cache.Purge()
						case 1:
							cache.PurgeTenant("tenant-1")
						case 2:
							cache.PurgeServer(srv.Addr)
						}
						runtime.Gosched()
					}
				}()
				wg.Wait()
				close(stop)
				<-purged
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				got := map[string]string{} // client address -> the certificate the server accepted
				for _, h := range srv.Handshakes() {
					got[h.Remote] = h.PeerSerial
				}
				resumedN, _ := srv.Counts()
				for local, serial := range want {
					if got[local] != serial {
						t.Fatalf("connection from %s was accepted with client certificate %q; its credentials hold %q", local, got[local], serial)
					}
				}
				if len(got) != clients*rounds {
					t.Fatalf("server saw %d connections; want %d", len(got), clients*rounds)
				}
				t.Logf("%d of %d handshakes resumed; %+v", resumedN, len(got), cache.Stats())
			})
		}
	}
}

// A plain view (ForTenant, as tls.Config.ClientSessionCache of grpc's own
// credentials) offers a session, the operator purges (revocation), and the
// handshake that was resuming it completes and stores its new ticket. The
// package promises that a handshake resuming a purged session stores
// nothing; a plain view stored the ticket as if freshly verified, so the
// purged session lived on for another TTL. After a miss (a full handshake)
// the next ticket is stored again.
func TestPlainViewResumptionRacingPurgeStoresNothing(t *testing.T) {
	for _, purge := range []struct {
		name string
		do   func(*credentials.SessionCache)
	}{
		{"Purge", func(c *credentials.SessionCache) { c.Purge() }},
		{"PurgeTenant", func(c *credentials.SessionCache) { c.PurgeTenant("a") }},
		{"PurgeServer", func(c *credentials.SessionCache) { c.PurgeServer("backend") }},
	} {
		t.Run(purge.name, func(t *testing.T) {
			c, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			v := c.ForTenant("a")
			v.Put("backend", new(tls.ClientSessionState)) // a full handshake
			if _, ok := v.Get("backend"); !ok {           // offered to the next handshake
				t.Fatal("stored session not offered")
			}
			purge.do(c)                                   // ... which the purge races
			v.Put("backend", new(tls.ClientSessionState)) // the resumed handshake's ticket
			if _, ok := v.Get("backend"); ok {
				t.Fatal("a ticket from a handshake resuming a purged session was stored and offered")
			}
			// That miss means a full handshake: its ticket is stored.
			v.Put("backend", new(tls.ClientSessionState))
			if _, ok := v.Get("backend"); !ok {
				t.Fatal("a ticket from a full handshake after the purge was not stored")
			}
			// Another tenant's sessions are not affected by the mark.
			w := c.ForTenant("b")
			w.Put("backend", new(tls.ClientSessionState))
			if _, ok := w.Get("backend"); !ok {
				t.Fatal("tenant b's session not offered")
			}
		})
	}
}

// The same race over real TLS, through grpc's own credentials with a
// tenant's view as tls.Config.ClientSessionCache: the purge lands between
// crypto/tls looking the session up and the resumed handshake storing its
// ticket. The next connection must be a full handshake.
func TestPlainViewResumptionRacingPurgeOverTLS(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			srv := testutil.StartTLSServer(t, serverConfig(t, pki, nil))
			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			racing := &purgeAfterGet{ClientSessionCache: cache.ForTenant("a"), cache: cache}
			cfg := clientConfig(pki, tv.v)
			cfg.ClientSessionCache = racing
			creds := grpccreds.NewTLS(cfg)
			var got []bool
			for i := range 3 {
				racing.armed.Store(i == 1) // the second handshake races a purge
				r, err := rawHandshake(creds, srv.Addr, "localhost")
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, r)
			}
			if want := []bool{false, true, false}; !slices.Equal(got, want) {
				t.Fatalf("DidResume = %v; want %v (the session resumed across the purge must not be offered again)", got, want)
			}
		})
	}
}

// purgeAfterGet purges the whole cache right after a lookup that found a
// session, while armed.
type purgeAfterGet struct {
	tls.ClientSessionCache
	cache *credentials.SessionCache
	armed atomic.Bool
}

func (p *purgeAfterGet) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := p.ClientSessionCache.Get(key)
	if ok && p.armed.Load() {
		p.cache.Purge()
	}
	return cs, ok
}

// certPEM makes a self-signed certificate and its key, valid from
// notBefore to notAfter, for localhost and 127.0.0.1.
func certPEM(t *testing.T, notBefore, notAfter time.Time, isCA bool) (certOut, keyOut []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "attack"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  isCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// A careless operator publishes a trust bundle whose every certificate has
// expired (an old backup). crypto/x509 verifies nothing against it, so
// taking it would fail every new handshake of the fleet: it is refused as
// bad contents, the last good bundle stays, and the error says why. A
// bundle with at least one valid certificate, expired ones beside it, is
// taken; so is a pinned self-signed leaf (a non-CA certificate).
func TestTrustBundleOfExpiredCertificatesRefused(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	now := time.Now()
	expired, _ := certPEM(t, now.Add(-48*time.Hour), now.Add(-24*time.Hour), true)
	leaf, _ := certPEM(t, now.Add(-time.Hour), now.Add(time.Hour), false)

	if _, err := credentials.NewTrustBundle(writeFile(t, "old.pem", expired)); err == nil ||
		!strings.Contains(err.Error(), "old.pem") || !strings.Contains(err.Error(), "every certificate has expired") {
		t.Fatalf("NewTrustBundle(expired CA only) = %v; want an error naming the file and the expiry", err)
	}
	path := writeFile(t, "ca.pem", pki.CAPEM)
	b := newTrustBundle(t, path)
	before := b.Pool()
	testutil.WriteFileAtomic(t, path, append(bytes.Clone(expired), expired...))
	if err := b.Reload(); err == nil || !strings.Contains(err.Error(), "every certificate has expired") {
		t.Fatalf("Reload(expired only) = %v; want it refused", err)
	}
	if b.Pool() != before {
		t.Fatal("the expired bundle replaced the last good one")
	}
	for name, data := range map[string][]byte{
		"expired beside valid": append(bytes.Clone(expired), pki.CAPEM...),
		"pinned leaf":          leaf,
	} {
		testutil.WriteFileAtomic(t, path, data)
		if err := b.Reload(); err != nil {
			t.Errorf("Reload(%s) = %v; want it taken", name, err)
		}
	}
}

// The certificate files as a careless operator leaves them: every bad pair
// is refused with an error naming both files, the last good certificate
// keeps serving, and a good pair of another key type (EC to RSA) is taken.
// An expired certificate is refused too: served, it would fail every
// handshake, while the last good one may still be valid.
func TestCertificateReloaderHostileFiles(t *testing.T) {
	ec := testutil.NewPKI(t, testutil.ECDSAP256)
	rsa := testutil.NewPKI(t, testutil.RSA2048)
	cert1, key1 := ec.LeafPEM(t)
	_, key2 := ec.LeafPEM(t)
	rsaCert, rsaKey := rsa.LeafPEM(t)
	now := time.Now()
	oldCert, oldKey := certPEM(t, now.Add(-48*time.Hour), now.Add(-time.Hour), false)
	encKey := []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n")
	for _, tc := range []struct {
		name      string
		cert, key []byte
		wantErr   string // "" means taken
	}{
		{"mismatched key", cert1, key2, "private key does not match public key"},
		{"encrypted key", cert1, encKey, "the key is encrypted"},
		{"files switched", key1, cert1, "PEM inputs may have been switched"},
		{"expired certificate", oldCert, oldKey, "the certificate has expired"},
		{"EC to RSA", rsaCert, rsaKey, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			certFile, keyFile := writePair(t, dir, cert1, key1)
			r, err := credentials.NewCertificateReloader(certFile, keyFile, credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			before, _ := r.GetCertificate(nil)
			writePair(t, dir, tc.cert, tc.key)
			err = r.Reload()
			after, _ := r.GetCertificate(nil)
			if tc.wantErr == "" {
				if err != nil || after == before {
					t.Fatalf("Reload() = %v, certificate replaced %v; want the new pair taken", err, after != before)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), certFile) || !strings.Contains(err.Error(), keyFile) {
				t.Fatalf("Reload() = %v; want an error naming both files and containing %q", err, tc.wantErr)
			}
			if after != before {
				t.Fatal("a bad pair replaced the last good certificate")
			}
			if strings.Contains(err.Error(), "BEGIN") || strings.Contains(err.Error(), "MII") {
				t.Fatalf("error %q contains PEM material", err)
			}
		})
	}
}

// TTL edges a careless operator can reach: the shortest TTL offers nothing
// once any time has passed, the longest does not overflow into "expired",
// and expiry is exact at the TTL.
func TestSessionTTLEdges(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ttl     time.Duration
		advance time.Duration
		want    bool
	}{
		{"1ns, 1ns later", time.Nanosecond, time.Nanosecond, false},
		{"max, after 200 years", time.Duration(math.MaxInt64), 200 * 365 * 24 * time.Hour, true},
		{"1h, just before", time.Hour, time.Hour - time.Nanosecond, true},
		{"1h, exactly", time.Hour, time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			c, err := credentials.NewSessionCache(credentials.WithTTL(tc.ttl), credentials.WithClock(clock.now))
			if err != nil {
				t.Fatal(err)
			}
			c.ForTenant("a").Put("backend", new(tls.ClientSessionState))
			clock.advance(tc.advance)
			if _, ok := c.ForTenant("a").Get("backend"); ok != tc.want {
				t.Fatalf("offered = %v; want %v", ok, tc.want)
			}
		})
	}
}

// Everything a server process does with its file-backed credentials, at
// once: polls (a fast ticker), explicit Reload/Rotate/Revoke, reads of the
// current values, FileStatus, files being replaced, and Close in the middle
// of it all, twice, then use after Close. Under -race nothing may race,
// panic or hang, every goroutine must be gone at the end (leakcheck), and
// after Close the last values are still served.
func TestFileBackedCredentialsConcurrentlyThenClose(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	dir := t.TempDir()
	cert1, key1 := pki.LeafPEM(t)
	cert2, key2 := pki.LeafPEM(t)
	certPath, keyPath := writePair(t, dir, cert1, key1)
	keysPath := filepath.Join(dir, "ticket.keys")
	testutil.WriteFileAtomic(t, keysPath, keyFile(newTicketKey(t)))
	caPath := filepath.Join(dir, "ca.pem")
	testutil.WriteFileAtomic(t, caPath, pki.CAPEM)

	tick := make(chan time.Time)
	opts := []credentials.ReloadOption{credentials.WithTickChannel(tick), credentials.NoSettle()}
	rel, err := credentials.NewCertificateReloader(certPath, keyPath, opts[0], opts[1])
	if err != nil {
		t.Fatal(err)
	}
	rot, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(keysPath), opts[0], opts[1])
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := credentials.NewTrustBundle(caPath, opts[0], opts[1])
	if err != nil {
		t.Fatal(err)
	}
	closers := []func() error{rel.Close, rot.Close, bundle.Close}

	var wg sync.WaitGroup
	run := func(n int, fn func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				fn(i)
			}
		}()
	}
	stopTicks := make(chan struct{})
	ticked := make(chan struct{})
	go func() { // the three loops read from one tick channel
		defer close(ticked)
		for {
			select {
			case tick <- time.Now():
			case <-stopTicks:
				return
			}
		}
	}()
	writeErrs := make(chan error, 120)
	keys := make([][32]byte, 40)
	for i := range keys {
		keys[i] = newTicketKey(t)
	}
	run(40, func(i int) { // the operator replaces files
		c, k := cert1, key1
		if i%2 == 0 {
			c, k = cert2, key2
		}
		writeErrs <- writeAtomic(certPath, c)
		writeErrs <- writeAtomic(keyPath, k)
		writeErrs <- writeAtomic(keysPath, keyFile(keys[i]))
	})
	run(40, func(int) { _ = rel.Reload(); _ = rot.Rotate(); _ = bundle.Reload() })
	run(10, func(int) { _ = rot.Revoke() })
	run(200, func(int) {
		if c, _ := rel.GetCertificate(nil); c == nil {
			panic("no certificate")
		}
		if bundle.Pool() == nil {
			panic("no pool")
		}
		_, _ = credentials.TicketKeys(rot)
		_ = rel.FileStatus()
		_ = rot.FileStatus()
		_ = bundle.FileStatus()
		_, _, _ = rel.Err(), rot.Err(), bundle.Err()
	})
	run(2, func(int) { // Close in the middle, twice, from two goroutines
		for _, c := range closers {
			if err := c(); err != nil {
				panic(err)
			}
		}
	})
	wg.Wait()
	close(stopTicks)
	<-ticked
	close(writeErrs)
	for err := range writeErrs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range closers {
		if err := c(); err != nil {
			t.Fatal(err)
		}
	}
	// Use after Close: the last values stay and explicit calls still work.
	if c, _ := rel.GetClientCertificate(nil); c == nil {
		t.Fatal("no certificate after Close")
	}
	if err := rel.Reload(); err != nil {
		t.Fatalf("Reload after Close = %v", err)
	}
	if err := rot.Rotate(); err != nil && !strings.Contains(err.Error(), "every key in it was revoked") {
		t.Fatalf("Rotate after Close = %v", err)
	}
	_ = rot.Revoke()
	if err := bundle.Reload(); err != nil {
		t.Fatalf("Reload of the bundle after Close = %v", err)
	}
}

// writeAtomic is testutil.WriteFileAtomic for goroutines other than the
// test's: it returns its error.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	return os.Rename(f.Name(), path)
}

// A certificate chain file that ends in a cut-off block (a disk filled
// during the write, then the file was renamed into place) is not a chain:
// served, it lacks the intermediate and fails every client that needs it.
// tls.X509KeyPair ignores the partial block; the reloader refuses the file,
// as the trust bundle does, and keeps the last good pair.
func TestCertificateChainCutOffRefused(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	cert1, key1 := pki.LeafPEM(t)
	cert2, key2 := pki.LeafPEM(t)
	dir := t.TempDir()
	certPath, keyPath := writePair(t, dir, cert1, key1)
	r, err := credentials.NewCertificateReloader(certPath, keyPath, credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before, _ := r.GetCertificate(nil)
	chain := append(bytes.Clone(cert2), pki.CAPEM[:len(pki.CAPEM)/2]...) // leaf + half an "intermediate"
	writePair(t, dir, chain, key2)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "not a complete PEM block") || !strings.Contains(err.Error(), certPath) {
		t.Fatalf("Reload(cut-off chain) = %v; want an error naming the certificate file and the cut-off block", err)
	}
	if after, _ := r.GetCertificate(nil); after != before {
		t.Fatal("a cut-off chain replaced the last good certificate")
	}
	// The complete chain is taken; so is a file with text around blocks.
	writePair(t, dir, append(append([]byte("subject=leaf\n"), cert2...), pki.CAPEM...), key2)
	if err := r.Reload(); err != nil {
		t.Fatalf("Reload(complete chain) = %v", err)
	}
	if _, err := credentials.NewCertificateReloader(writeFile(t, "cut.crt", chain), writeFile(t, "k.key", key2)); err == nil {
		t.Fatal("NewCertificateReloader took a cut-off chain")
	}
}

// A careless operator shares one cache and tenant between credentials that
// skip verification (a debugging client) and credentials that verify. The
// verifying credentials must never resume a session that was never
// verified (crypto/tls refuses it), while the reverse is harmless.
func TestUnverifiedSessionNeverResumedByVerifyingCredentials(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &slog)})
			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			insecureCfg := &tls.Config{InsecureSkipVerify: true, MaxVersion: tv.v} //nolint:gosec // the attack
			insecure, err := credentials.NewTLS(insecureCfg, credentials.WithSessionCache(cache))
			if err != nil {
				t.Fatal(err)
			}
			verifying, err := credentials.NewTLS(clientConfig(pki, tv.v), credentials.WithSessionCache(cache))
			if err != nil {
				t.Fatal(err)
			}
			callOnce(t, insecure, b.Addr, "")  // full, unverified
			callOnce(t, verifying, b.Addr, "") // must be full: nothing verified to resume
			callOnce(t, insecure, b.Addr, "")  // may resume the verified session
			if got := slog.handshakes(); got[1] {
				t.Fatalf("server saw DidResume %v: the verifying credentials resumed an unverified session", got)
			}
		})
	}
}
