package interceptors

import (
	"sync"
	"testing"
	"time"
)

func TestHeldRoom(t *testing.T) {
	h := held{most: 3}
	now := int64(10 * time.Second)
	for _, c := range []struct {
		name          string
		d             int64
		has           bool
		answer, count bool
	}{
		{"no deadline", 0, false, true, false},
		{"deadline passed", now - 1, true, true, false},
		{"deadline now", now, true, true, false},
		{"a second away", now + int64(time.Second), true, true, true},
		{"at the horizon", now + int64(heldHorizon), true, true, true},
		{"beyond the horizon", now + int64(heldHorizon) + 1, true, false, false},
		{"an hour away", now + int64(time.Hour), true, false, false},
	} {
		if answer, count := h.room(now, c.d, c.has); answer != c.answer || count != c.count {
			t.Errorf("%s: room = %v, %v; want %v, %v", c.name, answer, count, c.answer, c.count)
		}
	}
}

func TestHeldCountsUntilTheDeadline(t *testing.T) {
	h := held{most: 3}
	now := int64(10*time.Second) + int64(300*time.Millisecond)
	h.add(now + int64(500*time.Millisecond)) // held until 10.8 s
	h.add(now + int64(5*time.Second))        // until 15.3 s
	h.add(now + int64(heldHorizon))          // until 72.3 s
	if n := h.count(now); n != 3 {
		t.Fatalf("count = %d, want 3", n)
	}
	if answer, count := h.room(now, now+int64(time.Second), true); answer || !count {
		t.Errorf("room at the bound = %v, %v; want false, true", answer, count)
	}
	// Each counts until the whole second after its deadline has begun.
	for _, c := range []struct {
		at   time.Duration
		want int64
	}{
		{10*time.Second + 900*time.Millisecond, 3},
		{11 * time.Second, 2},
		{15*time.Second + 999*time.Millisecond, 2},
		{16 * time.Second, 1},
		{72*time.Second + 999*time.Millisecond, 1},
		{73 * time.Second, 0},
		{time.Hour, 0},
	} {
		if n := h.count(int64(c.at)); n != c.want {
			t.Errorf("count at %v = %d, want %d", c.at, n, c.want)
		}
	}
	// A bucket reused by a later second starts from zero.
	later := int64(11*time.Second) + int64(heldBuckets)*heldWidth // the first one's bucket
	h.add(later - int64(time.Second) + int64(500*time.Millisecond))
	if n := h.count(later - int64(time.Second)); n != 1 {
		t.Errorf("count after reuse = %d, want 1 (the stale count of its bucket is gone)", n)
	}
}

func TestHeldConcurrent(t *testing.T) {
	h := held{most: heldMost}
	const goroutines, each = 8, 1000
	now := int64(time.Minute)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				h.add(now + int64(time.Second)*int64(1+(g+i)%30))
			}
		}()
	}
	wg.Wait()
	if n := h.count(now); n != goroutines*each {
		t.Errorf("count = %d, want %d", n, goroutines*each)
	}
}
