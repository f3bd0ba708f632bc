package interceptors

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"time"
)

// The general simulation: simOverload's server (slots workers, first come
// first served) with knobs for the load's shape, in virtual time, so that
// the adaptive limit, a fixed one and none can be compared on the same
// calls. Deterministic: a seeded random source, no clock.

// simMethod is one method of a simulated server.
type simMethod struct {
	// work is a call's service time, drawn once per call; at is the
	// virtual time since the scenario started (a server whose work changes).
	work func(r *rand.Rand, at time.Duration) time.Duration
	// wait says the method waits (on a dependency) instead of taking a
	// worker: it never queues.
	wait bool
	// fails says its calls end in an error (still measured by the
	// gradient, as doneUnary does).
	fails bool
}

// simGroup is a group of closed-loop callers.
type simGroup struct {
	n int
	// method picks a call's method.
	method func(r *rand.Rand) int
	// dl is the calls' deadline from their send; 0 none.
	dl time.Duration
	// cancelAfter, when set, cancels each call this long after it was
	// admitted (a caller that gives up).
	cancelAfter time.Duration
	// honour says the handler returns as soon as its call's context
	// ends (a handler passing ctx on); else it runs to its end.
	honour bool
	// think is the pause after an answer; backoff after a shed or a
	// failure (default 1 ms).
	think, backoff time.Duration
	// from, to: when the group's callers are active, since the start; to 0
	// means the end.
	from, to time.Duration
}

// simBurst is open-loop traffic: rate calls/s of method during len every
// period, starting at phase; each call has deadline dl and is not retried.
type simBurst struct {
	rate          float64
	method        int
	dl            time.Duration
	period, len   time.Duration
	phase, before time.Duration // before: stop bursting at this time (0: the end)
}

type simScenario struct {
	slots   int
	methods []simMethod
	groups  []simGroup
	bursts  []simBurst
	// fixed: 0 the adaptive limit (cfg), >0 a fixed limit, <0 none.
	fixed int
	cfg   ShedderConfig
	d     time.Duration // the whole run; goodput is counted from measure on
	// measure is when counting starts.
	measure time.Duration
	seed    uint64
	// watch, when set, is called at every trace point (debugging).
	watch func(now int64, g *gradient, sts []*serviceTime)
}

type simResult struct {
	ok, sent, shed, late   int // counted from measure on
	sentBefore, shedBefore int // before measure
	okByMethod             []int
	goodput                float64 // ok per second
	moves                  int     // limit changes, from measure on
	minLimit, maxLimit     int64   // from measure on
	lastLimit              int64
	probes                 int
	probing                time.Duration // spent probing, the whole run
	trace                  []int64       // the limit every 10 ms from measure on
}

type simEv struct {
	at    int64
	kind  int // 0 send (group caller), 1 work ends, 2 caller's deadline/cancel, 3 burst arrival
	who   int // caller index (groups flattened) or burst index
	call  *simC
	epoch int // for kind 1: the call's start epoch (ignored if stale)
}

type simC struct {
	who          int // caller index, -1 for bursts
	method       int
	sent, admit  int64
	dl, cancelAt int64 // absolute; 0 none
	cohort       int64 // gradient.admit's
	work         int64
	running      bool
	ended        bool // the handler returned
	answered     bool // the caller has its answer (ok, error or gave up)
	queued       bool
}

type simQ []simEv

