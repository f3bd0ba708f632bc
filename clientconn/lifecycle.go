package clientconn

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// The lives of pooled connections: idle, evicted, replaced, drained.

// nextAge is the max age with ±10% jitter, as grpc servers do for
// MaxConnectionAge, so connections made together are not replaced together.
func (f *Factory) nextAge() time.Duration {
	age := f.opts.maxAge
	if f.opts.noJitter {
		return age
	}
	return age + time.Duration((rand.Float64()*0.2-0.1)*float64(age))
}

// release returns one handle's reference. The last one moves the entry to
// the idle set, which may push out the least recently used idle entry.
func (f *Factory) release(s *shared) { f.releaseAs(s, false) }

// releaseAs is release; failed says the handle's Get failed its warm-up:
// if it was the last handle, the entry is closed instead of kept idle, as
// the connection is not known to work (a Get that fails leaves nothing
// behind, rather than a connection redialling a dead address).
func (f *Factory) releaseAs(s *shared, failed bool) {
	f.handles.Add(-1)
	type eviction struct {
		s      *shared
		reason string
	}
	var out []eviction
	f.mu.Lock()
	s.refs--
	if s.refs == 0 && !f.closed && !s.dead.Load() {
		s.idleEpoch++
		switch {
		case failed:
			f.evictLocked(s)
			out = append(out, eviction{s, telemetry.EvictWarmUpFailed})
		case f.idle == nil:
			f.evictLocked(s)
			out = append(out, eviction{s, telemetry.EvictCapacity})
		default:
			f.idle.Add(s.key, s) // may evict the oldest into f.evicted
			epoch := s.idleEpoch
			s.idleTimer = time.AfterFunc(f.opts.idleTimeout, func() { f.expire(s, epoch) })
		}
	}
	for _, e := range f.evicted {
		out = append(out, eviction{e, telemetry.EvictCapacity})
	}
	clear(f.evicted)
	f.evicted = f.evicted[:0]
	f.mu.Unlock()
	for _, e := range out {
		if logger.V(2) {
			logger.Infof("connection to %q (tenant %q) evicted: %s", e.s.key.target, e.s.key.tenant, e.reason)
		}
		f.obs.PoolEvicted(e.s.key.target, e.reason)
		f.startDrain(e.s.key.target, e.s.cur.Load(), telemetry.CloseEvicted)
	}
}

// onIdleEvict is the idle LRU's callback; it runs under f.mu. Entries
// taken back into use (refs > 0) or already closed are left alone; any
// other entry was pushed out for capacity.
func (f *Factory) onIdleEvict(_ key, s *shared) {
	if s.refs > 0 || s.dead.Load() {
		return
	}
	f.evictLocked(s)
	f.evicted = append(f.evicted, s)
}

// expire closes s if it has sat without handles since epoch.
func (f *Factory) expire(s *shared, epoch uint64) {
	f.mu.Lock()
	if f.closed || s.dead.Load() || s.refs > 0 || s.idleEpoch != epoch {
		f.mu.Unlock()
		return
	}
	f.evictLocked(s)
	f.idle.Remove(s.key) // the callback sees dead and does nothing
	f.mu.Unlock()
	if logger.V(2) {
		logger.Infof("connection to %q (tenant %q) evicted: %s", s.key.target, s.key.tenant, telemetry.EvictIdle)
	}
	f.obs.PoolEvicted(s.key.target, telemetry.EvictIdle)
	f.startDrain(s.key.target, s.cur.Load(), telemetry.CloseEvicted)
}

// evictLocked takes s out of the pool; the caller then calls startDrain
// once for it. It reserves that goroutine in f.wg while f.mu is held.
func (f *Factory) evictLocked(s *shared) {
	s.dead.Store(true)
	delete(f.conns, s.key)
	f.releaseTenantLocked(s)
	f.releaseConfigLocked(s)
	stopTimer(s.idleTimer)
	stopTimer(s.ageTimer)
	f.evictions.Add(1)
	f.wg.Add(1)
}

