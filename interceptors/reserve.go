package interceptors

import (
	"sync/atomic"
	"time"
)

// reservations counts the unary requests the tap path admitted that have
// not reached the unary interceptor yet, each for at most reserveFor.
//
// The tap takes no slot (the interceptor alone takes and releases them),
// so without this count every request that reaches the tap between a
// slot freeing and the interceptor taking it is admitted: the
// connection's reader goroutine reads the requests already in its buffer
// before any admitted one gets to the interceptor, and all but the free
// slots' worth are then shed there, at the interceptor's cost per shed. In the bench's 10×
// overload, 42% of all requests were shed that way, each after grpc-go
// had made its stream, goroutine and message, and their CPU delayed the
// work of the calls admitted (examples/bench, overload). With the count,
// the tap admits no more requests than there are free slots.
//
// A reservation lapses after reserveFor whatever becomes of its request,
// so a request that never reaches the interceptor (its stream reset
// before its message, or a client that sends headers and never the
// message) holds a slot's worth of the tap's admission for no longer: a
// client cannot keep the tap refusing with headers alone any more than
// with a flood of requests. Lapsing needs no timer and the count no
// allocation: reservations are counted in buckets of an eighth of it by the
// time they were made, and only the young buckets count. A request's
// arrival ends the oldest young reservation, not necessarily its own (it
// carries no mark, which would cost an allocation per call): the count
// stays right, and an early arrival ending a lapsing request's
// reservation only lets the tap admit one request sooner.
type reservations struct {
	// buckets[e%reserveBuckets] counts the reservations made in epoch e
	// (the e-th interval of width nanoseconds since the Shedder's epoch)
	// still pending, as e<<countBits | count: a bucket reused by a later
	// epoch starts from zero with one compare-and-swap.
	buckets [reserveBuckets]atomic.Uint64
	last    atomic.Int64 // the latest epoch a reservation was made in, +1 (0: none yet)
	width   int64        // an epoch's nanoseconds: reserveFor / reserveBuckets
}

const (
	// reserveFor is how long a reservation counts at most. From the tap
	// to the interceptor, grpc-go makes a stream and its goroutine and
	// reads the request's message: well under a millisecond on a busy
	// server, a few on a saturated one (up to 4ms and more seen under
	// -race on 2 busy cores). A request that takes longer, a large
	// upload say, is only counted as the tap counted before: the
	// interceptor sheds what the slots cannot take.
	reserveFor     = 8 * time.Millisecond
	reserveBuckets = 8
	countBits      = 24
	countMask      = 1<<countBits - 1
)

// newReservations returns reservations that count for about lifetime
// (reserveFor outside tests).
func newReservations(lifetime time.Duration) reservations {
	return reservations{width: max(int64(lifetime/reserveBuckets), 1)}
}

// epochOf is the bucket epoch of now (nanoseconds since the Shedder's
// epoch).
func (r *reservations) epochOf(now int64) uint64 { return uint64(now / r.width) }

// reserve counts a request admitted by the tap at now.
func (r *reservations) reserve(now int64) {
	e := r.epochOf(now)
	b := &r.buckets[e%reserveBuckets]
	for {
		v := b.Load()
		n := uint64(1)
		if v>>countBits == e {
			n = v&countMask + 1
		}
		if n > countMask {
			return // 16M requests in an epoch: count no more
		}
		if b.CompareAndSwap(v, e<<countBits|n) {
			break
		}
	}
	if r.last.Load() != int64(e)+1 {
		r.last.Store(int64(e) + 1)
	}
}

// recent reports whether a reservation was made in the reserveBuckets
// epochs up to e (or, by a goroutine whose clock read came later, after
// it).
func (r *reservations) recent(e uint64) bool {
	last := r.last.Load()
	return last != 0 && int64(e)-(last-1) < reserveBuckets
}

// pending returns how many reservations younger than reserveFor count at
// now.
func (r *reservations) pending(now int64) int64 {
	e := r.epochOf(now)
	if !r.recent(e) {
		return 0 // none made lately: the admitted path reads one word
	}
	var n int64
	for i := range uint64(reserveBuckets) {
		if v := r.buckets[(e-i)%reserveBuckets].Load(); v>>countBits == e-i {
			n += int64(v & countMask)
		}
	}
	return n
}

// arrive ends the oldest young reservation at now, if any: a request the
// tap admitted reached the interceptor.
func (r *reservations) arrive(now int64) {
	e := r.epochOf(now)
	if !r.recent(e) {
		return
	}
	for i := uint64(reserveBuckets); i > 0; i-- {
		be := e - (i - 1)
		b := &r.buckets[be%reserveBuckets]
		for {
			v := b.Load()
			if v>>countBits != be || v&countMask == 0 {
				break
			}
			if b.CompareAndSwap(v, v-1) {
				return
			}
		}
	}
}
