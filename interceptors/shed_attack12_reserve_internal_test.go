package interceptors

import (
	"testing"
	"time"
)

// TestReservationsDistrustATrickleOfLapses: a client that sends headers
// without a message one stream at a time, one a millisecond beside a few
// honest requests, makes a quarter of the reservations lapse, far more
// than one in 16: the tap must stop heeding them. The lapse evidence aged
// by at least one whole lapse an epoch (rounded up), so a trickle of one
// lapse an epoch never added up to more than one, while the ended
// requests' evidence, larger, aged by about an eighth: the tap kept
// trusting, and a loopback run of 16 honest callers of a 1 ms method
// (limit 8) beside 1,000 such streams a second got 4,600 OK calls where
// the interceptors alone got 8,200 (plain grpc-go 12,400), more than 90%
// of the tap's sheds of honest calls with a slot free.
func TestReservationsDistrustATrickleOfLapses(t *testing.T) {
	ms := int64(time.Millisecond)
	for _, tc := range []struct {
		honest, held int // a millisecond
		trusted      bool
	}{
		{3, 1, false},  // 1 in 4 lapse
		{8, 1, false},  // 1 in 9
		{12, 1, false}, // 1 in 13
		{24, 1, true},  // 1 in 25: fewer than one in 16
		{64, 1, true},
		{16, 0, true},
	} {
		r := newReservations(8 * time.Millisecond) // epochs of 1ms
		now := int64(0)
		for ; now < 200*ms; now += ms {
			for range tc.honest {
				r.end(r.reserve(now), true)
			}
			for range tc.held {
				r.reserve(now)
			}
		}
		if got := r.trusted(trustLimit); got != tc.trusted {
			t.Errorf("%d honest and %d held requests a millisecond: trusted = %v, want %v (lapsed %d, ended %d)",
				tc.honest, tc.held, got, tc.trusted, r.lapsed.Load(), r.ended.Load())
		}
	}
}

// trustLimit is an in-flight limit large enough that the lapses' share
// of slot time never decides trusted: the tests of the ratio use it.
const trustLimit = 1 << 20

// TestReservationsDistrustLapsesBySlotTime: a trickle of held streams
// beside many honest requests is a small share of the reservations (the
// ratio trusts them) but each lapse kept a slot's worth of the tap shut
// for reserveFor: the tap must stop heeding them while the lapses take
// more than a sixteenth of the slots' time. A lapse's evidence is
// largest just after it and ages by 1/8 an epoch, so a sparse trickle is
// distrusted for a few milliseconds after each lapse, and a dense one all
// the time.
func TestReservationsDistrustLapsesBySlotTime(t *testing.T) {
	ms := int64(time.Millisecond)
	for _, tc := range []struct {
		limit    int64
		heldEach int64 // one held request every heldEach milliseconds
		min, max int   // distrusted milliseconds of the last 96
	}{
		{8, 3, 96, 96}, // a third of 8 slots' time
		{8, 32, 1, 48}, // 3%: a few ms after each lapse
		{64, 3, 0, 0},  // 4% of 64 slots
		{64, 12, 0, 0}, // 1%
		{512, 1, 0, 0}, // 1.6%
		{8, 0, 0, 0},   // none held
	} {
		r := newReservations(8 * time.Millisecond) // epochs of 1ms
		distrusted := 0
		for now := int64(0); now < 300*ms; now += ms {
			for range 64 { // one lapse in several hundred: the ratio trusts
				r.end(r.reserve(now), true)
			}
			if tc.heldEach > 0 && (now/ms)%tc.heldEach == 0 {
				r.reserve(now)
			}
			if now >= 204*ms && !r.trusted(tc.limit) {
				distrusted++
			}
		}
		if distrusted < tc.min || distrusted > tc.max {
			t.Errorf("limit %d, one held request every %d ms beside 64 honest a ms: distrusted %d of the last 96 ms, want %d to %d",
				tc.limit, tc.heldEach, distrusted, tc.min, tc.max)
		}
	}
}

// TestReservationsDistrustRequestsThatNeverArrive: a reservation whose
// stream ends before its request reaches the interceptor (a client that
// resets each stream after its headers) is evidence against the
// reservations, as a lapse is: it ends in its stream's context.AfterFunc
// goroutine, late on a busy CPU, and until then held a slot's worth of
// the tap shut for a request that never took a slot. Counted as ended,
// such a flood kept the tap trusting them (BenchmarkShedResetFlood: the
// honest callers' OK calls fell to 85% of the interceptors alone's at
// 16,000 resets a second). The same rule as lapses: a few in many
// honest requests keep the trust.
func TestReservationsDistrustRequestsThatNeverArrive(t *testing.T) {
	ms := int64(time.Millisecond)
	for _, tc := range []struct {
		honest, reset int // a millisecond
		trusted       bool
	}{
		{8, 16, false}, // a flood of resets beside a few honest requests
		{16, 2, false}, // 1 in 9
		{64, 1, true},  // 1 in 65
		{16, 0, true},
	} {
		r := newReservations(8 * time.Millisecond) // epochs of 1ms
		for now := int64(0); now < 200*ms; now += ms {
			for range tc.honest {
				r.end(r.reserve(now), true)
			}
			for range tc.reset {
				r.end(r.reserve(now), false)
			}
		}
		if got := r.trusted(trustLimit); got != tc.trusted {
			t.Errorf("%d honest and %d reset requests a millisecond: trusted = %v, want %v (lapsed %d, ended %d)",
				tc.honest, tc.reset, got, tc.trusted, r.lapsed.Load(), r.ended.Load())
		}
		if n := r.pending(200 * ms); n != 0 {
			t.Errorf("%d reservations pending after every request ended, want 0", n)
		}
	}
}