// replace gives s a fresh connection after its max age and drains the old.
// An entry without handles is not replaced (a new handshake for a
// connection nobody uses); its next period, once a Get took it back, is.
func (f *Factory) replace(s *shared) {
	f.mu.Lock()
	if f.closed || s.dead.Load() {
		f.mu.Unlock()
		return
	}
	if s.refs == 0 {
		s.ageTimer = time.AfterFunc(f.nextAge(), func() { f.replace(s) })
		f.mu.Unlock()
		return
	}
	f.wg.Add(1)
	f.mu.Unlock()
	defer f.wg.Done()

	cc, err := f.dial(s)
	if err != nil { // the same options worked before; try again next period
		s.recordErr(err)
		if logger.V(2) {
			logger.Infof("connection to %q (tenant %q): replacement failed, retrying next period: %v", s.key.target, s.key.tenant, err)
		}
	} else {
		// Warm the replacement so calls do not wait for its handshake.
		cc.Connect()
		ctx, cancel := context.WithTimeout(f.ctx, min(f.opts.drainTimeout, 10*time.Second))
		st := waitState(ctx, cc, nil)
		cancel()
		// A replacement that could not connect does not replace a
		// connection that works (the backend may refuse new connections
		// while serving the open one): keep it and try next period.
		if st != connectivity.Ready && s.cur.Load().cc.GetState() == connectivity.Ready {
			if logger.V(2) {
				logger.Infof("connection to %q (tenant %q): replacement not ready (%v), keeping the current one until next period", s.key.target, s.key.tenant, st)
			}
			cc.Close()
			cc = nil
		}
	}

	f.mu.Lock()
	if f.closed || s.dead.Load() {
		f.mu.Unlock()
		if cc != nil {
			cc.Close()
		}
		return
	}
	var old *generation
	if cc != nil {
		old = s.cur.Swap(newGeneration(cc, time.Now()))
		f.open.Add(1)
		f.wg.Add(1) // for old's drain
	}
	s.ageTimer = time.AfterFunc(f.nextAge(), func() { f.replace(s) })
	f.mu.Unlock()
	if old != nil {
		if logger.V(2) {
			logger.Infof("connection to %q (tenant %q) rotated after %v (max age)", s.key.target, s.key.tenant, time.Since(old.born).Round(time.Millisecond))
		}
		f.obs.ConnOpened(s.key.target)
		f.startDrain(s.key.target, old, telemetry.CloseMaxAge)
	}
}

// revive replaces generation g of s, whose *grpc.ClientConn was closed
// behind the Factory's back (Conn.ClientConn().Close()), so the other
// handles sharing it are not cut off for good. Calls that failed on g are
// not retried: they may have reached the server.
func (f *Factory) revive(s *shared, g *generation) {
	s.reviveMu.Lock()
	defer s.reviveMu.Unlock()
	if s.cur.Load() != g || s.dead.Load() || g.retired.Load() {
		return // already replaced, or the Factory closed it
	}
	cc, err := f.dial(s)
	if err != nil { // the same options worked before; the next failing call tries again
		s.recordErr(err)
		return
	}
	f.mu.Lock()
	if f.closed || s.dead.Load() || s.cur.Load() != g {
		f.mu.Unlock()
		cc.Close()
		return
	}
	s.cur.Store(newGeneration(cc, time.Now()))
	f.open.Add(1)
	f.wg.Add(1) // for g's drain
	f.mu.Unlock()
	if logger.V(2) {
		logger.Infof("connection to %q (tenant %q) was closed outside the Factory (Conn.ClientConn().Close()?); replaced", s.key.target, s.key.tenant)
	}
	f.obs.ConnOpened(s.key.target)
	f.startDrain(s.key.target, g, telemetry.CloseExternal)
}

// startDrain retires g and closes it once its calls end or the drain
// timeout passes. The caller has already done f.wg.Add(1) under f.mu.
func (f *Factory) startDrain(target string, g *generation, reason string) {
	g.retire()
	go func() {
		defer f.wg.Done()
		t := time.NewTimer(f.opts.drainTimeout)
		select {
		case <-g.drained:
		case <-t.C:
		}
		t.Stop()
		g.cc.Close()
		f.open.Add(-1)
		if logger.V(2) {
			logger.Infof("connection to %q closed (%s) after %v", target, reason, time.Since(g.born).Round(time.Millisecond))
		}
		f.obs.ConnClosed(target, reason, time.Since(g.born))
	}()
}

func stopTimer(t *time.Timer) {
	if t != nil {
		t.Stop()
	}
}
