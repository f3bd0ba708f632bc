package credentials_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Issue 13 item 7: WithTTL bounds the time since the last FULL handshake.
// A resumed handshake stores a new ticket but does not restart the clock,
// through NewTLS (which knows whether a handshake resumed) and through a
// plain ForTenant view used by grpc's own credentials (which assumes so).
// Before the fix a 1 s TTL still resumed 12 of 13 reconnects over 4 s.
func TestSessionTTLCountsFromLastFullHandshake(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		for _, kind := range []string{"NewTLS", "ForTenant"} {
			t.Run(tv.name+"/"+kind, func(t *testing.T) {
				var slog serverLog
				b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &slog)})
				clock := newFakeClock()
				cache, err := credentials.NewSessionCache(credentials.WithTTL(time.Minute), credentials.WithClock(clock.now))
				if err != nil {
					t.Fatal(err)
				}
				var creds grpccreds.TransportCredentials
				if kind == "NewTLS" {
					if creds, err = credentials.NewTLS(clientConfig(pki, tv.v), credentials.WithSessionCache(cache)); err != nil {
						t.Fatal(err)
					}
				} else {
					cfg := clientConfig(pki, tv.v)
					cfg.ClientSessionCache = cache.ForTenant("t")
					creds = grpccreds.NewTLS(cfg)
				}
				callOnce(t, creds, b.Addr, "") // full at 0s
				clock.advance(40 * time.Second)
				callOnce(t, creds, b.Addr, "") // resumed at 40s; stores a new ticket
				clock.advance(40 * time.Second)
				callOnce(t, creds, b.Addr, "") // 80s since the full handshake: full
				clock.advance(40 * time.Second)
				callOnce(t, creds, b.Addr, "") // 40s since: resumed
				if got, want := slog.handshakes(), []bool{false, true, false, true}; !slices.Equal(got, want) {
					t.Fatalf("server saw DidResume %v; want %v (the TTL runs from the last full handshake)", got, want)
				}
				if st := cache.Stats(); st.Evictions != 1 {
					t.Fatalf("Stats() = %+v; want 1 eviction for age", st)
				}
			})
		}
	}
}

// Issue 13 item 7: Purge, PurgeTenant and PurgeServer drop exactly the
// sessions they name.
func TestSessionCachePurges(t *testing.T) {
	for _, tc := range []struct {
		name      string
		purge     func(*credentials.SessionCache) int
		wantKept  []string // tenant/name pairs still offered
		wantCount int
	}{
		{"all", (*credentials.SessionCache).Purge, nil, 4},
		{"tenant a", func(c *credentials.SessionCache) int { return c.PurgeTenant("a") }, []string{"b/x", "b/y"}, 2},
		{"unknown tenant", func(c *credentials.SessionCache) int { return c.PurgeTenant("z") }, []string{"a/x", "a/y", "b/x", "b/y"}, 0},
		{"server x", func(c *credentials.SessionCache) int { return c.PurgeServer("x") }, []string{"a/y", "b/y"}, 2},
		{"tenant \"\" is a tenant", func(c *credentials.SessionCache) int { return c.PurgeTenant("") }, []string{"a/x", "a/y", "b/x", "b/y"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			all := []string{"a/x", "a/y", "b/x", "b/y"}
			for _, tn := range all {
				c.ForTenant(tn[:1]).Put(tn[2:], new(tls.ClientSessionState))
			}
			if n := tc.purge(c); n != tc.wantCount {
				t.Errorf("purge dropped %d sessions; want %d", n, tc.wantCount)
			}
			var kept []string
			for _, tn := range all {
				if _, ok := c.ForTenant(tn[:1]).Get(tn[2:]); ok {
					kept = append(kept, tn)
				}
			}
			if !slices.Equal(kept, tc.wantKept) {
				t.Errorf("sessions kept %v; want %v", kept, tc.wantKept)
			}
			if st := c.Stats(); st.Invalidated != uint64(tc.wantCount) || st.Len != len(tc.wantKept) {
				t.Errorf("Stats() = %+v; want %d invalidated, %d held", st, tc.wantCount, len(tc.wantKept))
			}
		})
	}
}

