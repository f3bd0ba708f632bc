package credentials_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// hangLimit bounds how long a test waits for something that must not hang
// (Close, a reading refused at once). It is a hang detector, not a timing
// assertion: a correct implementation returns at once.
const hangLimit = 30 * time.Second

// returnsPromptly runs fn on a goroutine and fails the test if it has not
// returned within hangLimit.
func returnsPromptly(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(hangLimit):
		t.Fatalf("%s did not return within %v", what, hangLimit)
	}
}

// mkfifo makes a named pipe that nobody ever writes.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
}

// Issue 13 item 10: a key or certificate file that is a FIFO nobody writes
// (or a device) is refused at once instead of blocking the poller, the
// last good contents stay, and Close returns.
func TestKeyFileFIFODoesNotBlockPollerOrClose(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	mkfifo(t, fifo)

	returnsPromptly(t, "NewTicketKeyRotator on a FIFO", func() {
		_, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(fifo))
		if err == nil || !strings.Contains(err.Error(), `ticket key file "`+fifo+`" is not a regular file (named pipe)`) {
			t.Errorf("NewTicketKeyRotator(FIFO) error = %v; want it to say the file is a named pipe", err)
		}
	})
	returnsPromptly(t, "NewTicketKeyRotator on /dev/zero", func() {
		_, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile("/dev/zero"))
		if err == nil || !strings.Contains(err.Error(), "is not a regular file (character device)") {
			t.Errorf("NewTicketKeyRotator(/dev/zero) error = %v; want it refused as a device", err)
		}
	})

	// A good file later replaced by a FIFO: the background poll is refused,
	// the keys stay, and Close returns.
	k1 := newTicketKey(t)
	path := writeFile(t, "ticket.keys", keyFile(k1))
	ticks := make(chan time.Time)
	rot, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(path), credentials.WithTickChannel(ticks))
	if err != nil {
		t.Fatal(err)
	}
	fifo2 := filepath.Join(filepath.Dir(path), "fifo2")
	mkfifo(t, fifo2)
	if err := os.Rename(fifo2, path); err != nil {
		t.Fatal(err)
	}
	ticks <- time.Now()
	testutil.Eventually(t, hangLimit, func() bool { return rot.Err() != nil }, "FIFO key file not reported")
	if err := rot.Err(); !strings.Contains(err.Error(), "named pipe") {
		t.Fatalf("Err() = %v; want the FIFO named", err)
	}
	errorMustNotLeak(t, rot.Err(), k1)
	if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k1}) {
		t.Fatal("a FIFO key file replaced the last good keys")
	}
	ticks <- time.Now() // the loop is not stuck: it takes another tick
	returnsPromptly(t, "TicketKeyRotator.Close", func() { rot.Close() })

	// The same for a certificate reloader.
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	certPEM, keyPEM := pki.LeafPEM(t)
	cdir := t.TempDir()
	certFile, keyFile := writePair(t, cdir, certPEM, keyPEM)
	rel, err := credentials.NewCertificateReloader(certFile, keyFile, credentials.WithTickChannel(make(chan time.Time)))
	if err != nil {
		t.Fatal(err)
	}
	fifo3 := filepath.Join(cdir, "fifo3")
	mkfifo(t, fifo3)
	if err := os.Rename(fifo3, keyFile); err != nil {
		t.Fatal(err)
	}
	returnsPromptly(t, "CertificateReloader.Reload on a FIFO", func() {
		if err := rel.Reload(); err == nil || !strings.Contains(err.Error(), `key file "`+keyFile+`" is not a regular file (named pipe)`) {
			t.Errorf("Reload() = %v; want the FIFO key file named", err)
		}
	})
	if c, _ := rel.GetCertificate(nil); c.Leaf.SerialNumber.String() != pemSerial(t, certPEM) {
		t.Fatal("a FIFO key file replaced the last good certificate")
	}
	returnsPromptly(t, "CertificateReloader.Close", func() { rel.Close() })
}

// hungMount stands for a file system that stops answering: while hung,
// every open blocks until released.
type hungMount struct {
	hung    atomic.Bool
	entered chan string
	release chan struct{}
	once    sync.Once
}

func newHungMount(t *testing.T) *hungMount {
	h := &hungMount{entered: make(chan string, 16), release: make(chan struct{})}
	t.Cleanup(h.unhang) // before the leak check looks: the stuck readings return
	return h
}

