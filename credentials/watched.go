package credentials

import (
	"sync"
	"sync/atomic"
)

// watched is a value loaded from files and re-read in the background: the
// one mechanism under CertificateReloader and TrustBundle. A reading that
// fails keeps the last good value; a new error is reported once.
type watched[T any] struct {
	files   *fileReader
	parse   func(data [][]byte) (*T, error)
	same    func(a, b *T) bool // nil: every good reading replaces the value
	onError func(error)

	val atomic.Pointer[T]

	mu sync.Mutex // serialises reloads, so an older reading never replaces a newer one

	loop      *loop
	closeOnce sync.Once
}

// newWatched reads specs now (failing if they do not parse) and starts
// re-reading them every o.pollInterval.
func newWatched[T any](o reloadOptions, parse func([][]byte) (*T, error), same func(a, b *T) bool, specs ...fileSpec) (*watched[T], error) {
	files, err := newFileReader(o, specs...)
	if err != nil {
		return nil, err
	}
	data, err := files.readInitial()
	if err != nil {
		return nil, err
	}
	v, err := parse(data)
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
	w.mu.Lock()
	data, changed, err := w.files.read()
	var v *T
	if err == nil {
		v, err = w.parse(data)
	}
	if err == nil && (w.same == nil || !w.same(v, w.val.Load())) {
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