// Issue 13 item 7: after a purge the next handshake is full, by server
// address, tenant or all; a handshake that resumes a session while it is
// being purged does not store the tickets it receives.
func TestPurgeForcesFullHandshakes(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &slog)})
			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			var purgeInHandshake atomic.Bool
			cfg := clientConfig(pki, tv.v)
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				if cs.DidResume && purgeInHandshake.CompareAndSwap(true, false) {
					cache.Purge()
				}
				return nil
			}
			creds, err := credentials.NewTLS(cfg, credentials.WithSessionCache(cache), credentials.WithTenant("a"))
			if err != nil {
				t.Fatal(err)
			}
			call := func() { callOnce(t, creds, b.Addr, "") }
			call() // full
			call() // resumed
			if n := cache.PurgeServer(b.Addr); n != 1 {
				t.Fatalf("PurgeServer(%s) dropped %d sessions; want 1", b.Addr, n)
			}
			call() // full
			cache.PurgeTenant("b")
			call() // resumed: another tenant's purge
			cache.PurgeTenant("a")
			call() // full
			call() // resumed
			cache.PurgeServer("127.0.0.1")
			call() // full: the server name
			purgeInHandshake.Store(true)
			call() // resumed, purged meanwhile: its new ticket is not stored
			call() // full
			call() // resumed
			want := []bool{false, true, false, true, false, true, false, true, false, true}
			if got := slog.handshakes(); !slices.Equal(got, want) {
				t.Fatalf("server saw DidResume %v; want %v", got, want)
			}
		})
	}
}

// writeCertPair writes a PEM certificate and key into dir atomically.
func writeCertPair(t testing.TB, dir string, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	testutil.WriteFileAtomic(t, certFile, certPEM)
	testutil.WriteFileAtomic(t, keyFile, keyPEM)
	return certFile, keyFile
}

func serialOf(t testing.TB, certPEM []byte) string {
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

// Issue 13 item 6: after an mTLS client's certificate rotates (the
// toolkit's CertificateReloader as GetClientCertificate), sessions made
// with the old certificate are not offered: the server sees the new
// certificate in a full handshake, then resumes with it, and never sees
// the old one again. Before the fix every resumed connection still showed
// the old certificate.
func TestClientCertRotationDropsOldSessions(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, how := range []struct {
		name string
		// creds gives cache to NewTLS: as WithSessionCache, or (a careless
		// operator, issue 13 item 6) as tls.Config.ClientSessionCache, which
		// NewTLS used to treat as a foreign cache, offering sessions made
		// with the old certificate on every resumed connection.
		creds func(cfg *tls.Config, cache *credentials.SessionCache) (grpccreds.TransportCredentials, error)
	}{
		{"WithSessionCache", func(cfg *tls.Config, cache *credentials.SessionCache) (grpccreds.TransportCredentials, error) {
			return credentials.NewTLS(cfg, credentials.WithSessionCache(cache))
		}},
		{"ClientSessionCache", func(cfg *tls.Config, cache *credentials.SessionCache) (grpccreds.TransportCredentials, error) {
			cfg.ClientSessionCache = cache
			return credentials.NewTLS(cfg)
		}},
	} {
		for _, tv := range tlsVersions {
			t.Run(how.name+"/"+tv.name, func(t *testing.T) {
				var slog serverLog
				scfg := serverConfig(t, pki, &slog)
				scfg.ClientAuth = tls.RequireAndVerifyClientCert
				scfg.ClientCAs = pki.Pool
				b := testutil.StartBackend(t, testutil.BackendOptions{TLS: scfg})

				cert1, key1 := pki.LeafPEM(t)
				cert2, key2 := pki.LeafPEM(t)
				dir := t.TempDir()
				certFile, keyFile := writeCertPair(t, dir, cert1, key1)
				reloader, err := credentials.NewCertificateReloader(certFile, keyFile, credentials.WithTickChannel(make(chan time.Time)))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { reloader.Close() })
				cache, err := credentials.NewSessionCache()
				if err != nil {
					t.Fatal(err)
				}
				cfg := clientConfig(pki, tv.v)
				cfg.GetClientCertificate = reloader.GetClientCertificate
				creds, err := how.creds(cfg, cache)
				if err != nil {
					t.Fatal(err)
				}
				callOnce(t, creds, b.Addr, "") // full, cert1
				callOnce(t, creds, b.Addr, "") // resumed, cert1
				writeCertPair(t, dir, cert2, key2)
				if err := reloader.Reload(); err != nil {
					t.Fatal(err)
				}
				callOnce(t, creds, b.Addr, "") // full, cert2
				callOnce(t, creds, b.Addr, "") // resumed, cert2
				s1, s2 := serialOf(t, cert1), serialOf(t, cert2)
				if got, want := slog.clientSerials(), []string{s1, s1, s2, s2}; !slices.Equal(got, want) {
					t.Errorf("server saw client certificates %v; want %v (cert1 %s, cert2 %s)", got, want, s1, s2)
				}
				if got, want := slog.handshakes(), []bool{false, true, false, true}; !slices.Equal(got, want) {
					t.Errorf("server saw DidResume %v; want %v", got, want)
				}
				if st := cache.Stats(); st.Invalidated != 1 || st.Resumed != 2 {
					t.Errorf("Stats() = %+v; want the stale session invalidated once and 2 resumed, whichever way the cache was given", st)
				}
			})
		}
	}
}