func (h *hungMount) beforeOpen(path string) {
	if !h.hung.Load() {
		return
	}
	h.entered <- path
	<-h.release
}

func (h *hungMount) unhang() { h.once.Do(func() { h.hung.Store(false); close(h.release) }) }

// Issue 13 item 10: a key file on a hung mount neither blocks the poller
// nor Close; a reading is bounded by the read timeout, and while it is
// stuck no second one piles up behind it.
func TestKeyFileHungMountBoundedAndCloseReturns(t *testing.T) {
	k1, k2 := newTicketKey(t), newTicketKey(t)

	// Close while the background loop is stuck in a reading.
	t.Run("Close", func(t *testing.T) {
		h := newHungMount(t)
		path := writeFile(t, "ticket.keys", keyFile(k1))
		ticks := make(chan time.Time)
		rot, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(path), credentials.WithTickChannel(ticks),
			credentials.WithReadTimeout(time.Hour), credentials.WithBeforeOpen(h.beforeOpen))
		if err != nil {
			t.Fatal(err)
		}
		h.hung.Store(true)
		ticks <- time.Now()
		if got := <-h.entered; got != path {
			t.Fatalf("reading entered %q; want %q", got, path)
		}
		returnsPromptly(t, "Close with a reading stuck on a hung mount", func() { rot.Close() })
		if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k1}) {
			t.Fatal("keys changed")
		}
	})

	// Explicit readings: bounded by the timeout, no pile-up, recovery.
	t.Run("Timeout", func(t *testing.T) {
		h := newHungMount(t)
		path := writeFile(t, "ticket.keys", keyFile(k1))
		rot, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)),
			credentials.WithReadTimeout(20*time.Millisecond), credentials.WithBeforeOpen(h.beforeOpen), credentials.NoSettle())
		if err != nil {
			t.Fatal(err)
		}
		defer rot.Close()
		testutil.WriteFileAtomic(t, path, keyFile(k2, k1))
		h.hung.Store(true)
		err = rot.Rotate()
		if err == nil || !strings.Contains(err.Error(), `ticket key file "`+path+`": read timed out (hung mount?) after 20ms`) {
			t.Fatalf("Rotate() on a hung mount = %v; want a read timeout naming the file", err)
		}
		errorMustNotLeak(t, err, k1, k2)
		<-h.entered
		for range 3 {
			err = rot.Rotate()
			if err == nil || !strings.Contains(err.Error(), "an earlier read has not returned") {
				t.Fatalf("Rotate() with a reading still stuck = %v; want it refused without a new reading", err)
			}
		}
		if len(h.entered) != 0 {
			t.Fatal("a second reading started while the first was stuck")
		}
		if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k1}) {
			t.Fatal("keys changed while the mount hung")
		}
		if st := rot.FileStatus(); st.TimedOut != 1 || st.Failures != 4 || st.Changes != 0 || st.Err == nil {
			t.Fatalf("FileStatus while hung = %+v; want 1 timed out of 4 failures, no change, an error", st)
		}
		h.unhang()
		testutil.Eventually(t, hangLimit, func() bool { return rot.Rotate() == nil }, "no recovery after the mount answered")
		if st := rot.FileStatus(); st.Changes != 1 || st.Err != nil || !slices.Equal(st.Files, []string{path}) {
			t.Fatalf("FileStatus after recovery = %+v; want 1 change, no error", st)
		}
		if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k2, k1}) {
			t.Fatalf("after recovery, keys are not the file's")
		}
	})
}

