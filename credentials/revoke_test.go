package credentials_test

import (
	"context"
	"crypto/tls"
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

// Revoke with random keys replaces every key, current and previous, with
// one fresh key; rotation goes on from it.
func TestRevokeDropsEveryRandomKey(t *testing.T) {
	rot := newRotator(t, credentials.WithPreviousKeys(3), credentials.WithTickChannel(make(chan time.Time)))
	for range 3 {
		if err := rot.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	before, gen := credentials.TicketKeys(rot)
	if len(before) != 4 {
		t.Fatalf("%d keys after 3 rotations; want 4", len(before))
	}
	if err := rot.Revoke(); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	after, gen2 := credentials.TicketKeys(rot)
	if len(after) != 1 || slices.Contains(before, after[0]) || gen2 != gen+1 {
		t.Fatalf("after Revoke: %d keys (generation %d → %d), fresh=%v; want one fresh key and a new generation",
			len(after), gen, gen2, len(after) == 1 && !slices.Contains(before, after[0]))
	}
	if err := rot.Rotate(); err != nil {
		t.Fatal(err)
	}
	if keys, _ := credentials.TicketKeys(rot); len(keys) != 2 || keys[1] != after[0] {
		t.Fatalf("rotation after Revoke: %d keys; want the new key and the post-revocation one", len(keys))
	}
}

// recordingCache is a client session cache that keeps every session
// stored, tagged with the phase it was stored in.
type recordingCache struct {
	inner tls.ClientSessionCache
	phase *atomic.Int32
	mu    sync.Mutex
	puts  []recordedSession
}

type recordedSession struct {
	phase int32
	cs    *tls.ClientSessionState
}

func (c *recordingCache) Get(k string) (*tls.ClientSessionState, bool) { return c.inner.Get(k) }

func (c *recordingCache) Put(k string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.mu.Lock()
		c.puts = append(c.puts, recordedSession{phase: c.phase.Load(), cs: cs})
		c.mu.Unlock()
	}
	c.inner.Put(k, cs)
}

func (c *recordingCache) sessions(phase int32) []*tls.ClientSessionState {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*tls.ClientSessionState
	for _, p := range c.puts {
		if p.phase == phase {
			out = append(out, p.cs)
		}
	}
	return out
}

// fixedSession offers one session for every key.
type fixedSession struct{ cs *tls.ClientSessionState }

func (f fixedSession) Get(string) (*tls.ClientSessionState, bool) { return f.cs, true }
func (fixedSession) Put(string, *tls.ClientSessionState)          {}

// offerSession makes one TLS handshake to addr offering exactly cs and
// reports whether the server resumed it.
func offerSession(t *testing.T, pki *testutil.PKI, version uint16, addr string, cs *tls.ClientSessionState) bool {
	t.Helper()
	cfg := clientConfig(pki, version)
	cfg.ServerName = "127.0.0.1"
	cfg.NextProtos = []string{"h2"}
	cfg.ClientSessionCache = fixedSession{cs}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("handshake offering a recorded session: %v", err)
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().DidResume
}

// Issue 16: the keys are revoked while clients reconnect as fast as they
// can. No call fails; every client falls back to a full handshake; no
// session issued before the revocation resumes again (each is offered to
// the server once more afterwards), while a session issued after it does.
func TestRevokeDuringReconnectStorm(t *testing.T) {
	const clients = 4
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			rot := newRotator(t, credentials.WithPreviousKeys(6), credentials.WithTickChannel(make(chan time.Time)))
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rot, serverConfig(t, pki, nil))})
			var phase atomic.Int32 // 0 before Revoke is called, 1 after
			type client struct {
				cache   *recordingCache
				creds   grpccreds.TransportCredentials
				mu      sync.Mutex
				resumed []bool
			}
			cs := make([]*client, clients)
			for i := range cs {
				cache := &recordingCache{inner: tls.NewLRUClientSessionCache(8), phase: &phase}
				cfg := clientConfig(pki, tv.v)
				cfg.ClientSessionCache = cache
				creds, err := credentials.NewTLS(cfg)
				if err != nil {
					t.Fatal(err)
				}
				cs[i] = &client{cache: cache, creds: creds}
			}
			calls := func(c *client) []bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return append([]bool(nil), c.resumed...)
			}
			var (
				stop = make(chan struct{})
				errs = make(chan error, clients)
				wg   sync.WaitGroup
			)
			for _, c := range cs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						ai, err := tryCall(c.creds, b.Addr, "")
						if err != nil {
							errs <- err
							return
						}
						ti, _ := credentials.GRPCTLSInfo(ai)
						c.mu.Lock()
						c.resumed = append(c.resumed, ti.State.DidResume)
						c.mu.Unlock()
					}
				}()
			}
			waitCalls := func(min []int, msg string) {
				testutil.Eventually(t, 30*time.Second, func() bool {
					if len(errs) > 0 {
						return true
					}
					for i, c := range cs {
						if r := calls(c); len(r) < min[i] || (min[i] == 3 && countTrue(r) == 0) {
							return false
						}
					}
					return true
				}, msg)
			}
			waitCalls([]int{3, 3, 3, 3}, "clients did not resume before the revocation")
			phase.Store(1)
			at := make([]int, clients)
			for i, c := range cs {
				at[i] = len(calls(c))
			}
			if err := rot.Revoke(); err != nil {
				t.Fatal(err)
			}
			after := make([]int, clients)
			for i := range after {
				after[i] = at[i] + 4
			}
			waitCalls(after, "clients made no calls after the revocation")
			close(stop)
			wg.Wait()
			select {
			case err := <-errs:
				t.Fatalf("a call failed during the storm: %v", err)
			default:
			}

			for i, c := range cs {
				r := calls(c)[at[i]:]
				if !slices.Contains(r, false) {
					t.Errorf("client %d: resumed %v after the revocation; want a full handshake among them", i, r)
				}
				before := c.cache.sessions(0)
				if len(before) == 0 {
					t.Fatalf("client %d recorded no session before the revocation", i)
				}
				for j, s := range before {
					if offerSession(t, pki, tv.v, b.Addr, s) {
						t.Errorf("client %d: session %d of %d from before the revocation resumed", i, j+1, len(before))
					}
				}
				if latest := c.cache.sessions(1); len(latest) == 0 || !offerSession(t, pki, tv.v, b.Addr, latest[len(latest)-1]) {
					t.Errorf("client %d: its latest session, from after the revocation, did not resume", i)
				}
			}
		})
	}
}

