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
				r.end(r.reserve(now))
			}
			for range tc.held {
				r.reserve(now)
			}
		}
		if got := r.trusted(); got != tc.trusted {
			t.Errorf("%d honest and %d held requests a millisecond: trusted = %v, want %v (lapsed %d, ended %d)",
				tc.honest, tc.held, got, tc.trusted, r.lapsed.Load(), r.ended.Load())
		}
	}
}
