package interceptors

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// slots is a concurrency limit with a wait queue: the one mechanism under
// a client Limiter's keys and a Shedder's unary in-flight limit. A slot
// freed while requests wait goes straight to one of them (dispatch), so
// the limit's capacity does not stand idle between one call's end and the
// next request's arrival.
//
// The fast path is lock-free: with nobody waiting, acquiring is a CAS on
// inflight. mu guards the queue. The lost-wakeup argument: a waiter counts
// itself in waiters (under mu) before its last look at inflight, and a
// release decrements inflight before it looks at waiters; so either the
// waiter sees the freed slot or the release sees the waiter and
// dispatches.
type slots struct {
	limit    atomic.Int64
	inflight atomic.Int64
	waiters  atomic.Int64 // requests in the slow path (queued or about to be)

	mu    sync.Mutex
	queue []*waiter // guarded by mu; in arrival order
}

type waiter struct {
	ch      chan struct{}
	granted bool // guarded by slots.mu
}

// waitResult is how a wait for a slot ended.
type waitResult uint8

const (
	waitGranted  waitResult = iota // the request holds a slot
	waitFull                       // maxQueued requests were already waiting
	waitTimedOut                   // no slot within the wait
	waitDone                       // the request's context ended first
)

// tryAcquire takes a slot if fewer than limit are in use.
func (s *slots) tryAcquire(limit int64) bool {
	for {
		n := s.inflight.Load()
		if n >= limit {
			return false
		}
		if s.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// acquire takes a slot under limit at once, or waits for one (under the
// current limit) behind at most maxQueued others, for as long as wait
// says: wait is called only when the request must wait, so the lock-free
// fast path computes nothing for it. A slot that arrives as ctx ends is
// given back: the caller holds a slot exactly when it gets waitGranted.
func (s *slots) acquire(ctx context.Context, limit int64, maxQueued int, wait func() time.Duration) waitResult {
	if s.waiters.Load() == 0 && s.tryAcquire(limit) {
		return waitGranted
	}
	d := wait()
	s.mu.Lock()
	s.waiters.Add(1)
	if len(s.queue) == 0 && s.tryAcquire(limit) {
		s.waiters.Add(-1)
		s.mu.Unlock()
		return waitGranted
	}
	if full := len(s.queue) >= maxQueued; full || d <= 0 {
		s.waiters.Add(-1)
		s.mu.Unlock()
		if full {
			return waitFull
		}
		return waitTimedOut
	}
	w := &waiter{ch: make(chan struct{}, 1)}
	s.queue = append(s.queue, w)
	s.mu.Unlock()

	t := time.NewTimer(d)
	res := waitTimedOut
	select {
	case <-w.ch:
		t.Stop()
		if ctx.Err() != nil { // granted as the caller left: give it back
			s.release()
			return waitDone
		}
		return waitGranted
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		res = waitDone
	}
	s.mu.Lock()
	if w.granted {
		s.mu.Unlock()
		if ctx.Err() == nil {
			return waitGranted // the slot came as the wait ended: use it
		}
		s.release()
		return waitDone
	}
	for i, q := range s.queue {
		if q == w {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			break
		}
	}
	s.waiters.Add(-1)
	s.mu.Unlock()
	return res
}

// free gives a slot back and returns how many were in use with it; call
// dispatchIfWaiting after it (after moving the limit, if it moves).
func (s *slots) free() int64 { return s.inflight.Add(-1) + 1 }

// release gives a slot back and hands it on to a waiter, if one waits.
func (s *slots) release() {
	s.free()
	s.dispatchIfWaiting()
}

// dispatchIfWaiting hands free slots to waiters, if any wait.
func (s *slots) dispatchIfWaiting() {
	if s.waiters.Load() > 0 {
		s.dispatch()
	}
}

// dispatch hands free slots to waiters, oldest first.
func (s *slots) dispatch() {
	s.mu.Lock()
	for len(s.queue) > 0 && s.tryAcquire(s.limit.Load()) {
		w := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		w.granted = true
		s.waiters.Add(-1)
		w.ch <- struct{}{}
	}
	if len(s.queue) == 0 {
		s.queue = s.queue[:0:0] // let the backing array go
	}
	s.mu.Unlock()
}

// queued returns how many requests wait.
func (s *slots) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}
