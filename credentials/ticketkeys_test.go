package credentials_test

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

func newRotator(t testing.TB, opts ...credentials.TicketKeyOption) *credentials.TicketKeyRotator {
	t.Helper()
	r, err := credentials.NewTicketKeyRotator(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func rotatorConfig(t testing.TB, r *credentials.TicketKeyRotator, base *tls.Config) *tls.Config {
	t.Helper()
	cfg, err := r.ServerConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Tickets made before a rotation still resume while their key is in the
// window; once rotation pushes the key out, the client falls back to a
// full handshake and the call succeeds.
func TestRotationPushesKeyOut(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			ticks := make(chan time.Time)
			rot := newRotator(t, credentials.WithPreviousKeys(1), credentials.WithRotationInterval(time.Hour),
				credentials.WithTickChannel(ticks))
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{
				TLS: rotatorConfig(t, rot, serverConfig(t, pki, &slog))})
			creds, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			callOnce(t, creds, b.Addr, "") // full; ticket under k0
			callOnce(t, creds, b.Addr, "") // resumed

			// One rotation by the background loop: keys [k1 k0].
			_, gen := credentials.TicketKeys(rot)
			ticks <- time.Now()
			testutil.Eventually(t, 5*time.Second, func() bool {
				keys, g := credentials.TicketKeys(rot)
				return g == gen+1 && len(keys) == 2
			}, "rotator did not rotate on tick")
			callOnce(t, creds, b.Addr, "") // resumed with k0 (in the window); new ticket under k1

			// Two more rotations: [k3 k2], k1 is gone.
			for range 2 {
				if err := rot.Rotate(); err != nil {
					t.Fatal(err)
				}
			}
			callOnce(t, creds, b.Addr, "") // full, and the call succeeds
			callOnce(t, creds, b.Addr, "") // resumed again under the new keys

			if got, want := slog.handshakes(), []bool{false, true, true, false, true}; !slices.Equal(got, want) {
				t.Fatalf("server saw DidResume %v; want %v", got, want)
			}
		})
	}
}

// No call fails because of rotation, even when every rotation invalidates
// all earlier tickets while connections are being made.
func TestRotationFailsNoCall(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			rot := newRotator(t, credentials.WithPreviousKeys(0), credentials.WithTickChannel(make(chan time.Time)))
			var slog serverLog
			b := testutil.StartBackend(t, testutil.BackendOptions{
				TLS: rotatorConfig(t, rot, serverConfig(t, pki, &slog))})
			creds, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			calls := startCalling(t, creds, b.Addr)
			for i := range 10 {
				if err := rot.Rotate(); err != nil {
					t.Fatal(err)
				}
				calls.progress(2, 10*time.Second, fmt.Sprintf("rotation %d", i+1))
			}
			if err := calls.end(); err != nil {
				t.Fatalf("a call failed during rotations: %v", err)
			}
			hs := slog.handshakes()
			full := len(hs) - countTrue(hs)
			if full < 2 || countTrue(hs) == 0 {
				t.Fatalf("server saw %d full and %d resumed handshakes in %d calls; want both kinds", full, countTrue(hs), calls.ok.Load())
			}
		})
	}
}

