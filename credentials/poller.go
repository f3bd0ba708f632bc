package credentials

import (
	"sync"
	"time"
)

// ticker is the part of *time.Ticker the background loops use; tests
// replace it to drive the loops without waiting.
type ticker interface {
	C() <-chan time.Time
	Stop()
}

type realTicker struct{ t *time.Ticker }

func newRealTicker(d time.Duration) ticker { return realTicker{time.NewTicker(d)} }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// loop owns one background goroutine that calls fn on every tick until
// stopped. stop is idempotent and waits for the goroutine to exit.
type loop struct {
	quit     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func startLoop(t ticker, fn func()) *loop {
	l := &loop{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		defer t.Stop()
		for {
			select {
			case <-l.quit:
				return
			case <-t.C():
				fn()
			}
		}
	}()
	return l
}

func (l *loop) stop() {
	l.stopOnce.Do(func() { close(l.quit) })
	<-l.done
}
