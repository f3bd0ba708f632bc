// Package keyed is a bounded, sharded map from (target, method) to
// per-key state, shared by the breaker registry and the client limiter:
// a few independently locked LRU lists, so calls on different keys do not
// contend on one lock and a flood of keys (method names are caller input)
// cannot grow memory past the bound.
//
// Eviction never resets state that is in use: a value that is pinned (a
// call holds it, see Acquire) or busy (the map's busy function says so:
// an open breaker, a limiter with calls waiting) is never dropped. When a
// shard is full of such values, a new key shares the shard's overflow
// value instead of getting a fresh one, so a bound on every key (a
// concurrency limit, an open breaker) still holds for keys past the
// bound, only more coarsely.
package keyed

import (
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// Key identifies per-key state without building a string per call.
// Method is empty when state is kept per target.
type Key struct{ Target, Method string }

// OverflowName is the name given to the value that keys past the bound
// share while every value of their shard is in use.
const OverflowName = "(overflow: too many keys in use)"

// scanLimit bounds how many of a full shard's oldest entries a miss looks
// at for one it may evict; the busy ones it passes move to the front.
const scanLimit = 8

// Map holds at most about Size values (rounded up to a multiple of the
// shard count), dropping the least recently used one that is neither
// pinned nor busy. It is safe for concurrent use and starts no goroutines.
type Map[V any] struct {
	seed   maphash.Seed
	shards []shard[V]
	create func(name string) V
	busy   func(V) bool // nil: never busy
}

type shard[V any] struct {
	mu       sync.Mutex
	cap      int
	m        map[Key]*node[V]
	head     node[V] // sentinel: head.next is the most recent, head.prev the oldest
	overflow *node[V]
	_        [40]byte // keep shards on separate cache lines
}

type node[V any] struct {
	key        Key
	v          V
	pins       atomic.Int64
	prev, next *node[V]
}

// New returns a Map bounded by size that makes missing values with
// create, which receives the key's name (Target+Method). busy, if not nil,
// reports values that must not be evicted even when nothing pins them;
// it runs under a shard lock and must not call back into the Map.
func New[V any](size int, create func(name string) V, busy func(V) bool) (*Map[V], error) {
	if size < 1 {
		return nil, fmt.Errorf("keyed: size is %d; must be at least 1", size)
	}
	n := 1
	for n < 16 && size/(2*n) >= 64 {
		n *= 2
	}
	per := (size + n - 1) / n
	m := &Map[V]{seed: maphash.MakeSeed(), shards: make([]shard[V], n), create: create, busy: busy}
	for i := range m.shards {
		s := &m.shards[i]
		s.cap = per
		s.m = make(map[Key]*node[V])
		s.head.next, s.head.prev = &s.head, &s.head
	}
	return m, nil
}

func (m *Map[V]) shard(k Key) *shard[V] {
	if len(m.shards) == 1 {
		return &m.shards[0]
	}
	h := maphash.String(m.seed, k.Target) ^ maphash.String(m.seed, k.Method)*0x9e3779b97f4a7c15
	return &m.shards[h&uint64(len(m.shards)-1)]
}

// Ref is a pinned value: it is not evicted until Release. The zero Ref
// holds nothing.
type Ref[V any] struct{ n *node[V] }

// Value returns the pinned value.
func (r Ref[V]) Value() V { return r.n.v }

// Release unpins the value; call it exactly once per Acquire.
func (r Ref[V]) Release() {
	if r.n != nil {
		r.n.pins.Add(-1)
	}
}

// Acquire returns the value of k pinned, creating it if needed. It does
// not allocate when the value exists.
func (m *Map[V]) Acquire(k Key) Ref[V] {
	return Ref[V]{m.lookup(k, true)}
}

// Get returns the value of k, creating it if needed, without pinning it.
// It does not allocate when the value exists.
func (m *Map[V]) Get(k Key) V {
	return m.lookup(k, false).v
}

func (m *Map[V]) lookup(k Key, pin bool) *node[V] {
	s := m.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock() // create and busy are our own code, but never leave a shard locked
	n, ok := s.m[k]
	if ok {
		s.moveToFront(n)
	} else {
		n = m.insertLocked(s, k)
	}
	if pin {
		n.pins.Add(1)
	}
	return n
}

// insertLocked makes room for k and adds it, or returns the overflow node
// when every entry it may look at is in use.
func (m *Map[V]) insertLocked(s *shard[V], k Key) *node[V] {
	if len(s.m) >= s.cap && !m.evictOneLocked(s) {
		if s.overflow == nil {
			s.overflow = &node[V]{key: Key{Target: OverflowName}, v: m.create(OverflowName)}
		}
		return s.overflow
	}
	n := &node[V]{key: k, v: m.create(k.Target + k.Method)}
	s.m[k] = n
	n.prev, n.next = &s.head, s.head.next
	s.head.next.prev = n
	s.head.next = n
	return n
}

// evictOneLocked drops the oldest entry that is neither pinned nor busy
// among the scanLimit oldest, moving the busy ones it passes to the front.
func (m *Map[V]) evictOneLocked(s *shard[V]) bool {
	for range min(scanLimit, len(s.m)) {
		n := s.head.prev
		if n.pins.Load() == 0 && (m.busy == nil || !m.busy(n.v)) {
			s.unlink(n)
			delete(s.m, n.key)
			return true
		}
		s.moveToFront(n)
	}
	return false
}

func (s *shard[V]) unlink(n *node[V]) {
	n.prev.next = n.next
	n.next.prev = n.prev
	n.prev, n.next = nil, nil
}

func (s *shard[V]) moveToFront(n *node[V]) {
	if s.head.next == n {
		return
	}
	s.unlink(n)
	n.prev, n.next = &s.head, s.head.next
	s.head.next.prev = n
	s.head.next = n
}

// Peek returns the value of k without creating it or refreshing its recency.
func (m *Map[V]) Peek(k Key) (V, bool) {
	s := m.shard(k)
	s.mu.Lock()
	n, ok := s.m[k]
	s.mu.Unlock()
	if !ok {
		var zero V
		return zero, false
	}
	return n.v, true
}

// Len returns how many values the map holds, overflow values included.
func (m *Map[V]) Len() int {
	total := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		total += len(s.m)
		if s.overflow != nil {
			total++
		}
		s.mu.Unlock()
	}
	return total
}

// Values returns every value, overflow values included, in no particular
// order, without refreshing recency: for snapshots, not for the call path.
func (m *Map[V]) Values() []V {
	var out []V
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for n := s.head.next; n != &s.head; n = n.next {
			out = append(out, n.v)
		}
		if s.overflow != nil {
			out = append(out, s.overflow.v)
		}
		s.mu.Unlock()
	}
	return out
}
