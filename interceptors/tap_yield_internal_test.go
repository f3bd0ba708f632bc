package interceptors

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
)

// TestTapYieldsAfterShed: on one P, a goroutine that became runnable
// before the tap's sheds (an admitted call's, say) runs before the tap
// returns from them, so a flood read by the connection's reader does not
// hold the CPU from the work the server admitted. Two sheds, not one:
// every 61st scheduling round takes the global run queue first, where
// runtime.Gosched put the reader, and the next round then takes the local
// one.
func TestTapYieldsAfterShed(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, yield := range []bool{true, false} {
		s, err := NewShedder()
		if err != nil {
			t.Fatal(err)
		}
		s.noYield = !yield
		var ran atomic.Bool
		done := make(chan struct{})
		go func() { ran.Store(true); close(done) }() // runnable, but the only P is this goroutine's
		for range 2 {
			if _, err := s.tapRefuse(context.Background(), rLimit, "/s/M", &serviceTime{}, 0); err == nil {
				t.Fatal("tapRefuse admitted a request")
			}
		}
		if got := ran.Load(); yield && !got {
			t.Error("the goroutine made runnable before two tap sheds had not run when they returned")
		}
		<-done
	}
}
