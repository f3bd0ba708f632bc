package clientconn_test

import (
	"sync"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// recorder counts what the Factory reports.
type recorder struct {
	telemetry.Nop
	mu sync.Mutex
	counts
}

type counts struct {
	hits, misses, opened, dialed, dialErrs int
	evicted, closed                        map[string]int
	lastLifetime                           time.Duration
}

func newRecorder() *recorder {
	return &recorder{counts: counts{evicted: map[string]int{}, closed: map[string]int{}}}
}

func (r *recorder) PoolGet(_ string, hit bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if hit {
		r.hits++
	} else {
		r.misses++
	}
}

func (r *recorder) PoolEvicted(_ string, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evicted[reason]++
}

func (r *recorder) ConnOpened(string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opened++
}

func (r *recorder) ConnClosed(_ string, reason string, lifetime time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed[reason]++
	r.lastLifetime = lifetime
}

func (r *recorder) Dialed(_, _ string, _ time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dialed++
	if err != nil {
		r.dialErrs++
	}
}

func (r *recorder) snapshot() counts {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.counts
	c.evicted, c.closed = map[string]int{}, map[string]int{}
	for k, v := range r.evicted {
		c.evicted[k] = v
	}
	for k, v := range r.closed {
		c.closed[k] = v
	}
	return c
}

func TestFactoryReportsToObserver(t *testing.T) {
	b1 := testutil.StartBackend(t, testutil.BackendOptions{})
	b2 := testutil.StartBackend(t, testutil.BackendOptions{})
	rec := newRecorder()
	f := newFactory(t, clientconn.WithObserver(rec), clientconn.WithMaxIdle(1), clientconn.WithIdleTimeout(time.Hour))

	c1 := get(t, f, b1.Addr)
	mustUnary(t, c1)
	c1b := get(t, f, b1.Addr)
	c2 := get(t, f, b2.Addr)
	mustUnary(t, c2)
	c1.Close()
	c1b.Close() // b1's connection goes idle
	c2.Close()  // b2's too: capacity 1 evicts b1's, the least recently used
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.snapshot().closed[telemetry.CloseEvicted] == 1 }, "eviction reported")

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got := rec.snapshot()
	if got.hits != 1 || got.misses != 2 || got.opened != 2 {
		t.Errorf("hits, misses, opened = %d, %d, %d; want 1, 2, 2", got.hits, got.misses, got.opened)
	}
	if got.evicted[telemetry.EvictCapacity] != 1 {
		t.Errorf("evictions = %v, want one for capacity", got.evicted)
	}
	if got.closed[telemetry.CloseEvicted] != 1 || got.closed[telemetry.CloseShutdown] != 1 {
		t.Errorf("closes = %v, want one evicted and one at shutdown", got.closed)
	}
	if got.dialed != 2 || got.dialErrs != 0 || got.lastLifetime <= 0 {
		t.Errorf("dialed %d (errors %d), last lifetime %v; want 2 dials without error and a positive lifetime", got.dialed, got.dialErrs, got.lastLifetime)
	}
}
