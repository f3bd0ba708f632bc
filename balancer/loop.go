package balancer

import (
	"math"
	"time"

	"google.golang.org/grpc/connectivity"
)

// run is the control loop, the balancer's only goroutine. It folds call
// statistics into scores, ejects and returns endpoints, holds black holes
// out, opens and closes extra connections and reconnects idle ones. It
// exits when Close closes quit.
func (l *lb) run() {
	defer close(l.loopDone)
	timer := time.NewTimer(l.k.sampleInterval)
	defer timer.Stop()
	for {
		select {
		case <-l.quit:
			return
		case <-l.sh.kick:
		case <-timer.C:
		}
		timer.Reset(l.tick())
	}
}

// tick does one round of the control loop and returns how long to wait
// for the next one.
func (l *lb) tick() time.Duration {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return maxSleep
	}
	now := l.sh.now()
	changed := false
	if now-l.lastSample >= l.k.sampleInterval {
		// Announce sleep before sampling: a pick that starts after the
		// sample wakes the loop; one that ran before shows in the sample.
		l.sh.sleeping.Store(true)
		var probesChanged bool
		l.active, probesChanged = l.sampleLocked(now)
		changed = changed || probesChanged
		l.lastSample = now
		if l.active {
			l.sh.sleeping.Store(false)
		}
	}
	if l.ejectLocked(now) {
		changed = true
	}
	if l.holdLocked(now) {
		changed = true
	}
	if l.connectWaitUntil != 0 && now >= l.connectWaitUntil {
		changed = true // stop holding calls back for a connecting endpoint
	}
	var w work
	if l.scaleLocked(now, &w) {
		changed = true
	}
	for _, c := range l.pendingIdle {
		if !c.removed && c.state == connectivity.Idle {
			w.exitIdle = append(w.exitIdle, c)
		}
	}
	l.pendingIdle = nil
	next := l.nextLocked(now)
	if !changed && w.empty() {
		l.unlockAndEmit()
		return next
	}
	l.applyLocked(&w)
	return next
}

// nextLocked is how long the loop may wait before its next round.
func (l *lb) nextLocked(now time.Duration) time.Duration {
	if l.active || !l.sh.sleeping.Load() {
		return max(l.k.sampleInterval-(now-l.lastSample), time.Millisecond)
	}
	next := maxSleep
	if l.connectWaitUntil != 0 {
		next = l.connectWaitUntil - now
	}
	for _, ep := range l.order {
		if ep.ejected {
			next = min(next, ep.returnAt-now)
		}
		if ep.held {
			next = min(next, ep.holdUntil-now)
		}
		for i, c := range ep.conns {
			if i >= l.cfg.SubchannelsPerEndpoint {
				next = min(next, c.idleSince+l.cfg.SubchannelIdleTimeout-now)
			}
		}
	}
	return max(next, time.Millisecond)
}

