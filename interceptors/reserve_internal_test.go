package interceptors

import (
	"sync"
	"testing"
	"time"
)

// TestReservationsLapse: a reservation counts until it ends (its request
// arrives, or its stream ends) or reserveFor passes, whichever is first;
// each ends its own count, once, and a lapsed one ends nothing.
func TestReservationsLapse(t *testing.T) {
	r := newReservations(8 * time.Millisecond) // epochs of 1ms
	ms := int64(time.Millisecond)
	if got := r.pending(0); got != 0 {
		t.Fatalf("pending before any reservation = %d", got)
	}
	r.end(0, true) // not counted: nothing to end
	a := r.reserve(0)
	b := r.reserve(0)
	c := r.reserve(3 * ms)
	if got := r.pending(3 * ms); got != 3 {
		t.Fatalf("pending at 3ms = %d, want 3", got)
	}
	r.end(a, true)
	if got := r.pending(4 * ms); got != 2 {
		t.Fatalf("pending after one end = %d, want 2", got)
	}
	// At 8ms b, made at 0, lapses; c, from 3ms, still counts.
	if got := r.pending(8 * ms); got != 1 {
		t.Fatalf("pending at 8ms = %d, want 1 (the 0ms one lapsed)", got)
	}
	r.end(c, true)
	if got := r.pending(8 * ms); got != 0 {
		t.Fatalf("pending after the ends = %d, want 0", got)
	}
	// A bucket reused by a later epoch starts from zero, and the lapsed
	// reservation of its earlier epoch ends nothing in it.
	d := r.reserve(9 * ms)
	r.reserve(17 * ms) // same bucket as 9ms, 8 epochs later
	if got := r.pending(17 * ms); got != 1 {
		t.Fatalf("pending at 17ms = %d, want 1 (the 9ms one lapsed, its bucket reused)", got)
	}
	r.end(d, true)
	r.end(b, true)
	if got := r.pending(17 * ms); got != 1 {
		t.Fatalf("pending at 17ms after lapsed ones ended = %d, want 1", got)
	}
	// Long quiet: nothing counts.
	if got := r.pending(time.Hour.Nanoseconds()); got != 0 {
		t.Fatalf("pending an hour later = %d", got)
	}
}

// TestReservationsConcurrent: reservations and their ends from many
// goroutines at once (the tap runs in every connection's reader, the
// interceptor in every call's goroutine) lose no count.
func TestReservationsConcurrent(t *testing.T) {
	r := newReservations(time.Hour)
	const goroutines, each = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				at := r.reserve(int64(i))
				if g%2 == 0 {
					r.end(at, true)
				}
			}
		}()
	}
	wg.Wait()
	if got, want := r.pending(each), int64(goroutines/2*each); got != want {
		t.Fatalf("pending = %d, want %d", got, want)
	}
}

// TestReservationsDistrustedWhileTheyLapse: while many reservations lapse
// unended (a client sending headers and holding its streams open without
// a message), the tap counts none of them, as before it had reservations;
// once requests reach the interceptor again, it counts them again.
func TestReservationsDistrustedWhileTheyLapse(t *testing.T) {
	r := newReservations(8 * time.Millisecond) // epochs of 1ms
	ms := int64(time.Millisecond)
	honest := func(at int64) { // 4 requests that reach the interceptor
		for range 4 {
			r.end(r.reserve(at), true)
		}
	}
	held := func(at int64) { // 4 that never do
		for range 4 {
			r.reserve(at)
		}
	}
	now := int64(0)
	var slow uint64 // one request each epoch takes until the next to arrive
	for ; now < 20*ms; now += ms {
		honest(now)
		r.end(slow, true)
		if slow = r.reserve(now); slow == 0 {
			t.Fatal("not counted")
		}
	}
	if !r.trusted(trustLimit) {
		t.Fatalf("distrusted with honest traffic only (lapsed %d, ended %d)", r.lapsed.Load(), r.ended.Load())
	}
	for ; now < 40*ms; now += ms {
		honest(now)
		held(now)
	}
	if r.pending(now) == 0 {
		t.Fatal("the held requests' reservations do not count")
	}
	if got := r.counted(now, trustLimit); got != 0 {
		t.Fatalf("counted = %d while most reservations lapse (lapsed %d, ended %d), want 0", got, r.lapsed.Load(), r.ended.Load())
	}
	recovered := false
	for end := now + 100*ms; now < end && !recovered; now += ms {
		honest(now)
		recovered = r.trusted(trustLimit)
	}
	if !recovered {
		t.Fatalf("still distrusted 100ms after the held requests stopped (lapsed %d, ended %d)", r.lapsed.Load(), r.ended.Load())
	}
	r.reserve(now)
	if got, want := r.counted(now, trustLimit), r.pending(now); got != want || got == 0 {
		t.Fatalf("counted = %d after recovery, want pending, %d", got, want)
	}
}
