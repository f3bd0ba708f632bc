// Package keyed is a bounded, sharded map from (target, method) to
// per-key state, shared by the breaker registry and the client limiter:
// a few independently locked golang-lru caches, so calls on different
// keys do not contend on one lock and a flood of keys (method names are
// caller input) cannot grow memory past the bound.
package keyed

import (
	"fmt"
	"hash/maphash"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Key identifies per-key state without building a string per call.
// Method is empty when state is kept per target.
type Key struct{ Target, Method string }

// Map holds at most about Size values (rounded up to a multiple of the
// shard count), dropping the least recently used. It is safe for
// concurrent use and starts no goroutines.
type Map[V any] struct {
	seed   maphash.Seed
	shards []shard[V]
	create func(name string) V
}

type shard[V any] struct {
	c *lru.Cache[Key, V]
	_ [56]byte // keep shards on separate cache lines
}

// New returns a Map bounded by size that makes missing values with
// create, which receives the key's name (Target+Method).
func New[V any](size int, create func(name string) V) (*Map[V], error) {
	if size < 1 {
		return nil, fmt.Errorf("keyed: size is %d; must be at least 1", size)
	}
	n := 1
	for n < 16 && size/(2*n) >= 64 {
		n *= 2
	}
	per := (size + n - 1) / n
	m := &Map[V]{seed: maphash.MakeSeed(), shards: make([]shard[V], n), create: create}
	for i := range m.shards {
		c, err := lru.New[Key, V](per)
		if err != nil {
			return nil, fmt.Errorf("keyed: %w", err)
		}
		m.shards[i].c = c
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

// Get returns the value of k, creating it if needed. It does not allocate
// when the value exists.
func (m *Map[V]) Get(k Key) V {
	s := m.shard(k)
	if v, ok := s.c.Get(k); ok {
		return v
	}
	v := m.create(k.Target + k.Method)
	if prev, ok, _ := s.c.PeekOrAdd(k, v); ok {
		return prev
	}
	return v
}

// Peek returns the value of k without creating it or refreshing its recency.
func (m *Map[V]) Peek(k Key) (V, bool) { return m.shard(k).c.Peek(k) }

// Len returns how many values the map holds.
func (m *Map[V]) Len() int {
	n := 0
	for i := range m.shards {
		n += m.shards[i].c.Len()
	}
	return n
}

// Values returns every value, in no particular order, without refreshing
// recency: for snapshots, not for the call path.
func (m *Map[V]) Values() []V {
	var out []V
	for i := range m.shards {
		out = append(out, m.shards[i].c.Values()...)
	}
	return out
}
