package credentials_test

import (
	"crypto/tls"
	"slices"
	"testing"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// sharedKeyReplicas starts n gRPC backends for backend.test at n addresses whose
// ticket keys come from one key file, and returns their addresses and
// server logs.
func sharedKeyReplicas(t *testing.T, pki *testutil.PKI, n int) ([]string, []*serverLog) {
	t.Helper()
	path := writeFile(t, "ticket.keys", keyFile(newTicketKey(t)))
	addrs, logs := make([]string, n), make([]*serverLog, n)
	for i := range n {
		rot := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)))
		logs[i] = &serverLog{}
		addrs[i] = testutil.StartBackend(t, testutil.BackendOptions{
			TLS: rotatorConfig(t, rot, serverConfig(t, pki, logs[i], "backend.test"))}).Addr
	}
	return addrs, logs
}

// Issue 16: with WithResumptionAcrossAddresses, replicas at different
// addresses that share a ticket key file resume each other's sessions (the
// first connection to each new replica resumes; without the option every
// one is full, 0%); a replica with its own keys gets a full handshake and
// the call succeeds; an address with its own session uses it; sessions
// never cross tenants or client identities.
func TestResumptionAcrossAddressesSharingKeys(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			addrs, logs := sharedKeyReplicas(t, pki, 3)
			var ownLog serverLog
			own := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &ownLog, "backend.test")}).Addr
			a, b, c := addrs[0], addrs[1], addrs[2]
			serverSaw := func() []bool {
				var all []bool
				for _, l := range append(logs, &ownLog) {
					all = append(all, l.handshakes()...)
				}
				return all
			}

			// Without the option (today's behaviour): every new address is full.
			perAddr, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			for _, addr := range addrs {
				if resumed(t, callOnce(t, perAddr, addr, "backend.test")) {
					t.Fatalf("per-address credentials resumed at new address %s", addr)
				}
			}
			if n := countTrue(serverSaw()); n != 0 {
				t.Fatalf("servers saw %d resumptions without the option; want 0", n)
			}

			cache, err := credentials.NewSessionCache()
			if err != nil {
				t.Fatal(err)
			}
			across := func(tenant string, certs ...tls.Certificate) grpccreds.TransportCredentials {
				cfg := clientConfig(pki, tv.v)
				cfg.Certificates = certs
				cr, err := credentials.NewTLS(cfg, credentials.WithSessionCache(cache), credentials.WithTenant(tenant),
					credentials.WithResumptionAcrossAddresses())
				if err != nil {
					t.Fatal(err)
				}
				return cr
			}
			t1 := across("t1")
			var got []bool
			for _, addr := range []string{a, b, c, a, own, own} {
				got = append(got, resumed(t, callOnce(t, t1, addr, "backend.test")))
			}
			// a full; b and c resume a's and b's sessions; a resumes its own;
			// own cannot decrypt the latest session (a's ticket): full; then
			// it resumes its own.
			if want := []bool{false, true, true, true, false, true}; !slices.Equal(got, want) {
				t.Fatalf("across addresses: resumed %v; want %v", got, want)
			}
			st := cache.Stats()
			if st.OfferedOtherAddr != 3 || st.Resumed != 4 || st.NotResumed != 1 {
				t.Errorf("Stats() = %+v; want 3 offered from another address, 4 resumed, 1 not resumed", st)
			}

			// Another tenant, and another client identity in t1, start full.
			if resumed(t, callOnce(t, across("t2"), b, "backend.test")) {
				t.Error("tenant t2 resumed tenant t1's session from another address")
			}
			if resumed(t, callOnce(t, across("t1", pki.Leaf(t)), c, "backend.test")) {
				t.Error("credentials with a client certificate resumed a session made without one")
			}
		})
	}
}
