package credentials

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/grpclog"
)

// Bounds and defaults of the file readers behind TicketKeyRotator (with
// WithTicketKeyFile), CertificateReloader and TrustBundle.
const (
	// DefaultReadTimeout bounds one reading of a reloader's files (open,
	// stat and read of every file) unless WithReadTimeout is given. A file
	// on a hung network mount fails the reading with an error instead of
	// blocking the poller and Close.
	DefaultReadTimeout = 5 * time.Second
	// DefaultSettleDelay is how long a reloader waits before reading a
	// changed file a second time; the change is applied only if both
	// readings agree. It is shortened to the poll interval when that is
	// shorter.
	DefaultSettleDelay = time.Second

	// maxCertFileSize bounds a certificate or private key PEM file.
	maxCertFileSize = 1 << 20
	// maxBundleFileSize bounds a trust bundle (CA certificates) PEM file.
	maxBundleFileSize = 4 << 20
	// readAttempts bounds how often one reading retries when a file was
	// replaced while it was being read (a Kubernetes secret update).
	readAttempts = 3
)

// WithReadTimeout bounds how long one reading of the files may take (open,
// stat and read, for every file of the reloader). A reading that takes
// longer fails with an error naming the file; the last good contents stay
// in use and no further reading starts until the stuck one has returned.
// It must be positive. Default DefaultReadTimeout.
func WithReadTimeout(d time.Duration) ReloadOption {
	return reloadOptionFunc(func(o *reloadOptions) { o.readTimeout = d })
}

var (
	// errClosed is returned (wrapped) by a reading interrupted by Close.
	errClosed = errors.New("closed while reading")
	// errTimedOut is returned (wrapped) by a reading abandoned after the
	// read timeout.
	errTimedOut = errors.New("read timed out (hung mount?)")
)

// fileSpec names one file of a reading: kind is what it is for ("ticket
// key file", "certificate file", ...), used in every error.
type fileSpec struct {
	kind  string
	path  string
	limit int64
}

// logger reports file changes and refusals (component
// "grpcreuse-credentials"): refusals at warning level, changes at
// verbosity 2; never per handshake.
var logger = grpclog.Component("grpcreuse-credentials")

// snapshot is one consistent reading of a reloader's files.
type snapshot struct {
	data  [][]byte
	infos []fs.FileInfo
	sum   [sha256.Size]byte
}

// fileReader reads a reloader's files so that they cannot hang or tear:
//   - only regular files are read (a FIFO, socket or device is refused
//     before anything blocks; FIFOs are opened non-blocking), and at most
//     limit bytes of each;
//   - one reading (all files) runs on its own goroutine and is abandoned
//     after timeout; while an abandoned reading has not returned, no new
//     one starts, so a hung mount costs one goroutine, not one per poll;
//   - a reading is consistent: after the last file is read every file is
//     stat'ed again by name and must still be the file that was read (same
//     inode, size and modification time), else the reading is retried, so
//     a Kubernetes "..data" symlink swap between two files is never seen
//     as a pair of different generations;
//   - a reading whose contents differ from the last stable one is taken a
//     second time after the settle delay, and used only if both agree, so
//     a file being written in place is not applied half-written.
//
// Its methods are safe for concurrent use; readings are serialised.
type fileReader struct {
	specs   []fileSpec
	timeout time.Duration
	settle  time.Duration
	hooks   fileHooks

	quit     chan struct{} // closed by close: interrupts waits
	quitOnce sync.Once

	stuck atomic.Pointer[chan struct{}] // done channel of an abandoned reading

	mu     sync.Mutex // serialises readings; guards stable
	stable [sha256.Size]byte

	statsMu sync.Mutex // guards stats; never held with mu's callers' locks
	stats   fileStats
}

// fileHooks are test hooks (see export_test.go); zero values mean none.
type fileHooks struct {
	beforeOpen func(path string)                // called on the reading goroutine before each open
	settle     func(quit <-chan struct{}) error // replaces the settle wait
}

func newFileReader(o reloadOptions, specs ...fileSpec) (*fileReader, error) {
	if o.readTimeout <= 0 {
		return nil, fmt.Errorf("credentials: WithReadTimeout is %v; must be positive", o.readTimeout)
	}
	return &fileReader{
		specs:   specs,
		timeout: o.readTimeout,
		settle:  min(DefaultSettleDelay, o.pollInterval),
		hooks:   o.fileHooks,
		quit:    make(chan struct{}),
	}, nil
}

// close interrupts readings and settle waits in progress; later readings
// are bounded by the timeout alone.
func (r *fileReader) close() { r.quitOnce.Do(func() { close(r.quit) }) }

// readInitial takes one reading and accepts it as stable: a constructor
// must fail or succeed now, and a file caught mid-write at start is
// replaced by its complete version at the next poll.
func (r *fileReader) readInitial() ([][]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, err := r.take()
	if err != nil {
		return nil, err
	}
	r.stable = s.sum
	r.statsMu.Lock()
	r.stats.readings++
	r.stats.lastChange = time.Now()
	r.statsMu.Unlock()
	return s.data, nil
}