func (q simQ) Len() int { return len(q) }
func (q simQ) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].kind < q[j].kind
}
func (q simQ) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQ) Push(x any)   { *q = append(*q, x.(simEv)) }
func (q *simQ) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// simRun runs sc and returns what its callers got.
func simRun(sc simScenario) simResult {
	rng := rand.New(rand.NewPCG(sc.seed, 7))
	var g *gradient
	limit := int64(math.MaxInt64)
	switch {
	case sc.fixed > 0:
		limit = int64(sc.fixed)
	case sc.fixed == 0:
		g = newGradient(sc.cfg)
		limit = int64(sc.cfg.Limit)
	}
	sts := make([]*serviceTime, len(sc.methods))
	for i := range sts {
		sts[i] = &serviceTime{}
	}
	var callers []int // group of each caller
	for gi, gr := range sc.groups {
		for range gr.n {
			callers = append(callers, gi)
		}
	}
	res := simResult{okByMethod: make([]int, len(sc.methods)), minLimit: math.MaxInt64}
	var q simQ
	push := func(e simEv) { heap.Push(&q, e) }
	var now int64
	end, measure := int64(sc.d), int64(sc.measure)
	inflight := int64(0)
	busy := 0
	var waiting []*simC
	counted := func(c *simC) bool { return c.sent >= measure }
	setLimit := func(l int64) {
		if l != limit && now >= measure {
			res.moves++
		}
		limit = l
	}
	startWork := func(c *simC) {
		busy++
		c.running, c.queued = true, false
		push(simEv{at: now + c.work, kind: 1, call: c})
	}
	next := func() {
		for busy < sc.slots && len(waiting) > 0 {
			c := waiting[0]
			waiting = waiting[1:]
			if !c.ended {
				startWork(c)
			}
		}
	}
	// reply: the caller of c has its answer at now; ok says in time.
	again := func(c *simC, ok bool) {
		if c.answered {
			return
		}
		c.answered = true
		if counted(c) && now <= end {
			if ok {
				res.ok++
				res.okByMethod[c.method]++
			} else {
				res.late++
			}
		}
		if c.who < 0 {
			return
		}
		gr := sc.groups[callers[c.who]]
		pause := gr.think
		if !ok {
			pause = cmp0(gr.backoff, time.Millisecond)
		}
		push(simEv{at: now + int64(pause) + 1, kind: 0, who: c.who})
	}
	// handlerDone: c's handler returned at now.
	handlerDone := func(c *simC, cut bool) {
		c.ended = true
		if g != nil {
			if l, moved := g.sample(sts[c.method], time.Duration(now-c.admit), cut, now, inflight, c.cohort); moved {
				setLimit(l)
				if g.probing.Load() {
					res.probes++
				}
			}
		}
		inflight--
	}
	send := func(who, method int, dl time.Duration, cancelAfter time.Duration) {
		if now >= end {
			return
		}
		c := &simC{who: who, method: method, sent: now}
		if now >= measure {
			res.sent++
		} else {
			res.sentBefore++
		}
		if inflight >= limit {
			if now >= measure {
				res.shed++
			} else {
				res.shedBefore++
			}
			if g != nil && g.probing.Load() {
				if l, moved := g.abandonStaleProbe(now); moved {
					setLimit(l)
				}
			}
			c.answered = true
			if who >= 0 {
				gr := sc.groups[callers[who]]
				push(simEv{at: now + int64(cmp0(gr.backoff, time.Millisecond)) + 50_000, kind: 0, who: who})
			}
			return
		}
		inflight++
		c.admit = now
		if g != nil {
			c.cohort = g.admit(now)
		}
		c.work = int64(sc.methods[method].work(rng, time.Duration(now)))
		if dl > 0 {
			c.dl = now + int64(dl)
			push(simEv{at: c.dl, kind: 2, call: c})
		}
		if cancelAfter > 0 && (c.dl == 0 || int64(cancelAfter) < int64(dl)) {
			c.cancelAt = now + int64(cancelAfter)
			push(simEv{at: c.cancelAt, kind: 2, call: c})
		}
		if sc.methods[method].wait {
			push(simEv{at: now + c.work, kind: 1, call: c, epoch: -1})
			return
		}
		if busy < sc.slots {
			startWork(c)
		} else {
			c.queued = true
			waiting = append(waiting, c)
		}
	}
	for i := range callers {
		gr := sc.groups[callers[i]]
		push(simEv{at: int64(gr.from), kind: 0, who: i})
	}
	for i, b := range sc.bursts {
		push(simEv{at: int64(b.phase), kind: 3, who: i})
	}
	nextTrace := measure
	for q.Len() > 0 {
		e := heap.Pop(&q).(simEv)
		if g != nil && g.probing.Load() {
			res.probing += time.Duration(e.at - now)
		}
		now = e.at
		for now >= nextTrace && nextTrace < end {
			res.trace = append(res.trace, limit)
			if sc.watch != nil {
				sc.watch(now, g, sts)
			}
			nextTrace += int64(10 * time.Millisecond)
		}
		if now >= measure && now < end {
			res.minLimit, res.maxLimit = min(res.minLimit, limit), max(res.maxLimit, limit)
		}
		switch e.kind {
		case 0:
			gr := sc.groups[callers[e.who]]
			if gr.to > 0 && now >= int64(gr.to) {
				continue
			}
			m := 0
			if gr.method != nil {
				m = gr.method(rng)
			}
			send(e.who, m, gr.dl, gr.cancelAfter)
		case 3:
			b := sc.bursts[e.who]
			if now >= end || b.before > 0 && now >= int64(b.before) {
				continue
			}
			send(-1, b.method, b.dl, 0)
			gap := int64(float64(time.Second) / b.rate)
			nt := now + gap
			if off := (nt - int64(b.phase)) % int64(b.period); off >= int64(b.len) {
				nt += int64(b.period) - off
			}
			push(simEv{at: nt, kind: 3, who: e.who})
		case 1:
			c := e.call
			if c.ended {
				continue
			}
			if c.running {
				busy--
				c.running = false
			}
			cut := c.answered // its caller gave up before
			handlerDone(c, cut)
			next()
			again(c, !cut && !sc.methods[c.method].fails)
		case 2:
			c := e.call
			if c.answered || c.ended {
				continue
			}
			gr := simGroup{}
			if c.who >= 0 {
				gr = sc.groups[callers[c.who]]
			}
			again(c, false)
			if gr.honour {
				if c.running {
					busy--
					c.running = false
				}
				handlerDone(c, true)
				next()
			}
		}
	}
	res.lastLimit = limit
	res.goodput = float64(res.ok) / time.Duration(end-measure).Seconds()
	return res
}

func cmp0(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// uniform returns a work function of d ±10%.
func uniform(d time.Duration) func(*rand.Rand, time.Duration) time.Duration {
	return func(r *rand.Rand, _ time.Duration) time.Duration {
		return time.Duration(float64(d) * (0.9 + 0.2*r.Float64()))
	}
}