// Issue 16: Revoke with a key file. The revoked keys are never taken from
// the file again (Err says why) and each replica encrypts with a local key
// meanwhile; once the operator writes a file with one fresh key, replicas
// take it (on Rotate or the next poll, or at once in Revoke) and resume
// each other's sessions again.
func TestRevokeWithKeyFile(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			k1 := newTicketKey(t)
			path := writeFile(t, "ticket.keys", keyFile(k1))
			var logA, logB serverLog
			rotA := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)))
			rotB := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)))
			a := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rotA, serverConfig(t, pki, &logA, "backend.test"))}).Addr
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rotB, serverConfig(t, pki, &logB, "backend.test"))}).Addr
			newClient := func() grpccreds.TransportCredentials {
				c, err := credentials.NewTLS(clientConfig(pki, tv.v), credentials.WithResumptionAcrossAddresses())
				if err != nil {
					t.Fatal(err)
				}
				return c
			}
			creds := newClient()
			callOnce(t, creds, a, "backend.test") // full
			callOnce(t, creds, b, "backend.test") // resumed: shared k1

			for name, rot := range map[string]*credentials.TicketKeyRotator{"A": rotA, "B": rotB} {
				if err := rot.Revoke(); err == nil || !strings.Contains(err.Error(), "every key in it was revoked") {
					t.Fatalf("replica %s: Revoke() = %v; want the file's keys reported as revoked", name, err)
				}
				if err := rot.Rotate(); err == nil || rot.Err() == nil {
					t.Fatalf("replica %s: Rotate() took a file of revoked keys (err %v)", name, err)
				}
				if keys, _ := credentials.TicketKeys(rot); len(keys) != 1 || keys[0] == k1 {
					t.Fatalf("replica %s: keys after Revoke and Rotate include the revoked key", name)
				}
			}
			callOnce(t, creds, a, "backend.test") // full: k1 is gone
			callOnce(t, creds, b, "backend.test") // full: A's local key is not B's
			callOnce(t, creds, a, "backend.test") // resumed: A's own local key

			// The documented procedure: write a file holding one fresh key.
			k2 := newTicketKey(t)
			testutil.WriteFileAtomic(t, path, keyFile(k2))
			for name, rot := range map[string]*credentials.TicketKeyRotator{"A": rotA, "B": rotB} {
				if err := rot.Rotate(); err != nil || rot.Err() != nil {
					t.Fatalf("replica %s: Rotate() with a fresh key file = %v", name, err)
				}
				if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k2}) {
					t.Fatalf("replica %s did not take the fresh key", name)
				}
			}
			fresh := newClient()
			callOnce(t, fresh, a, "backend.test") // full
			callOnce(t, fresh, b, "backend.test") // resumed: shared k2 again

			if got, want := logA.handshakes(), []bool{false, false, true, false}; !slices.Equal(got, want) {
				t.Errorf("replica A saw DidResume %v; want %v", got, want)
			}
			if got, want := logB.handshakes(), []bool{true, false, true}; !slices.Equal(got, want) {
				t.Errorf("replica B saw DidResume %v; want %v", got, want)
			}

			// A fresh key written before Revoke is taken by Revoke at once.
			k3 := newTicketKey(t)
			testutil.WriteFileAtomic(t, path, keyFile(k3))
			if err := rotA.Revoke(); err != nil {
				t.Fatalf("Revoke() with a fresh key already in the file = %v", err)
			}
			if keys, _ := credentials.TicketKeys(rotA); !slices.Equal(keys, [][32]byte{k3}) {
				t.Fatal("Revoke did not take the fresh key written before it")
			}
		})
	}
}