// Issue 13 item 10: a key file caught half-way through an in-place write
// is not applied; the complete file is, at the next reading.
func TestKeyFileCaughtMidWriteNotApplied(t *testing.T) {
	k1, k2, k3, k4 := newTicketKey(t), newTicketKey(t), newTicketKey(t), newTicketKey(t)
	full := keyFile(k3, k4, k1, k2)
	path := writeFile(t, "ticket.keys", keyFile(k1, k2))
	var finishWrite func()
	rot, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(path), credentials.WithTickChannel(make(chan time.Time)),
		credentials.WithSettle(func(<-chan struct{}) error {
			if finishWrite != nil {
				finishWrite() // the writer goes on while the reloader waits
				finishWrite = nil
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer rot.Close()

	// An in-place write (truncate, then write) stopped after the first two
	// keys: a file that parses, but only half of the new set.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	half := len(keyFile(k3, k4)) // full starts with it
	if _, err := f.Write(full[:half]); err != nil {
		t.Fatal(err)
	}
	if _, err := credentials.ParseTicketKeys(full[:half]); err != nil {
		t.Fatalf("the half-written file does not parse (%v); the test needs one that does", err)
	}
	finishWrite = func() {
		if _, err := f.Write(full[half:]); err != nil {
			t.Error(err)
		}
	}
	err = rot.Rotate()
	if err == nil || !strings.Contains(err.Error(), `ticket key file "`+path+`" changed while being read; not applied`) {
		t.Fatalf("Rotate() during an in-place write = %v; want it not applied", err)
	}
	errorMustNotLeak(t, err, k1, k2, k3, k4)
	if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k1, k2}) {
		t.Fatalf("keys after a torn read: %d keys; want the last good 2", len(keys))
	}
	// The write is complete and the file stable: it is applied whole.
	if err := rot.Rotate(); err != nil {
		t.Fatal(err)
	}
	if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, [][32]byte{k3, k4, k1, k2}) {
		t.Fatalf("keys after the write completed: %d keys; want all 4 of the new file", len(keys))
	}
	if st := rot.FileStatus(); st.Readings != 3 || st.Failures != 1 || st.Changes != 1 || st.TimedOut != 0 {
		t.Fatalf("FileStatus = %+v; want 3 readings (constructor, torn, whole), 1 failure, 1 change", st)
	}
}

