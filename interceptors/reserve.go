package interceptors

import (
	"context"
	"sync/atomic"
	"time"
)

// reservations counts the unary requests the tap path admitted that have
// not reached the unary interceptor yet, each for at most reserveFor.
//
// The tap takes no slot (the interceptor alone takes and releases them).
// Without this count, every request that reached the tap between a slot
// freeing and the interceptor taking it was admitted: the connection's
// reader goroutine reads the requests already in its buffer before any
// admitted one gets to the interceptor, and all but the free slots' worth
// were then shed there, at the interceptor's cost per shed. In the
// bench's 10× overload, 42% of all requests were shed that way, each
// after grpc-go had made its stream, goroutine and message, and their CPU
// delayed the work of the calls admitted (examples/bench, overload). With
// the count, the tap admits no more requests than there are free slots.
//
// Each request carries its own reservation (reservation), which ends
// when the request reaches the interceptor or its stream ends, so an
// arrival ends its own and no other: a request the tap did not count (a
// method it had not seen, a pass at the limit) ends nothing.
//
// A reservation lapses after reserveFor whatever becomes of its request:
// a request that stays open and never reaches the interceptor (a client
// that sends headers and never the message) holds a slot's worth of the
// tap's admission for no longer, and while many lapse the tap heeds none
// (trusted). Lapsing needs no timer: reservations are counted in buckets
// of an eighth of reserveFor by the time they were made, and only the
// young buckets count.
type reservations struct {
	// buckets[e%reserveBuckets] counts the reservations made in epoch e
	// (the e-th interval of width nanoseconds since the Shedder's epoch)
	// still pending, as e<<countBits | count: a bucket reused by a later
	// epoch starts from zero with one compare-and-swap.
	buckets [reserveBuckets]atomic.Uint64
	last    atomic.Int64 // the latest epoch a reservation was made in, +1 (0: none yet)
	width   int64        // an epoch's nanoseconds: reserveFor / reserveBuckets
	// lapsed and ended count the reservations that lapsed unended and
	// those that ended, in evidenceUnits, each decayed by 1/8 an epoch
	// (when an epoch's first reservation reuses a bucket): see trusted.
	lapsed, ended atomic.Int64
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
	// evidenceUnit is one reservation in lapsed and ended: fixed point,
	// so that aging by 1/8 is 1/8 for a few reservations too. Counted in
	// whole reservations, the decay (rounded up, so that it reaches 0)
	// took a whole one an epoch off a count below 8: one lapse an epoch
	// never added up to more than 1, against 8 times the ended ones an
	// epoch, and a client holding one stream a millisecond open without
	// a message (a quarter of the reservations beside 3 honest requests)
	// kept the tap heeding them (TestReservationsDistrustATrickleOfLapses).
	evidenceUnit = 1 << 8
)

// newReservations returns reservations that count for about lifetime
// (reserveFor outside tests).
func newReservations(lifetime time.Duration) reservations {
	return reservations{width: max(int64(lifetime/reserveBuckets), 1)}
}

// epochOf is the bucket epoch of now (nanoseconds since the Shedder's
// epoch).
func (r *reservations) epochOf(now int64) uint64 { return uint64(now / r.width) }

// bump counts one more in b for epoch e, as e<<countBits | count: a
// bucket that holds an earlier epoch starts again from zero. It returns
// what b held before, and false, counting nothing, if e's count is full
// (16M) or b already holds a later epoch: a caller whose clock reading
// is older than another's that started the later epoch must not take b
// back, or it would wipe the later epoch's count, and the next caller in
// the later epoch would start it from zero again (the tap's details
// budget gave a second a whole new budget for each such late reader:
// TestTapDetailsBudgetStaleClock). The tap's reservations, its held
// answers (held) and its details budget (tapDetails) count in such
// buckets.
func bump(b *atomic.Uint64, e uint64) (was uint64, ok bool) {
	for {
		v := b.Load()
		n := uint64(1)
		switch ve := v >> countBits; {
		case ve == e:
			n = v&countMask + 1
		case ve > e:
			return v, false // a late reader: what it counts has passed
		}
		if n > countMask {
			return v, false
		}
		if b.CompareAndSwap(v, e<<countBits|n) {
			return v, true
		}
	}
}

// reserve counts a request admitted by the tap at now. It returns the
// epoch the request was counted in, plus one, for end; 0 if it was not
// counted (16M requests in one epoch, or a clock reading so late that its
// bucket holds a later epoch: its reservation would have lapsed).
func (r *reservations) reserve(now int64) uint64 {
	e := r.epochOf(now)
	was, ok := bump(&r.buckets[e%reserveBuckets], e)
	if !ok {
		return 0 // count no more
	}
	if was>>countBits != e { // this epoch's first: what the bucket held lapsed
		r.decay(int64(was & countMask))
	}
	if r.last.Load() != int64(e)+1 {
		r.last.Store(int64(e) + 1)
	}
	return e + 1
}

// decay ages the lapse evidence by an epoch and adds the reservations
// that lapsed unended in it. Loads and stores, not compare-and-swap
// loops: an end counted as decay runs may be lost, which moves a ratio
// that only needs to tell 1 in 16 from most.
func (r *reservations) decay(lapsed int64) {
	age := func(n int64) int64 { return n - (n+7)/8 } // to 0, not to 7 evidenceUnit's fractions
	r.lapsed.Store(age(r.lapsed.Load()) + lapsed*evidenceUnit)
	r.ended.Store(age(r.ended.Load()))
}

