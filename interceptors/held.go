package interceptors

import (
	"context"
	"sync/atomic"
	"time"
)

// held counts the requests the tap shed whose stream context grpc-go
// keeps alive until their deadline.
//
// grpc-go makes each request's context (with a timer for its
// grpc-timeout) before it calls the tap, and when the tap refuses the
// request it never cancels that context (internal/transport's
// operateHeaders; every other early answer there cancels it): the timer,
// and the context it cancels, stay in memory until the deadline passes.
// That is about 470 bytes per shed request (plain grpc-go with a tap that
// refuses everything: 200,000 requests with 1-minute deadlines left 94 MB
// in the heap after a GC; without deadlines, 1 MB). A flood shed by the
// tap with long deadlines (a grpc-timeout may say hours) grew the server's
// heap by that much per request for as long as the deadlines ran, where
// the interceptor's sheds, after which grpc-go cancels the stream, keep
// nothing.
//
// So the tap answers a request with a deadline only while fewer than
// most (heldMost) of its answers are held, and only if the deadline is
// within heldHorizon; otherwise it hands the request to the interceptor
// to be shed there (deferred, at most maxDeferred at once), at the
// interceptor path's CPU. Requests without a deadline hold nothing and are
// always answered by the tap. A held answer is counted in the bucket of
// the whole second after its deadline, and counts until that second has
// begun: no timer, and no end to call.
type held struct {
	// buckets[e%heldBuckets] counts the answers held until epoch e (the
	// e-th second since the Shedder's epoch) as e<<countBits | count: a
	// bucket reused by a later epoch starts from zero, since what it held
	// has expired (every epoch counted is less than heldBuckets ahead).
	buckets [heldBuckets]atomic.Uint64
	most    int64 // heldMost outside tests
}

const (
	heldWidth   = int64(time.Second)
	heldBuckets = 64
	// heldHorizon is the longest deadline the tap answers: a request with
	// a longer one is left to the interceptor.
	heldHorizon = (heldBuckets - 2) * time.Second
	// heldMost bounds the tap's answers held at once: about 30 MB at the
	// 470 bytes each measured on grpc-go 1.85.
	heldMost = 1 << 16
	// maxDeferred bounds the requests handed to the interceptor because
	// the tap's answer would be held, on their way there at once: each
	// holds a stream and a goroutine until its message arrives.
	maxDeferred = 256
)

// expiry is the epoch from which an answer held until the deadline d
// (nanoseconds since the Shedder's epoch) no longer counts.
func (h *held) expiry(d int64) uint64 { return uint64(d/heldWidth) + 1 }

// room reports whether the tap may answer at now a request whose
// deadline is d (ok: it has one) without holding more than most answers,
// and whether that answer must be counted (add).
func (h *held) room(now, d int64, ok bool) (answer, count bool) {
	if !ok || d <= now {
		return true, false // nothing held: no timer, or one that has fired
	}
	if d-now > int64(heldHorizon) {
		return false, false
	}
	return h.count(now) < h.most, true
}

// add counts an answer the tap gave at now to a request whose deadline is
// d, within heldHorizon of now.
func (h *held) add(d int64) {
	e := h.expiry(d)
	bump(&h.buckets[e%heldBuckets], e) // full at 16M in one second: the bound is long past
}

// count returns how many of the tap's answers are held at now.
func (h *held) count(now int64) int64 {
	e := uint64(now / heldWidth)
	var n int64
	for i := range h.buckets {
		if v := h.buckets[i].Load(); v>>countBits > e {
			n += int64(v & countMask)
		}
	}
	return n
}

// tapRefuse answers r at the tap, or, when that answer would be held
// beyond the bound (see held), hands the request to the interceptor,
// which sheds it (or admits it, if a slot freed) and after which grpc-go
// cancels its context. When maxDeferred requests are already on their way
// there, the tap answers anyway: a stream waiting for its message holds
// more than an answer does. The answer carries status details while the
// second's budget for them lasts (tapDetails).
func (s *Shedder) tapRefuse(ctx context.Context, r reason, method string, st *serviceTime, now int64) (context.Context, error) {
	dl, has := ctx.Deadline()
	d := int64(dl.Sub(s.epoch)) // on the Shedder's clock, as now; no clock read
	answer, count := s.held.room(now, d, has)
	if !answer {
		if pass, passed := s.pass(ctx, &s.deferred, maxDeferred); passed {
			return pass, nil
		}
	}
	if count {
		s.held.add(d)
	}
	if r != rExpired && !s.tapDetails(now) { // an expired answer has none to spend the budget on
		return ctx, s.refuseWith(r, method, leanAnswers[r])
	}
	return ctx, s.refuse(ctx, r, method, st)
}