// Two replicas reading one key file resume each other's sessions; replicas
// with their own keys do not. Connections go through a simulated L4 load
// balancer, so the client sees one address for both.
func TestReplicasShareKeyFile(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			k1, k2 := newTicketKey(t), newTicketKey(t)
			path := writeFile(t, "ticket.keys", keyFile(k1))
			var reported []error
			var repMu sync.Mutex
			onErr := func(err error) { repMu.Lock(); reported = append(reported, err); repMu.Unlock() }
			ticksA, ticksB := make(chan time.Time), make(chan time.Time)
			rotA := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(ticksA), credentials.WithErrorHandler(onErr))
			rotB := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithTickChannel(ticksB), credentials.WithErrorHandler(onErr))
			var logA, logB serverLog
			a := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rotA, serverConfig(t, pki, &logA, "vip.test"))})
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rotB, serverConfig(t, pki, &logB, "vip.test"))})
			lb := vipDialer("10.0.0.1:443", []string{a.Addr, b.Addr})
			creds, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			call := func() bool { return resumed(t, callOnce(t, creds, "vip.test:443", "", lb)) }

			if call() {
				t.Fatal("first connection (replica A) resumed")
			}
			if !call() {
				t.Fatal("second connection (replica B) did not resume replica A's session")
			}
			if got := logB.handshakes(); !slices.Equal(got, []bool{true}) {
				t.Fatalf("replica B saw DidResume %v; want [true]", got)
			}

			// Fleet rotation through the file, replicas polling: add k2 as a
			// decryption key, promote it, then drop k1. Every step resumes.
			reload := func(content []byte, want ...[32]byte) {
				t.Helper()
				testutil.WriteFileAtomic(t, path, content)
				ticksA <- time.Now()
				ticksB <- time.Now()
				for _, r := range []*credentials.TicketKeyRotator{rotA, rotB} {
					testutil.Eventually(t, 5*time.Second, func() bool {
						keys, _ := credentials.TicketKeys(r)
						return slices.Equal(keys, want) && r.Err() == nil
					}, "replica did not load the new key file")
				}
			}
			reload(keyFile(k1, k2), k1, k2)
			for i := range 2 {
				if !call() {
					t.Fatalf("connection %d after adding k2 did not resume", i+1)
				}
			}
			reload(keyFile(k2, k1), k2, k1)
			for i := range 2 {
				if !call() {
					t.Fatalf("connection %d after promoting k2 did not resume", i+1)
				}
			}
			reload(keyFile(k2), k2)
			for i := range 2 {
				if !call() {
					t.Fatalf("connection %d after dropping k1 did not resume", i+1)
				}
			}

			// A corrupt file keeps the last good keys and reports the error.
			keysBefore, genBefore := credentials.TicketKeys(rotA)
			testutil.WriteFileAtomic(t, path, []byte("not*base64\n"))
			ticksA <- time.Now()
			testutil.Eventually(t, 5*time.Second, func() bool { return rotA.Err() != nil }, "corrupt file not reported")
			ticksA <- time.Now() // the same error again is not reported twice
			ticksA <- time.Now()
			keysAfter, genAfter := credentials.TicketKeys(rotA)
			if genAfter != genBefore || !slices.Equal(keysAfter, keysBefore) {
				t.Fatal("corrupt key file replaced the last good keys")
			}
			if !strings.Contains(rotA.Err().Error(), "line 1: not standard base64") {
				t.Fatalf("Err() = %v; want a line number and the reason", rotA.Err())
			}
			repMu.Lock()
			nReported := len(reported)
			repMu.Unlock()
			if nReported != 1 {
				t.Fatalf("error handler called %d times; want 1 (once per distinct error)", nReported)
			}
			for i := 0; i < 2; i++ {
				if !call() {
					t.Fatalf("connection %d after a corrupt key file did not resume with the last good keys", i+1)
				}
			}

			// Control: replicas with their own keys never resume each other's.
			var logC, logD serverLog
			c := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &logC, "vip.test")})
			d := testutil.StartBackend(t, testutil.BackendOptions{TLS: serverConfig(t, pki, &logD, "vip.test")})
			lb2 := vipDialer("10.0.0.2:443", []string{c.Addr, d.Addr})
			for range 2 {
				callOnce(t, creds, "vip.test:443", "", lb2)
			}
			if got := logD.handshakes(); !slices.Equal(got, []bool{false}) {
				t.Fatalf("replica with its own keys saw DidResume %v; want [false]", got)
			}
		})
	}
}

// The real timers drive rotation and polling.
func TestRotatorBackgroundLoops(t *testing.T) {
	rnd := newRotator(t, credentials.WithRotationInterval(2*time.Millisecond), credentials.WithPreviousKeys(2))
	testutil.Eventually(t, 5*time.Second, func() bool {
		keys, gen := credentials.TicketKeys(rnd)
		return gen >= 4 && len(keys) == 3
	}, "random keys did not rotate on their interval")

	k1, k2 := newTicketKey(t), newTicketKey(t)
	path := writeFile(t, "keys", keyFile(k1))
	file := newRotator(t, credentials.WithTicketKeyFile(path), credentials.WithPollInterval(2*time.Millisecond))
	testutil.WriteFileAtomic(t, path, keyFile(k2, k1))
	testutil.Eventually(t, 5*time.Second, func() bool {
		keys, _ := credentials.TicketKeys(file)
		return slices.Equal(keys, [][32]byte{k2, k1})
	}, "key file change not picked up by polling")

	// Close is idempotent, and Rotate still works afterwards.
	for range 2 {
		if err := file.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rnd.Close(); err != nil {
		t.Fatal(err)
	}
	_, gen := credentials.TicketKeys(rnd)
	if err := rnd.Rotate(); err != nil {
		t.Fatal(err)
	}
	if _, g := credentials.TicketKeys(rnd); g != gen+1 {
		t.Fatalf("Rotate after Close: generation %d; want %d", g, gen+1)
	}
}

// ServerConfig keeps the base config's own GetConfigForClient.
func TestServerConfigWrapsGetConfigForClient(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	rot := newRotator(t, credentials.WithTickChannel(make(chan time.Time)))
	var slog serverLog
	var calls atomic.Int64
	inner := serverConfig(t, pki, &slog)
	base := &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		calls.Add(1)
		return inner, nil
	}}
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: rotatorConfig(t, rot, base)})
	creds, err := credentials.NewTLS(clientConfig(pki, tls.VersionTLS13))
	if err != nil {
		t.Fatal(err)
	}
	callOnce(t, creds, b.Addr, "")
	callOnce(t, creds, b.Addr, "")
	if err := rot.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := rot.Rotate(); err != nil { // default window keeps 6 previous keys
		t.Fatal(err)
	}
	callOnce(t, creds, b.Addr, "")
	if got, want := slog.handshakes(), []bool{false, true, true}; !slices.Equal(got, want) {
		t.Fatalf("server saw DidResume %v; want %v", got, want)
	}
	if calls.Load() != 3 {
		t.Fatalf("base GetConfigForClient called %d times; want 3", calls.Load())
	}
}

