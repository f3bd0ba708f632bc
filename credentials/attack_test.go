package credentials_test

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// Attacks on the TLS half made as a careless operator, a hostile tenant and
// a hostile client would, each compared with what plain grpc-go and
// crypto/tls do. Every test here failed before its fix.

// A careless operator follows the README ("NewSessionCache implements
// tls.ClientSessionCache") and sets the cache as tls.Config.ClientSessionCache
// instead of passing WithSessionCache. The client certificate comes from a
// CertificateReloader. After a rotation the server must see the new
// certificate, as it does with WithSessionCache (issue 13 item 6): NewTLS
// treated the cache as a foreign one and offered sessions made with the old
// certificate on every resumed connection.
func TestSessionCacheInConfigDropsSessionsOfOldClientCert(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
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
			cfg.ClientSessionCache = cache // not WithSessionCache
			creds, err := credentials.NewTLS(cfg)
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
			if st := cache.Stats(); st.Resumed != 2 {
				t.Errorf("Stats() = %+v; want 2 resumed, seen by the cache as with WithSessionCache", st)
			}
		})
	}
}

// The same careless operator sets a tenant's view (ForTenant) as
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
