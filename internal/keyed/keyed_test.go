package keyed

import (
	"strconv"
	"sync"
	"testing"
)

func TestMapBoundedAndShared(t *testing.T) {
	if _, err := New[int](0, nil); err == nil {
		t.Fatal("New(0) succeeded")
	}
	made := 0
	m, err := New(100, func(name string) *string { made++; return &name })
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
	m, err := New(4096, func(name string) *int { return new(int) })
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