// rawBinaryKey is a 32-byte key written as raw bytes, not base64: none
// of its bytes is a newline, a space or '#'.
func rawBinaryKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = 0x80 + byte(i)
	}
	return k
}

func TestParseTicketKeys(t *testing.T) {
	k1, k2 := newTicketKey(t), newTicketKey(t)
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	many := strings.Repeat(b64(k1[:])+"\n", 101)
	for _, tc := range []struct {
		name    string
		in      string
		want    [][32]byte
		wantErr string
	}{
		{name: "one key", in: b64(k1[:]) + "\n", want: [][32]byte{k1}},
		{name: "no trailing newline", in: b64(k1[:]), want: [][32]byte{k1}},
		{name: "comments blanks spaces CRLF", in: "# keys\r\n\r\n  " + b64(k1[:]) + "  \r\n\t" + b64(k2[:]) + "\r\n# end\n",
			want: [][32]byte{k1, k2}},
		{name: "empty", in: "", wantErr: "no keys"},
		{name: "only comments", in: "# nothing\n\n", wantErr: "no keys"},
		{name: "short key", in: b64(k1[:]) + "\n" + b64(k2[:16]) + "\n", wantErr: "line 2: key is 16 bytes; want 32"},
		{name: "long key", in: b64(append(k1[:], k2[:16]...)), wantErr: "line 1: key is 48 bytes; want 32"},
		// Fixed bytes: a random key may hold a newline and fail on line 2.
		{name: "raw binary", in: string(rawBinaryKey()), wantErr: "line 1: not standard base64"},
		{name: "unpadded", in: base64.RawStdEncoding.EncodeToString(k1[:]), wantErr: "line 1: not standard base64"},
		{name: "url alphabet", in: strings.NewReplacer("+", "-", "/", "_").Replace(b64(bytes.Repeat([]byte{0xfb, 0xff}, 16))),
			wantErr: "line 1: not standard base64"},
		{name: "zero key", in: b64(make([]byte, 32)), wantErr: "line 1: key is all zero bytes"},
		{name: "too many", in: many, wantErr: "line 101: more than 100 keys"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := credentials.ParseTicketKeys([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseTicketKeys error = %v; want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ParseTicketKeys = %d keys, not the %d expected", len(got), len(tc.want))
			}
		})
	}
}

// FuzzParseTicketKeys checks that the parser never panics, that what it
// accepts is 1..100 non-zero keys that round-trip through the format, and
// that its errors never echo key-sized runs of the input.
func FuzzParseTicketKeys(f *testing.F) {
	k := [32]byte{1, 2, 3}
	f.Add(keyFile(k))
	f.Add(keyFile(k, [32]byte{9}))
	f.Add([]byte("# c\n\n" + base64.StdEncoding.EncodeToString(k[:16])))
	f.Add([]byte("not base64"))
	f.Add([]byte{})
	f.Add(k[:])
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := credentials.ParseTicketKeys(data)
		if err != nil {
			if keys != nil {
				t.Fatal("keys returned with an error")
			}
			msg := err.Error()
			for _, line := range strings.Split(string(data), "\n") {
				if line = strings.TrimSpace(line); len(line) >= 16 && strings.Contains(msg, line) {
					t.Fatalf("error %q echoes input line %q", msg, line)
				}
			}
			return
		}
		if len(keys) == 0 || len(keys) > 100 {
			t.Fatalf("accepted %d keys", len(keys))
		}
		for _, key := range keys {
			if key == ([32]byte{}) {
				t.Fatal("accepted an all-zero key")
			}
		}
		again, err := credentials.ParseTicketKeys(keyFile(keys...))
		if err != nil || !slices.Equal(again, keys) {
			t.Fatalf("re-encoded keys do not parse back: %v", err)
		}
	})
}

// errorMustNotLeak checks that an error starts with the package name and
// contains no key material.
func errorMustNotLeak(t *testing.T, err error, keys ...[32]byte) {
	t.Helper()
	if !strings.HasPrefix(err.Error(), "credentials: ") {
		t.Errorf("error %q does not start with the package name", err)
	}
	for _, k := range keys {
		if strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(k[:])) || strings.Contains(err.Error(), string(k[:])) {
			t.Errorf("error %q contains key material", err)
		}
	}
}
