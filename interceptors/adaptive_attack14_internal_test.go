package interceptors

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// TestAdaptiveLateMessagesOfASlowMethod (attack14): a client that sends
// its requests' messages late, on a method six times slower than the
// server's other one, made one call in eight of a server far from any
// overload, and drove the adaptive limit from 100 to 2: every call of
// its late message counted twice its handler time (queuedBeforeSlot), and
// its slow method's calls were half the server's handler time. On
// loopback (2 honest calls a millisecond of 1 ms, two hostile callers of
// 6 ms sending their message 6 ms late: 13% of the calls) the limit fell
// to 3 and 18% of the honest calls were shed, none with the messages on
// time, none on plain grpc-go. The wait a call adds is capped by the
// server's mean handler time too, so a client's late messages count as
// if each of its calls queued behind one average call: it moves the
// limit only with a share of the calls, not of the handler time, beyond
// the tolerance's.
func TestAdaptiveLateMessagesOfASlowMethod(t *testing.T) {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	s, err := NewShedder(WithShedderConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	fast, slow := s.serviceTime("/s/Fast"), s.serviceTime("/s/Slow")
	rng := rand.New(rand.NewPCG(14, 14))
	s.slots.inflight.Add(1) // one other call in flight throughout: every call ends with 2
	now := time.Duration(0)
	run := func(d time.Duration, late bool) (lowest int64) {
		lowest = s.slots.limit.Load()
		for end := now + d; now < end; now += time.Millisecond {
			calls := []struct {
				st           *serviceTime
				took, waited time.Duration
			}{{fast, time.Millisecond, 20 * time.Microsecond}}
			if now%(7*time.Millisecond) == 0 {
				w := 20 * time.Microsecond
				if late {
					w = 6 * time.Millisecond // its message came 6 ms after its headers
				}
				calls = append(calls, struct {
					st           *serviceTime
					took, waited time.Duration
				}{slow, 6 * time.Millisecond, w})
			}
			for _, c := range calls {
				took := c.took + time.Duration(rng.Int64N(int64(c.took/10))) // 0-10% noise
				s.slots.inflight.Add(1)
				cohort := s.grad.admit(int64(now - took))
				s.doneUnary(context.Background(), c.st, nil, took, c.waited, s.epoch.Add(now), false, cohort)
				lowest = min(lowest, s.slots.limit.Load())
			}
		}
		return lowest
	}
	run(3*time.Second, false) // the baselines, the first window, the probe
	before := s.slots.limit.Load()
	lowestOnTime := run(3*time.Second, false)
	lowestLate := run(3*time.Second, true)
	t.Logf("limit %d after 3 s; lowest %d in 3 s more on time, %d in 3 s of late messages", before, lowestOnTime, lowestLate)
	if lowestLate < lowestOnTime {
		t.Errorf("1 call in 8 with its message 6 ms late took the limit from %d to %d (on time: %d), on a server that never queued", before, lowestLate, lowestOnTime)
	}
}

// TestQueuedBeforeSlotCappedByTheMean: the wait a call adds is at most its
// own handler time and at most the server's mean one.
func TestQueuedBeforeSlotCappedByTheMean(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct{ waited, took, mean, want time.Duration }{
		{6 * ms, 6 * ms, 0, 6 * ms},      // no mean yet: its handler time
		{6 * ms, 6 * ms, 2 * ms, 2 * ms}, // a slow method's late message: the mean call
		{ms, 6 * ms, 2 * ms, ms},         // a shorter wait counts as it is
		{6 * ms, ms, 2 * ms, ms},         // a fast call: its own time
		{reserveFor, 6 * ms, 2 * ms, 0},  // a lapsed reservation
		{-ms, 6 * ms, 2 * ms, 0},         // clock readings out of order
	} {
		if got := queuedBeforeSlot(c.waited, c.took, c.mean); got != c.want {
			t.Errorf("queuedBeforeSlot(%v, %v, %v) = %v, want %v", c.waited, c.took, c.mean, got, c.want)
		}
	}
}