// read takes a reading; if it differs from the last stable one, it waits
// the settle delay and takes another, and returns the contents only when
// both agree. changed reports that they differ from the last stable
// contents.
func (r *fileReader) read() (data [][]byte, changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s1, err := r.take()
	if err != nil {
		return nil, false, err
	}
	if s1.sum == r.stable {
		return s1.data, false, nil
	}
	if err := r.wait(); err != nil {
		return nil, false, fmt.Errorf("credentials: %s %q: %w", r.specs[0].kind, r.specs[0].path, err)
	}
	s2, err := r.take()
	if err != nil {
		return nil, false, err
	}
	if s2.sum != s1.sum {
		i := r.firstDiff(s1, s2)
		return nil, false, fmt.Errorf("credentials: %s %q changed while being read; not applied "+
			"(write it to a temporary file in the same directory and rename it into place)", r.specs[i].kind, r.specs[i].path)
	}
	r.stable = s2.sum
	return s2.data, true, nil
}

func (r *fileReader) firstDiff(a, b snapshot) int {
	for i := range a.data {
		if string(a.data[i]) != string(b.data[i]) || !os.SameFile(a.infos[i], b.infos[i]) {
			return i
		}
	}
	return 0
}

func (r *fileReader) wait() error {
	if r.hooks.settle != nil {
		return r.hooks.settle(r.quit)
	}
	if r.settle <= 0 {
		return nil
	}
	select {
	case <-r.quit:
		return nil // after Close: read again at once, so a caller still gets an answer
	default:
	}
	t := time.NewTimer(r.settle)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-r.quit:
		return errClosed // Close interrupts a reading in progress
	}
}

// take runs one consistent reading on its own goroutine, bounded by the
// timeout and interrupted by close.
func (r *fileReader) take() (snapshot, error) {
	first := r.specs[0]
	if st := r.stuck.Load(); st != nil {
		select {
		case <-*st:
			r.stuck.CompareAndSwap(st, nil)
		default:
			return snapshot{}, fmt.Errorf("credentials: %s %q: an earlier read has not returned after %v (hung mount?); not reading again until it does",
				first.kind, first.path, r.timeout)
		}
	}
	type result struct {
		s   snapshot
		err error
	}
	// Whether Close came before this reading, decided before it starts: a
	// reading begun after Close is bounded by the timeout alone (a caller
	// still gets an answer), one that Close overtakes is interrupted. Looked
	// at after the reading started, a Close that came while this goroutine
	// waited to run (its reading already stuck on a hung mount) was taken
	// for an earlier one, and Close waited out the whole read timeout.
	quit := r.quit
	select {
	case <-quit:
		quit = nil
	default:
	}
	done := make(chan struct{})
	res := make(chan result, 1)
	go func() {
		defer close(done)
		s, err := r.takeAttempts()
		res <- result{s, err}
	}()
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case out := <-res:
		return out.s, out.err
	case <-t.C:
		r.stuck.Store(&done)
		return snapshot{}, fmt.Errorf("credentials: %s %q: %w after %v; keeping the last good contents",
			first.kind, first.path, errTimedOut, r.timeout)
	case <-quit:
		r.stuck.Store(&done)
		return snapshot{}, fmt.Errorf("credentials: %s %q: %w", first.kind, first.path, errClosed)
	}
}

func (r *fileReader) takeAttempts() (snapshot, error) {
	var changed int
	for attempt := range readAttempts {
		s, i, err := r.takeOnce()
		if errors.Is(err, fs.ErrNotExist) && attempt < readAttempts-1 {
			continue // a secret swap removed the directory just resolved: read again
		}
		if err != nil {
			return snapshot{}, err
		}
		if i < 0 {
			return s, nil
		}
		changed = i
	}
	sp := r.specs[changed]
	return snapshot{}, fmt.Errorf("credentials: %s %q kept changing while being read (%d attempts); not applied", sp.kind, sp.path, readAttempts)
}

// takeOnce reads every file, then checks that each name still refers to
// the file read. It returns the index of a file that changed, or -1.
func (r *fileReader) takeOnce() (snapshot, int, error) {
	s := snapshot{data: make([][]byte, len(r.specs)), infos: make([]fs.FileInfo, len(r.specs))}
	h := sha256.New()
	for i, sp := range r.specs {
		data, fi, err := r.readOne(sp)
		if err != nil {
			return snapshot{}, -1, err
		}
		s.data[i], s.infos[i] = data, fi
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(data)))
		h.Write(n[:])
		h.Write(data)
	}
	for i, sp := range r.specs {
		fi, err := os.Stat(sp.path)
		if err != nil || !sameVersion(fi, s.infos[i]) {
			return snapshot{}, i, nil
		}
	}
	h.Sum(s.sum[:0])
	return s, -1, nil
}

