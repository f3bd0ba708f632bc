package credentials

import (
	"sync"
	"sync/atomic"
)

// watched is a value loaded from files and re-read in the background: the
// one mechanism under CertificateReloader, TrustBundle and a
// TicketKeyRotator's key file. A reading that fails keeps the last good
// value; a new error is reported once.
type watched[T any] struct {
	files *fileReader
	// parse makes a value from a good reading; old is the value in use (nil
	// at the first reading). It runs under mu, so it may read and change
	// state of its owner's that mu guards.
	parse   func(data [][]byte, old *T) (*T, error)
	same    func(a, b *T) bool // nil: every good reading replaces the value
	onError func(error)

	val atomic.Pointer[T]

	mu sync.Mutex // serialises readings with what is made of them, so an older reading never replaces a newer one

	loop      *loop
	closeOnce sync.Once
}

// newWatched reads specs now (failing if they do not parse) and starts
// re-reading them every o.pollInterval.
func newWatched[T any](o reloadOptions, parse func(data [][]byte, old *T) (*T, error), same func(a, b *T) bool, specs ...fileSpec) (*watched[T], error) {
	files, err := newFileReader(o, specs...)
	if err != nil {
		return nil, err
	}
	data, err := files.readInitial()
	if err != nil {
		return nil, err
	}
	v, err := parse(data, nil)
	if err != nil {
		return nil, err
	}
	w := &watched[T]{files: files, parse: parse, same: same, onError: o.onError}
	w.val.Store(v)
	w.loop = startLoop(o.newTicker(o.pollInterval), func() { _ = w.reload() })
	return w, nil
}

// reload re-reads the files now. On failure it keeps the last good value
// and returns (and reports, if the error is new) why.
func (w *watched[T]) reload() error {
	return w.update(func(data [][]byte, err error, old *T) (*T, error) {
		if err != nil {
			return nil, err
		}
		v, err := w.parse(data, old)
		if err != nil || (w.same != nil && w.same(v, old)) {
			return nil, err
		}
		return v, nil
	})
}

// update re-reads the files now and lets apply, under mu, make the value
// to use from the reading (or why it failed, readErr) and the value in
// use: apply returns the new value (nil keeps old) and why the reading was
// not taken (nil if it was). That error is kept for Err and FileStatus,
// logged and reported (if new) as a reload's are. reload is update with
// parse; Revoke is another apply.
func (w *watched[T]) update(apply func(data [][]byte, readErr error, old *T) (*T, error)) error {
	w.mu.Lock()
	data, changed, err := w.files.read()
	v, err := apply(data, err, w.val.Load())
	if v != nil {
		w.val.Store(v)
	}
	newErr := w.files.note(err, changed)
	w.mu.Unlock()
	if newErr {
		w.onError(err) // user code: not under our lock
	}
	return err
}

// close stops the background goroutine and waits for it to exit; the last
// good value stays. Idempotent.
func (w *watched[T]) close() {
	w.closeOnce.Do(func() {
		w.files.close() // interrupts a reading stuck on a hung mount
		w.loop.stop()
	})
}