// Certificate, key and trust-bundle files are bounded in size.
func TestCertificateFilesSizeBounded(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	certPEM, keyPEM := pki.LeafPEM(t)
	pad := func(b []byte, n int) []byte { return append(bytes.Repeat([]byte("\n"), n), b...) }
	for _, tc := range []struct {
		name    string
		run     func() error
		wantErr string
	}{
		{"certificate", func() error {
			return reloaderErr(writeFile(t, "big.crt", pad(certPEM, 1<<20)), writeFile(t, "k.pem", keyPEM))
		}, `big.crt" is larger than 1048576 bytes`},
		{"key", func() error {
			return reloaderErr(writeFile(t, "c.pem", certPEM), writeFile(t, "big.key", pad(keyPEM, 1<<20)))
		}, `big.key" is larger than 1048576 bytes`},
		{"trust bundle", func() error {
			b, err := credentials.NewTrustBundle(writeFile(t, "big.pem", pad(pki.CAPEM, 4<<20)))
			if err == nil {
				b.Close()
			}
			return err
		}, `big.pem" is larger than 4194304 bytes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v; want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// kubeletDir lays out a directory exactly as the kubelet's atomic writer
// does for a mounted Secret: the data lives in a timestamped directory
// "..2026_12_01_20_00_00.000000001", "..data" is a symlink to it, and each
// user-visible file is a symlink "name -> ..data/name". An update writes a
// new timestamped directory, points a new "..data_tmp" symlink at it,
// renames "..data_tmp" over "..data" (the one atomic step) and removes the
// old directory.
type kubeletDir struct {
	dir string
	cur string
	n   int
}

func newKubeletDir(t *testing.T, files map[string][]byte) *kubeletDir {
	t.Helper()
	k := &kubeletDir{dir: t.TempDir()}
	k.update(t, files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(k.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

func (k *kubeletDir) path(name string) string { return filepath.Join(k.dir, name) }

// update publishes a new generation of files; it may run off the test
// goroutine and returns its error.
func (k *kubeletDir) update(t testing.TB, files map[string][]byte) {
	if err := k.tryUpdate(files); err != nil {
		t.Error(err)
	}
}

func (k *kubeletDir) tryUpdate(files map[string][]byte) error {
	k.n++
	ts := fmt.Sprintf("..2026_12_01_20_00_00.%09d", k.n)
	if err := os.Mkdir(filepath.Join(k.dir, ts), 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(k.dir, ts, name), data, 0o644); err != nil {
			return err
		}
	}
	tmp := filepath.Join(k.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(k.dir, "..data")); err != nil {
		return err
	}
	if k.cur != "" {
		if err := os.RemoveAll(filepath.Join(k.dir, k.cur)); err != nil {
			return err
		}
	}
	k.cur = ts
	return nil
}

// Issue 12 (Kubernetes-mounted keys and certificates): across Secret
// updates made the kubelet's way, under concurrent reloads, a certificate
// is never taken with a key of another generation and a ticket key set is
// never taken in part, nor a trust bundle; the last update is in force at
// the end.
func TestKubeletSecretSwapConsistent(t *testing.T) {
	const generations = 25
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	type gen struct {
		files  map[string][]byte
		serial string
		keys   [][32]byte
		ca     *x509.CertPool
	}
	gens := make([]gen, generations)
	serialGen := map[string]int{}
	for i := range gens {
		certPEM, keyPEM := pki.LeafPEM(t)
		keys := [][32]byte{newTicketKey(t), newTicketKey(t), newTicketKey(t)}
		ca1, ca2 := testutil.NewPKI(t, testutil.ECDSAP256), testutil.NewPKI(t, testutil.ECDSAP256)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(bundlePEM(ca1, ca2))
		gens[i] = gen{
			files:  map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ticket.keys": keyFile(keys...), "ca.crt": bundlePEM(ca1, ca2)},
			serial: pemSerial(t, certPEM),
			keys:   keys,
			ca:     pool,
		}
		serialGen[gens[i].serial] = i
	}
	kd := newKubeletDir(t, gens[0].files)
	opts := []credentials.ReloadOption{credentials.WithTickChannel(make(chan time.Time)), credentials.NoSettle()}
	rel, err := credentials.NewCertificateReloader(kd.path("tls.crt"), kd.path("tls.key"), opts[0], opts[1])
	if err != nil {
		t.Fatal(err)
	}
	defer rel.Close()
	rot, err := credentials.NewTicketKeyRotator(credentials.WithTicketKeyFile(kd.path("ticket.keys")), opts[0], opts[1])
	if err != nil {
		t.Fatal(err)
	}
	defer rot.Close()
	tb, err := credentials.NewTrustBundle(kd.path("ca.crt"), opts[0], opts[1])
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()

	checkCert := func() error {
		c, _ := rel.GetCertificate(nil)
		g, ok := serialGen[c.Leaf.SerialNumber.String()]
		if !ok {
			return fmt.Errorf("served certificate serial %s is no generation's", c.Leaf.SerialNumber)
		}
		if !c.PrivateKey.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(c.Leaf.PublicKey) {
			return fmt.Errorf("certificate of generation %d served with another generation's key", g)
		}
		return nil
	}
	checkKeys := func() error {
		keys, _ := credentials.TicketKeys(rot)
		for _, g := range gens {
			if slices.Equal(keys, g.keys) {
				return nil
			}
		}
		return fmt.Errorf("ticket keys (%d) are not one generation's whole set", len(keys))
	}
	checkBundle := func() error {
		for _, g := range gens {
			if tb.Pool().Equal(g.ca) {
				return nil
			}
		}
		return errors.New("trust bundle is not one generation's whole bundle")
	}
	// Only "the files changed under the reading" may fail a reload; a key
	// mismatch would mean a pair of two generations was read.
	benign := func(err error) bool {
		return err == nil || strings.Contains(err.Error(), "changed while being read") || strings.Contains(err.Error(), "kept changing")
	}

	var (
		stop  = make(chan struct{})
		wg    sync.WaitGroup
		errs  = make(chan error, 16)
		loads atomic.Int64
	)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	for _, reload := range []func() error{rel.Reload, rel.Reload, rot.Rotate, rot.Rotate, tb.Reload} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := reload()
				if !benign(err) {
					report(err)
					return
				}
				if err == nil {
					loads.Add(1)
				}
				if err := checkCert(); err != nil {
					report(err)
					return
				}
				if err := checkKeys(); err != nil {
					report(err)
					return
				}
				if err := checkBundle(); err != nil {
					report(err)
					return
				}
			}
		}()
	}
	for i := 1; i < generations; i++ {
		if err := kd.tryUpdate(gens[i].files); err != nil {
			t.Fatal(err)
		}
		before := loads.Load()
		testutil.Eventually(t, hangLimit, func() bool { return loads.Load() > before+4 || len(errs) > 0 }, "reloads stopped")
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if err := rel.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := rot.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := tb.Reload(); err != nil {
		t.Fatal(err)
	}
	last := gens[generations-1]
	if !tb.Pool().Equal(last.ca) {
		t.Fatal("the last Secret update's trust bundle is not in force")
	}
	if c, _ := rel.GetCertificate(nil); c.Leaf.SerialNumber.String() != last.serial {
		t.Fatal("the last Secret update's certificate is not in force")
	}
	if keys, _ := credentials.TicketKeys(rot); !slices.Equal(keys, last.keys) {
		t.Fatal("the last Secret update's ticket keys are not in force")
	}
}
