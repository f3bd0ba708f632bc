package interceptors

import (
	"container/heap"
	"math/rand/v2"
	"testing"
	"time"
)

// simEvent is one event of the overload simulation.
type simEvent struct {
	at     int64
	kind   int // 0 a caller sends, 1 a call's work ends, 2 a caller's deadline passes
	caller int
	call   *simCall
}

type simCall struct {
	caller         int
	sent, admitted int64
	cohort         int64 // gradient.admit's
	done           bool
}

type simQueue []simEvent

func (q simQueue) Len() int           { return len(q) }
func (q simQueue) Less(i, j int) bool { return q[i].at < q[j].at }
func (q simQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)        { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// simOverload runs the bench's overload scenario in virtual time against
// an adaptive gradient: slots slots, work each (±10%), callers closed-loop
// callers with deadline dl who back off 1 ms after a failure, for d, after
// quiet (one caller) for warm. It returns the OK calls per second during
// the overload and the limit at its end.
func simOverload(cfg ShedderConfig, slots, callers int, work, dl, warm, d time.Duration, seed uint64) (goodput float64, limit int64, trace []int64) {
	g := newGradient(cfg)
	st := &serviceTime{}
	limit = int64(cfg.Limit)
	rng := rand.New(rand.NewPCG(seed, 1))
	var q simQueue
	var now int64
	inflight := int64(0)
	busy := 0
	var waiting []*simCall
	ok := 0
	start, end := int64(warm), int64(warm+d)
	push := func(e simEvent) { heap.Push(&q, e) }
	startWork := func(c *simCall) {
		busy++
		w := float64(work) * (0.9 + 0.2*rng.Float64())
		push(simEvent{at: now + int64(w), kind: 1, call: c})
	}
	send := func(caller int) {
		if now >= end {
			return
		}
		if caller > 0 && now < start {
			push(simEvent{at: start, kind: 0, caller: caller})
			return
		}
		if inflight >= limit {
			push(simEvent{at: now + int64(time.Millisecond) + 50_000, kind: 0, caller: caller}) // shed, back off
			return
		}
		inflight++
		c := &simCall{caller: caller, sent: now, admitted: now, cohort: g.admit(now)}
		push(simEvent{at: now + int64(dl), kind: 2, call: c})
		if busy < slots {
			startWork(c)
		} else {
			waiting = append(waiting, c)
		}
	}
	for i := range callers {
		push(simEvent{at: 0, kind: 0, caller: i})
	}
	nextTrace := start
	for q.Len() > 0 {
		e := heap.Pop(&q).(simEvent)
		now = e.at
		for now >= nextTrace && nextTrace < end {
			trace = append(trace, limit)
			nextTrace += int64(10 * time.Millisecond)
		}
		switch e.kind {
		case 0:
			send(e.caller)
		case 1:
			c := e.call
			busy--
			if len(waiting) > 0 {
				startWork(waiting[0])
				waiting = waiting[1:]
			}
			if l, moved := g.sample(st, time.Duration(now-c.admitted), false, now, inflight, c.cohort); moved {
				limit = l
			}
			inflight--
			if !c.done { // in time
				c.done = true
				if c.sent >= start && now <= end {
					ok++
				}
				push(simEvent{at: now + 50_000, kind: 0, caller: c.caller})
			}
		case 2:
			if c := e.call; !c.done {
				c.done = true
				push(simEvent{at: now + int64(time.Millisecond), kind: 0, caller: c.caller})
			}
		}
	}
	return float64(ok) / d.Seconds(), limit, trace
}

// TestGradientOverloadOnset runs the bench's overload scenario (4 slots,
// 2 ms work, 16 and 40 closed-loop callers with 5 ms deadlines) in virtual
// time against the adaptive limit, which quiet traffic left at its
// default start of 100: every caller is admitted at once when the
// overload begins, and their calls queue past their deadlines until the
// limit comes down. Waiting out 25 ms windows and halving once a window,
// that took over 100 ms at 40 callers (91% goodput); closing a window as
// soon as its calls clearly queued, and never shrinking below the
// concurrency the server kept up (Little's law), it takes a few
// milliseconds. Deterministic: a seeded random source, no clock.
func TestGradientOverloadOnset(t *testing.T) {
	cfg := DefaultShedderConfig()
	cfg.Adaptive = true
	const slots, work = 4, 2 * time.Millisecond
	capacity := slots / work.Seconds()
	for _, callers := range []int{16, 40} {
		var sum float64
		const seeds = 5
		for seed := range uint64(seeds) {
			gp, _, trace := simOverload(cfg, slots, callers, work, 5*time.Millisecond, 300*time.Millisecond, time.Second, seed)
			sum += gp
			if l := trace[4]; l > 2*slots {
				t.Errorf("%d callers, seed %d: 40 ms into the overload the limit is %d; want at most %d (limits every 10 ms: %v)", callers, seed, l, 2*slots, trace[:10])
			}
		}
		if got := sum / seeds / capacity; got < 0.94 {
			t.Errorf("%d callers: goodput %.0f%% of capacity; want at least 94%%", callers, 100*got)
		}
	}
}
