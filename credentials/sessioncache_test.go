package credentials_test

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// fakeClock is a settable clock for TTL tests.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// cacheObserver counts session cache events per tenant.
type cacheObserver struct {
	telemetry.Nop
	mu                      sync.Mutex
	hits, misses, evictions map[string]int
}

func newCacheObserver() *cacheObserver {
	return &cacheObserver{hits: map[string]int{}, misses: map[string]int{}, evictions: map[string]int{}}
}

func (o *cacheObserver) SessionCacheLookup(tenant string, hit bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if hit {
		o.hits[tenant]++
	} else {
		o.misses[tenant]++
	}
}

func (o *cacheObserver) SessionCacheEvicted(tenant string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.evictions[tenant]++
}

func TestSessionCacheTenantsAreIsolated(t *testing.T) {
	c, err := credentials.NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.ForTenant("a"), c.ForTenant("b")
	sa, sb := new(tls.ClientSessionState), new(tls.ClientSessionState)
	a.Put("backend.test", sa)
	if got, ok := b.Get("backend.test"); ok {
		t.Fatalf("tenant b got tenant a's session %p", got)
	}
	if _, ok := c.Get("backend.test"); ok {
		t.Fatal("the \"\" tenant got tenant a's session")
	}
	b.Put("backend.test", sb)
	if got, ok := a.Get("backend.test"); !ok || got != sa {
		t.Fatalf("tenant a Get = %p, %v; want its own %p", got, ok, sa)
	}
	if got, ok := c.ForTenant("b").Get("backend.test"); !ok || got != sb {
		t.Fatalf("a second view of tenant b Get = %p, %v; want %p", got, ok, sb)
	}
	st := c.Stats()
	want := credentials.SessionCacheStats{Offered: 2, Hits: 2, Misses: 2, Puts: 2, Len: 2}
	if st != want {
		t.Fatalf("Stats() = %+v; want %+v", st, want)
	}
}

func TestSessionCacheTTL(t *testing.T) {
	clock := newFakeClock()
	obs := newCacheObserver()
	c, err := credentials.NewSessionCache(credentials.WithTTL(time.Minute),
		credentials.WithObserver(obs), credentials.WithClock(clock.now))
	if err != nil {
		t.Fatal(err)
	}
	v := c.ForTenant("t")
	v.Put("k", new(tls.ClientSessionState))
	clock.advance(time.Minute - time.Nanosecond)
	if _, ok := v.Get("k"); !ok {
		t.Fatal("session missing before its TTL")
	}
	clock.advance(time.Nanosecond)
	if _, ok := v.Get("k"); ok {
		t.Fatal("session offered at its TTL")
	}
	st := c.Stats()
	if st.Evictions != 1 || st.Len != 0 || st.Offered != 1 || st.Misses != 1 {
		t.Fatalf("Stats() = %+v; want 1 hit, 1 miss, 1 eviction, len 0", st)
	}
	if obs.evictions["t"] != 1 || obs.hits["t"] != 1 || obs.misses["t"] != 1 {
		t.Fatalf("observer saw hits %v misses %v evictions %v; want 1 each for tenant t",
			obs.hits, obs.misses, obs.evictions)
	}
	// A new Put restarts the TTL.
	v.Put("k", new(tls.ClientSessionState))
	clock.advance(30 * time.Second)
	if _, ok := v.Get("k"); !ok {
		t.Fatal("session stored again missing before its new TTL")
	}
}

func TestSessionCacheCapacity(t *testing.T) {
	obs := newCacheObserver()
	c, err := credentials.NewSessionCache(credentials.WithCapacity(2), credentials.WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.ForTenant("a"), c.ForTenant("b")
	a.Put("k1", new(tls.ClientSessionState))
	b.Put("k2", new(tls.ClientSessionState))
	if _, ok := a.Get("k1"); !ok { // k1 becomes most recently used
		t.Fatal("k1 missing")
	}
	b.Put("k3", new(tls.ClientSessionState)) // pushes out k2, the least recently used
	if _, ok := b.Get("k2"); ok {
		t.Fatal("k2 survived although it was least recently used")
	}
	if _, ok := a.Get("k1"); !ok {
		t.Fatal("k1 evicted although recently used")
	}
	// Replacing an existing key evicts nothing.
	b.Put("k3", new(tls.ClientSessionState))
	st := c.Stats()
	want := credentials.SessionCacheStats{Offered: 2, Hits: 2, Misses: 1, Puts: 4, Evictions: 1, Len: 2}
	if st != want {
		t.Fatalf("Stats() = %+v; want %+v", st, want)
	}
	if obs.evictions["b"] != 1 || len(obs.evictions) != 1 {
		t.Fatalf("observer evictions = %v; want map[b:1]", obs.evictions)
	}
}

func TestSessionCachePutNilRemoves(t *testing.T) {
	c, err := credentials.NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}
	c.Put("k", new(tls.ClientSessionState))
	c.Put("k", nil)
	if _, ok := c.Get("k"); ok {
		t.Fatal("session offered after crypto/tls invalidated it with Put(nil)")
	}
	if st := c.Stats(); st.Evictions != 0 || st.Puts != 1 {
		t.Fatalf("Stats() = %+v; want 1 put and no eviction", st)
	}
}

func TestSessionCacheConcurrentUse(t *testing.T) {
	c, err := credentials.NewSessionCache(credentials.WithCapacity(16))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := c.ForTenant(fmt.Sprint("tenant", g%3))
			for i := range 500 {
				key := fmt.Sprint("k", i%20)
				v.Put(key, new(tls.ClientSessionState))
				v.Get(key)
				_ = c.Stats()
			}
		}()
	}
	wg.Wait()
	st := c.Stats()
	if st.Len > 16 {
		t.Fatalf("Len = %d exceeds capacity 16", st.Len)
	}
	if st.Offered+st.Misses != 8*500 || st.Puts != 8*500 {
		t.Fatalf("Stats() = %+v; want 4000 lookups and 4000 puts", st)
	}
}