// trusted reports whether the reservations are worth the tap's heed at
// an in-flight limit of limit: whether, lately, no more than one in 16
// lapsed unended, and the lapses took no more than a sixteenth of the
// slots' time. Honest requests reach the interceptor or end within
// milliseconds; a client that sends headers and holds its streams open
// without a message makes its reservations lapse, and each lapse keeps
// a slot's worth of the tap shut for reserveFor, however short the calls
// the slot would serve. The ratio alone let a trickle beside many honest
// requests through: one held stream every 3 ms beside 16 callers of a
// 1 ms method at limit 8 was about one lapse in 25, and cost the honest
// callers 23% of their OK calls against the interceptors alone. Slot
// time: lapsed holds about reserveBuckets epochs' lapses (it ages by 1/8
// an epoch), and each lapse held a slot for reserveBuckets epochs, so
// lapsed/limit is the share of the slots' time the lapses took
// (TestReservationsDistrustLapsesBySlotTime). While either is exceeded
// the tap counts no reservation, as before it had them (at worst, a
// burst's sheds go through the interceptor again), so such a client can
// shut the tap no more cheaply than with a flood of real requests
// (TestReservationsDistrustedWhileTheyLapse).
func (r *reservations) trusted(limit int64) bool {
	l := r.lapsed.Load()
	return l == 0 || l*16 <= r.ended.Load() && l*16 <= limit*evidenceUnit
}

// counted is pending when the reservations are trusted at limit, else
// 0: what the tap adds to the slots in use.
func (r *reservations) counted(now, limit int64) int64 {
	if !r.trusted(limit) {
		return 0
	}
	return r.pending(now)
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

// end ends a reservation reserve counted (at), once: its request reached
// the interceptor (arrived) or its stream ended first. A reservation whose
// bucket a later epoch reuses has lapsed already, and ends nothing.
//
// A request whose stream ended before it arrived counts as a lapse in
// the evidence trusted weighs, not as an ended one: like a lapse, the tap
// counted it against the free slots for a request that never took one,
// and it ended late, when its stream's context.AfterFunc goroutine got a
// CPU, not when its client reset it. Counted as ended, a client opening
// streams and resetting them at once (one HEADERS and one RST_STREAM
// frame each) kept the tap trusting reservations that each held a slot's
// worth of it shut for that goroutine's wait: at 16,000 such pairs a
// second beside 16 honest callers at limit 8, the honest callers got
// 4,000 OK calls a second on the tap path against 4,700 on the
// interceptors alone (BenchmarkShedResetFlood). Honest requests end
// before they arrive rarely (a deadline that passes, or a client that
// cancels, in the few hundred microseconds from the tap to the
// interceptor), far fewer than one in 16.
func (r *reservations) end(at uint64, arrived bool) {
	if at == 0 {
		return
	}
	e := at - 1
	b := &r.buckets[e%reserveBuckets]
	for {
		v := b.Load()
		if v>>countBits != e || v&countMask == 0 {
			return
		}
		if b.CompareAndSwap(v, v-1) {
			if arrived {
				r.ended.Add(evidenceUnit)
			} else {
				r.lapsed.Add(evidenceUnit)
			}
			return
		}
	}
}

// reservation is one request the tap admitted on its way to the unary
// interceptor: the request's context, which carries it (reservationKey),
// and its count in reservations, ended once, by whichever comes first of
// the interceptor (Shedder.admitted) and the end of its stream. Without
// the second, a request whose stream ended before the interceptor (reset
// after its headers, or answered by grpc-go itself: a message too large
// or that does not decode) held a slot's worth of the tap's admission
// until it lapsed: each such request, which costs a client two frames,
// shut the tap for reserveFor whatever the method's service time
// (TestShedderEndedRequestsHoldNoReservation). The context and the count
// are one allocation; context.AfterFunc adds its own.
type reservation struct {
	context.Context
	r      *reservations
	at     uint64 // reserve's answer
	tapped int64  // when the tap admitted it, on the Shedder's clock
	// when grpc-go began the request's stream on its goroutine (the
	// Shedder's stats handler), on the same clock; 0 before, or without it
	began atomic.Int64
	ended atomic.Int32 // reservationPending, reservationArrived or reservationAbandoned
	stop  func() bool  // the AfterFunc's
}

type reservationKey struct{}

// Value returns the reservation for reservationKey, and the stream
// context's values otherwise.
func (v *reservation) Value(key any) any {
	if key == (reservationKey{}) {
		return v
	}
	return v.Context.Value(key)
}

// How a reservation ended (reservation.ended).
const (
	reservationPending int32 = iota
	reservationArrived
	reservationAbandoned
)

// end ends the reservation, the first time only: its request arrived at
// the interceptor, or (abandoned) its stream ended first. It reports
// whether this call ended it.
func (v *reservation) end(how int32) bool {
	if !v.ended.CompareAndSwap(reservationPending, how) {
		return false
	}
	v.r.end(v.at, how == reservationArrived)
	return true
}

// abandon ends the reservation of a request whose stream ended before
// it reached the interceptor.
func (v *reservation) abandon() { v.end(reservationAbandoned) }

// reserveRequest counts a request the tap admits at now and returns its
// context carrying the reservation, or ctx if it was not counted.
func (r *reservations) reserveRequest(ctx context.Context, now int64) context.Context {
	at := r.reserve(now)
	if at == 0 {
		return ctx
	}
	v := &reservation{Context: ctx, r: r, at: at, tapped: now}
	v.stop = context.AfterFunc(ctx, v.abandon) // its stream ended before the interceptor
	return v
}