// sampleLocked folds the statistics of the window since the last sample
// into each endpoint's peak-EWMA latency and failure and shed shares,
// reports the calls finished, and reports whether any call was in flight
// or finished, and whether an endpoint started or stopped being probed
// for its latency (the picker must change).
func (l *lb) sampleLocked(now time.Duration) (active, probes bool) {
	window := now - l.lastSample
	w := math.Exp(-float64(window) / float64(l.k.latencyDecay))
	var sum float64
	var sampled int
	idle := make([]*endpoint, 0, len(l.order))
	answeredBy := 0 // endpoints that answered a call in this window
	for _, ep := range l.order {
		x := ep.load.Load()
		cur := ep.counts()
		t := uint64(l.sh.now() / time.Microsecond)
		n := x & inflightMask
		area := (t*n - x>>inflightBits) & areaMask
		dArea := (area - ep.lastArea) & areaMask
		d := counts{cur.ok - ep.last.ok, cur.failed - ep.last.failed, cur.shed - ep.last.shed, cur.neutral - ep.last.neutral, cur.timeouts - ep.last.timeouts}
		ep.lastArea, ep.last = area, cur
		// Latency samples: calls that took their time (answers,
		// cancellations, timeouts). Failed and shed calls end fast and
		// would make a refusing backend look fast.
		dDone := d.ok + d.neutral + d.timeouts
		all := dDone + d.failed + d.shed
		changed := int(n) != ep.inflight
		ep.inflight = int(n)
		if n > 0 || all > 0 {
			active = true
		}
		if d.ok > 0 {
			answeredBy++
		}
		if dDone > 0 {
			if ep.drifted {
				ep.drifted, probes = false, true
			}
			// Peak EWMA: a slower sample is taken at once, a faster one
			// blends in with weight 1−exp(−window/τ).
			sample := float64(dArea) / float64(dDone)
			if sample > ep.ewma {
				ep.ewma = sample
			} else {
				ep.ewma = sample + w*(ep.ewma-sample)
			}
			sum += ep.ewma
			sampled++
		} else if n == 0 && all == 0 {
			idle = append(idle, ep)
		}
		if all > 0 {
			a := 1 - math.Exp(-float64(all)/failureMemory)
			ep.failRate += a * (float64(d.failed)/float64(all) - ep.failRate)
			ep.shedRate += a * (float64(d.shed)/float64(all) - ep.shedRate)
		} else if n == 0 {
			ep.failRate *= w
			ep.shedRate *= w
		}
		if changed || dDone > 0 {
			l.pending = append(l.pending, event{kind: evLoad, ep: ep.name, n: int(n),
				d: time.Duration(ep.ewma * float64(time.Microsecond))})
		}
		if cur != ep.reported {
			r := ep.reported
			l.pending = append(l.pending, event{kind: evCalls, ep: ep.name, calls: counts{cur.ok - r.ok, cur.failed - r.failed,
				cur.shed - r.shed, cur.neutral - r.neutral, cur.timeouts - r.timeouts}})
			ep.reported = cur
		}
		ep.answeredWindow = d.ok > 0
	}
	l.othersAnswer = answeredBy
	// An endpoint without calls drifts towards the others' latency, so
	// that one which was slow is tried again after a few τ. Until a call
	// of its own measures it again, a drifted endpoint that was avoided
	// as slow takes one call at a time: a probe, not a round-robin share.
	if sampled > 0 {
		mean := sum / float64(sampled)
		for _, ep := range idle {
			if ep.ewma > 0 && !ep.held {
				if !ep.drifted && l.refLatency > 0 && ep.ewma > latencyBand*l.refLatency {
					ep.drifted, probes = true, true
				}
				ep.ewma = mean + w*(ep.ewma-mean)
			}
		}
	}
	ref := 0.0
	for _, ep := range l.order {
		if ep.ewma > 0 && (ref == 0 || ep.ewma < ref) {
			ref = ep.ewma
		}
	}
	l.refLatency = ref
	for _, ep := range l.order {
		ep.setWeight(ref)
	}
	return active, probes
}

// holdLocked holds black holes out of picking: an endpoint whose calls
// keep timing out while other endpoints answer. A hold is not an
// ejection (the caller's deadline is not the backend's failure, and the
// endpoint is still used if nothing else can serve). When a hold ends, the
// endpoint gets one call at a time (a probe) until one is answered; a
// probe that times out holds it again, twice as long. It reports whether
// any endpoint changed.
func (l *lb) holdLocked(now time.Duration) bool {
	changed := false
	for _, ep := range l.order {
		switch {
		case ep.held:
			if now >= ep.holdUntil {
				ep.held, ep.probing = false, true
				changed = true
				if logger.V(2) {
					logger.Infof("%s: target %q: endpoint %s: hold ended, probing with one call", Name, l.target, ep.name)
				}
			}
		case ep.probing && ep.answeredWindow:
			ep.probing, ep.holds = false, 0
			changed = true
			if logger.V(2) {
				logger.Infof("%s: target %q: endpoint %s answered its probe", Name, l.target, ep.name)
			}
		default:
			need := int64(minTimeouts)
			if ep.probing {
				need = 1
			}
			others := l.othersAnswer
			if ep.answeredWindow {
				others--
			}
			if ep.consecTO.Load() < need {
				continue
			}
			if others <= 0 {
				// Nobody answered in this window: the timeouts are the
				// callers' deadlines, not this endpoint's silence.
				ep.consecTO.Store(0)
				continue
			}
			ep.consecTO.Store(0)
			ep.holds++
			d := l.cfg.Ejection.MaxEjectionTime
			if ep.holds < 30 {
				d = min(holdBase<<(ep.holds-1), d)
			}
			ep.held, ep.probing, ep.holdUntil = true, false, now+d
			changed = true
			if logger.V(2) {
				logger.Infof("%s: target %q: endpoint %s: calls keep timing out while others answer; held out for %v", Name, l.target, ep.name, d)
			}
		}
	}
	return changed
}

