package keyed

import (
	"strconv"
	"sync"
	"testing"
)

func TestMapBoundedAndShared(t *testing.T) {
	if _, err := New[int](0, nil, nil); err == nil {
		t.Fatal("New(0) succeeded")
	}
	made := 0
	m, err := New(100, func(name string) *string { made++; return &name }, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := m.Get(Key{"t", "/s/m"})
	if m.Get(Key{"t", "/s/m"}) != a || *a != "t/s/m" || made != 1 {
		t.Fatalf("Get did not return the one value named t/s/m (made %d)", made)
	}
	if _, ok := m.Peek(Key{"t", "/other"}); ok {
		t.Fatal("Peek created a value")
	}
	for i := 0; i < 5000; i++ {
		m.Get(Key{"t", strconv.Itoa(i)})
	}
	if n := m.Len(); len(m.Values()) != n {
		t.Errorf("Values has %d entries, Len %d", len(m.Values()), n)
	}
	if n := m.Len(); n > 128 {
		t.Errorf("Len = %d after 5000 keys, want bounded near 100", n)
	}
}

func TestMapConcurrentGetCreatesOnce(t *testing.T) {
	m, err := New(4096, func(name string) *int { return new(int) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]*int, 64)
	for i := range got {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = m.Get(Key{"t", "m"}) }()
	}
	wg.Wait()
	for _, p := range got {
		if p != got[0] {
			t.Fatal("concurrent Gets returned different values for one key")
		}
	}
}

// TestEvictionNeverDropsPinnedOrBusy is issue 13 item 4: a value with
// calls in flight (pinned) or busy is never evicted into a fresh one;
// keys past the bound share the overflow value instead.
func TestEvictionNeverDropsPinnedOrBusy(t *testing.T) {
	busy := map[string]bool{}
	m, err := New(4, func(name string) *string { return &name }, func(v *string) bool { return busy[*v] })
	if err != nil {
		t.Fatal(err)
	}
	pinned := m.Acquire(Key{"t", "/pinned"})
	first := pinned.Value()
	busy["t/busy"] = true
	b := m.Get(Key{"t", "/busy"})
	for i := range 1000 {
		r := m.Acquire(Key{"t", "/m" + strconv.Itoa(i)})
		r.Release()
	}
	if m.Get(Key{"t", "/pinned"}) != first {
		t.Error("a pinned value was evicted and made afresh")
	}
	if m.Get(Key{"t", "/busy"}) != b {
		t.Error("a busy value was evicted and made afresh")
	}
	pinned.Release()
	if n := m.Len(); n > 5 {
		t.Errorf("Len = %d, want at most 4 plus the overflow", n)
	}
	// Every entry pinned: new keys share the overflow value.
	var refs []Ref[*string]
	for i := range 4 {
		refs = append(refs, m.Acquire(Key{"t", "/p" + strconv.Itoa(i)}))
	}
	o1, o2 := m.Acquire(Key{"t", "/x"}), m.Acquire(Key{"t", "/y"})
	if *o1.Value() != OverflowName || o1.Value() != o2.Value() {
		t.Errorf("keys past a full, pinned map got %q and %q, want the one overflow value", *o1.Value(), *o2.Value())
	}
	for _, r := range append(refs, o1, o2) {
		r.Release()
	}
}
