package balancer

import (
	"math"
	"time"

	"google.golang.org/grpc/connectivity"
)

// run is the control loop, the balancer's only goroutine. It folds call
// statistics into scores, ejects and returns endpoints, and opens and
// closes extra subchannels. It exits when Close closes quit.
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
	defer l.unlockAndEmit()
	if l.closed {
		return maxSleep
	}
	now := l.sh.now()
	changed := false
	if now-l.lastSample >= l.k.sampleInterval {
		// Announce sleep before sampling: a pick that starts after the
		// sample wakes the loop; one that ran before shows in the sample.
		l.sh.sleeping.Store(true)
		l.active = l.sampleLocked(now)
		l.lastSample = now
		if l.active {
			l.sh.sleeping.Store(false)
		}
	}
	if l.ejectLocked(now) {
		changed = true
	}
	if l.scaleLocked(now) {
		changed = true
	}
	if changed {
		l.updatePickerLocked()
	}
	if l.active || !l.sh.sleeping.Load() {
		return max(l.k.sampleInterval-(now-l.lastSample), time.Millisecond)
	}
	next := maxSleep
	for _, ep := range l.order {
		if ep.ejected {
			next = min(next, ep.returnAt-now)
		}
		for i, s := range ep.subs {
			if i >= l.cfg.SubchannelsPerEndpoint {
				next = min(next, s.idleSince+l.cfg.SubchannelIdleTimeout-now)
			}
		}
	}
	return max(next, time.Millisecond)
}

// sampleLocked folds the statistics of the window since the last sample
// into each endpoint's peak-EWMA latency and failure share, and reports
// whether any call was in flight or completed.
func (l *lb) sampleLocked(now time.Duration) bool {
	window := now - l.lastSample
	w := math.Exp(-float64(window) / float64(l.k.latencyDecay))
	active := false
	var sum float64
	var sampled int
	idle := make([]*endpoint, 0, len(l.order))
	for _, ep := range l.order {
		x := ep.load.Load()
		done := ep.ok.Load() + ep.neutral.Load()
		failed := ep.failed.Load()
		t := uint64(l.sh.now() / time.Microsecond)
		n := x & inflightMask
		area := (t*n - x>>inflightBits) & areaMask
		dArea := (area - ep.lastArea) & areaMask
		dDone, dFailed := done-ep.lastDone, failed-ep.lastFailed
		ep.lastArea, ep.lastDone, ep.lastFailed = area, done, failed
		changed := int(n) != ep.inflight
		ep.inflight = int(n)
		if n > 0 || dDone > 0 || dFailed > 0 {
			active = true
		}
		if dDone > 0 {
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
		} else if n == 0 && dFailed == 0 {
			idle = append(idle, ep)
		}
		if calls := dDone + dFailed; calls > 0 {
			a := 1 - math.Exp(-float64(calls)/failureMemory)
			ep.failRate += a * (float64(dFailed)/float64(calls) - ep.failRate)
		} else if n == 0 {
			ep.failRate *= w
		}
		ep.setWeight()
		if changed || dDone > 0 {
			l.pending = append(l.pending, event{kind: evLoad, ep: ep.name, n: int(n),
				d: time.Duration(ep.ewma * float64(time.Microsecond))})
		}
	}
	// An endpoint without calls drifts towards the others' latency, so
	// that one which was slow is tried again after a few τ.
	if sampled > 0 {
		mean := sum / float64(sampled)
		for _, ep := range idle {
			if ep.ewma > 0 {
				ep.ewma = mean + w*(ep.ewma-mean)
				ep.setWeight()
			}
		}
	}
	return active
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
	}
	return changed
}

// scaleLocked opens a subchannel for endpoints whose picks asked for one,
// and closes extra subchannels that carried no call for the idle timeout.
// It reports whether the set of subchannels changed.
func (l *lb) scaleLocked(now time.Duration) bool {
	cfg := l.cfg
	changed := false
	for _, ep := range l.order {
		if ep.growReq.Load() && !ep.ejected && len(ep.subs) < cfg.MaxSubchannelsPerEndpoint && allReady(ep) {
			// growReq stays set until the next picker, so one request
			// opens one subchannel.
			if l.newSubConnLocked(ep, now) {
				changed = true
			}
		}
		for i := 0; i < len(ep.subs); i++ {
			s := ep.subs[i]
			u := s.use.Load()
			picks, inflight := uint32(u>>32), uint32(u)
			if picks != s.lastPicks || inflight != 0 {
				s.lastPicks, s.idleSince = picks, now
				continue
			}
			if i >= cfg.SubchannelsPerEndpoint && now-s.idleSince >= cfg.SubchannelIdleTimeout {
				l.shutdownLocked(s)
				i--
				changed = true
			}
		}
	}
	return changed
}

func allReady(ep *endpoint) bool {
	for _, s := range ep.subs {
		if s.state != connectivity.Ready {
			return false
		}
	}
	return true
}