// ejectLocked ejects endpoints with too many consecutive failures and
// returns those whose ejection ended. It reports whether any changed.
func (l *lb) ejectLocked(now time.Duration) bool {
	e := l.cfg.Ejection
	changed := false
	ejected := 0
	for _, ep := range l.order {
		if ep.ejected {
			if now >= ep.returnAt {
				ep.ejected = false
				ep.lastReturn = now
				ep.consec.Store(0)
				changed = true
				l.pending = append(l.pending, event{kind: evReturned, ep: ep.name})
				if logger.V(2) {
					logger.Infof("%s: target %q: endpoint %s returned", Name, l.target, ep.name)
				}
			} else {
				ejected++
			}
		}
	}
	thr := int64(e.ConsecutiveFailures)
	if thr == 0 {
		return changed
	}
	for _, ep := range l.order {
		if ep.ejected || ep.consec.Load() < thr {
			continue
		}
		ep.consec.Store(0)
		if (ejected+1)*100 > e.MaxEjectionPercent*len(l.order) {
			if logger.V(2) {
				logger.Infof("%s: target %q: endpoint %s not ejected: maxEjectionPercent %d reached", Name, l.target, ep.name, e.MaxEjectionPercent)
			}
			continue // would exceed maxEjectionPercent
		}
		// The multiplier decays by one per baseEjectionTime spent healthy.
		if healthy := int((now - ep.lastReturn) / e.BaseEjectionTime); healthy > 0 {
			ep.ejections = max(0, ep.ejections-healthy)
		}
		ep.ejections++
		d := e.MaxEjectionTime
		if ep.ejections <= int(e.MaxEjectionTime/e.BaseEjectionTime) {
			d = min(e.BaseEjectionTime*time.Duration(ep.ejections), e.MaxEjectionTime)
		}
		ep.ejected = true
		ep.returnAt = now + d
		ejected++
		changed = true
		l.pending = append(l.pending, event{kind: evEjected, ep: ep.name, d: d})
		if logger.V(2) {
			logger.Infof("%s: target %q: endpoint %s ejected for %v after %d failures in a row", Name, l.target, ep.name, d, thr)
		}
	}
	return changed
}

// scaleLocked opens a connection for endpoints whose picks asked for one,
// and closes extra connections that carried no call for the idle timeout,
// adding what the children must do to w. It reports whether the set of
// connections changed.
func (l *lb) scaleLocked(now time.Duration, w *work) bool {
	cfg := l.cfg
	changed := false
	for _, ep := range l.order {
		if ep.growReq.Load() && !ep.ejected && !ep.held && len(ep.conns) < cfg.MaxSubchannelsPerEndpoint && allReady(ep) {
			// growReq stays set until the next picker, so one request
			// opens one connection.
			w.update = append(w.update, l.newConnLocked(ep, now))
			w.rs = append(w.rs, l.childStateLocked(ep))
			changed = true
			if logger.V(2) {
				logger.Infof("%s: target %q: endpoint %s: opening connection %d of at most %d", Name, l.target, ep.name, len(ep.conns), cfg.MaxSubchannelsPerEndpoint)
			}
		}
		for i := 0; i < len(ep.conns); i++ {
			c := ep.conns[i]
			u := c.use.Load()
			picks, inflight := uint32(u>>32), uint32(u)
			if picks != c.lastPicks || inflight != 0 {
				c.lastPicks, c.idleSince = picks, now
				continue
			}
			if i >= cfg.SubchannelsPerEndpoint && now-c.idleSince >= cfg.SubchannelIdleTimeout {
				w.close = append(w.close, l.removeLocked(c))
				i--
				changed = true
				if logger.V(2) {
					logger.Infof("%s: target %q: endpoint %s: closed an idle extra connection, %d left", Name, l.target, ep.name, len(ep.conns))
				}
			}
		}
	}
	return changed
}

func allReady(ep *endpoint) bool {
	for _, c := range ep.conns {
		if c.state != connectivity.Ready {
			return false
		}
	}
	return true
}