// FileStatus promises Err "the same as the reloader's Err" and counts a
// file whose contents were not taken as a failure, not a change. After
// Revoke, a key file holding only revoked keys is not taken: the
// rotator's Err said so, but FileStatus reported the reading as good and,
// when the file had just changed to those keys, as a change taken into use.
func TestKeyFileStatusAgreesWithErrAfterRevoke(t *testing.T) {
	k1, k2 := newTicketKey(t), newTicketKey(t)
	path := writeFile(t, "ticket.keys", keyFile(k1, k2))
	rot := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle())
	check := func(step string, wantFailures, wantChanges uint64) {
		t.Helper()
		st := rot.FileStatus()
		if err := rot.Err(); err == nil || st.Err == nil || st.Err.Error() != err.Error() {
			t.Errorf("%s: FileStatus().Err = %v, Err() = %v; want both the revoked-keys error", step, st.Err, err)
		}
		if st.Failures != wantFailures || st.Changes != wantChanges {
			t.Errorf("%s: FileStatus() counts %d failures, %d changes; want %d, %d", step, st.Failures, st.Changes, wantFailures, wantChanges)
		}
	}
	_ = rot.Revoke() // k1 and k2 revoked; the file holds nothing else
	check("Revoke", 1, 0)
	testutil.WriteFileAtomic(t, path, keyFile(k2)) // changed, but only to a revoked key
	_ = rot.Rotate()
	check("Rotate", 2, 0)
	if keys, _ := credentials.TicketKeys(rot); len(keys) != 1 || keys[0] == k1 || keys[0] == k2 {
		t.Fatal("a revoked key is in use")
	}
}