// resumptionRecorder records SessionCacheResumption events.
type resumptionRecorder struct {
	telemetry.Nop
	mu     sync.Mutex
	events []bool
}

func (r *resumptionRecorder) SessionCacheResumption(_ string, resumed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, resumed)
}

func (r *resumptionRecorder) all() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.events...)
}

// Issue 13 item 12: a session that is offered but not resumed (the server
// refuses its ticket, or crypto/tls drops it because the TLS version no
// longer matches) counts as Offered and NotResumed, never as Resumed, and
// the observer hears the same. Before, Hits counted both as hits.
func TestSessionCacheCountsOnlyResumedAsResumed(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tc := range []struct {
		name string
		// second makes the second connection's credentials after the
		// first connection stored its session.
		second func(t *testing.T, cache *credentials.SessionCache, rot *credentials.TicketKeyRotator) grpccreds.TransportCredentials
	}{
		{"server refuses the ticket", func(t *testing.T, cache *credentials.SessionCache, rot *credentials.TicketKeyRotator) grpccreds.TransportCredentials {
			if err := rot.Revoke(); err != nil {
				t.Fatal(err)
			}
			c, err := credentials.NewTLS(clientConfig(pki, tls.VersionTLS13), credentials.WithSessionCache(cache))
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{"crypto/tls drops a TLS 1.3 session for TLS 1.2", func(t *testing.T, cache *credentials.SessionCache, _ *credentials.TicketKeyRotator) grpccreds.TransportCredentials {
			c, err := credentials.NewTLS(clientConfig(pki, tls.VersionTLS12), credentials.WithSessionCache(cache))
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rot := newRotator(t, credentials.WithTickChannel(make(chan time.Time)))
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rot, serverConfig(t, pki, &slog))})
			obs := &resumptionRecorder{}
			cache, err := credentials.NewSessionCache(credentials.WithObserver(obs))
			if err != nil {
				t.Fatal(err)
			}
			first, err := credentials.NewTLS(clientConfig(pki, tls.VersionTLS13), credentials.WithSessionCache(cache))
			if err != nil {
				t.Fatal(err)
			}
			callOnce(t, first, b.Addr, "")
			if resumed(t, callOnce(t, tc.second(t, cache, rot), b.Addr, "")) {
				t.Fatal("second connection resumed")
			}
			st := cache.Stats()
			if st.Offered != 1 || st.Resumed != 0 || st.NotResumed != 1 {
				t.Errorf("Stats() = %+v; want 1 offered, 0 resumed, 1 not resumed", st)
			}
			if got := obs.all(); !slices.Equal(got, []bool{false}) {
				t.Errorf("observer heard resumptions %v; want [false]", got)
			}
			if got := slog.handshakes(); !slices.Equal(got, []bool{false, false}) {
				t.Errorf("server saw DidResume %v; want two full handshakes", got)
			}
		})
	}
}