func sameVersion(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// readOne opens one file without blocking on FIFOs, refuses anything but a
// regular file within the size limit, and reads it.
func (r *fileReader) readOne(sp fileSpec) ([]byte, fs.FileInfo, error) {
	if r.hooks.beforeOpen != nil {
		r.hooks.beforeOpen(sp.path)
	}
	f, err := os.OpenFile(sp.path, os.O_RDONLY|openNonBlock, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("credentials: %s: %w", sp.kind, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("credentials: %s: %w", sp.kind, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("credentials: %s %q is not a regular file (%s); refusing to read it", sp.kind, sp.path, fileType(fi.Mode()))
	}
	if fi.Size() > sp.limit {
		return nil, nil, fmt.Errorf("credentials: %s %q is larger than %d bytes", sp.kind, sp.path, sp.limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, sp.limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("credentials: %s %q: %w", sp.kind, sp.path, err)
	}
	if int64(len(data)) > sp.limit {
		return nil, nil, fmt.Errorf("credentials: %s %q is larger than %d bytes", sp.kind, sp.path, sp.limit)
	}
	return data, fi, nil
}

func fileType(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "device"
	case m.IsDir():
		return "directory"
	default:
		return "irregular file"
	}
}

// FileStatus reports how a reloader's files have been read, for debug
// pages and metrics. It is a snapshot; the reloader keeps counting.
type FileStatus struct {
	// Files are the paths the reloader reads, in the order read.
	Files []string
	// Readings counts readings since the reloader was made, the
	// constructor's included, whether they succeeded or not.
	Readings uint64
	// Failures counts readings whose contents were not taken: the file
	// was missing, refused (not a regular file, too large), timed out,
	// changed while being read, or did not parse.
	Failures uint64
	// TimedOut counts the failures that were readings abandoned after the
	// read timeout (a hung mount).
	TimedOut uint64
	// Changes counts new contents taken into use after the constructor's.
	Changes uint64
	// LastChange is when contents were last taken into use (at first, when
	// the reloader was made).
	LastChange time.Time
	// Err is why the last reading was not taken, or nil; the same as the
	// reloader's Err.
	Err error
}

// fileStats are a fileReader's counters; guarded by fileReader.statsMu.
type fileStats struct {
	readings, failures, timedOut, changes uint64
	lastChange                            time.Time
	err                                   error
}

// note records the outcome of one reading, after the owner parsed it:
// err is why it was not taken (nil if it was), changed whether it replaced
// the contents in use.
// note records a reading's outcome for FileStatus and the log, and
// reports whether err is a new error (not the one the last reading had),
// for the owner's error handler: a file stuck bad is reported once.
func (r *fileReader) note(err error, changed bool) (newErr bool) {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	prev := r.stats.err
	newErr = err != nil && (prev == nil || prev.Error() != err.Error())
	r.logChange(err, changed)
	r.stats.readings++
	switch {
	case err != nil:
		r.stats.failures++
		if errors.Is(err, errTimedOut) {
			r.stats.timedOut++
		}
	case changed:
		r.stats.changes++
		r.stats.lastChange = time.Now()
	}
	return newErr
}

// logChange logs what operators act on, once per change of state rather
// than once per poll: a file taken anew, a file refused (and why), and a
// file good again after a refusal. Never per call; never key material.
// Called with statsMu held.
func (r *fileReader) logChange(err error, changed bool) {
	prev := r.stats.err
	r.stats.err = err
	switch {
	case err != nil && (prev == nil || prev.Error() != err.Error()):
		logger.Warningf("%v (keeping the last good contents)", err)
	case err == nil && prev != nil:
		logger.Infof("%s readable again", r.names())
	case err == nil && changed && logger.V(2):
		logger.Infof("%s changed; new contents in use", r.names())
	}
}

func (r *fileReader) names() string {
	names := make([]string, len(r.specs))
	for i, s := range r.specs {
		names[i] = strconv.Quote(s.path)
	}
	return strings.Join(names, " and ")
}

// lastErr is why the last reading was not taken, nil if it was.
func (r *fileReader) lastErr() error {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	return r.stats.err
}

func (r *fileReader) status() FileStatus {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	st := FileStatus{
		Readings:   r.stats.readings,
		Failures:   r.stats.failures,
		TimedOut:   r.stats.timedOut,
		Changes:    r.stats.changes,
		LastChange: r.stats.lastChange,
		Err:        r.stats.err,
	}
	for _, sp := range r.specs {
		st.Files = append(st.Files, sp.path)
	}
	return st
}

// FileStatus reports how the certificate and key files have been read.
func (r *CertificateReloader) FileStatus() FileStatus { return r.w.files.status() }

// FileStatus reports how the bundle file has been read.
func (b *TrustBundle) FileStatus() FileStatus { return b.w.files.status() }

// FileStatus reports how the key file has been read; with random keys
// (no WithTicketKeyFile) it is the zero FileStatus.
func (r *TicketKeyRotator) FileStatus() FileStatus {
	if r.w == nil {
		return FileStatus{}
	}
	return r.w.files.status()
}
