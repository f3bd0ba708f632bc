package interceptors

import "runtime"

// yieldAfterShed lets the goroutines of the calls the server admitted run
// before the tap reads the next request, after each request the tap
// refused.
//
// grpc-go calls the tap on the connection's reader goroutine, which reads
// frame after frame for as long as the connection has data: under a flood
// it runs through a whole buffer of requests, shedding each, before it
// blocks. On a busy core (GOMAXPROCS 1, or every P busy) everything the
// admitted calls need waits for it meanwhile: the goroutine of a request
// the tap just admitted, a waiter handed a freed slot, the timers and
// wake-ups of the handlers' work, and the writer that sends their
// responses. Their slots stood idle or their answers came late, and the
// flood, not the work, had the CPU. Yielding after each shed puts the
// reader behind them (runtime.Gosched queues it after the goroutines
// already runnable): the server finishes the work it took before it reads
// more of the flood. With nothing else runnable the yield returns at once
// (about 0.1 µs, against the 15–30 µs a shed costs grpc-go).
//
// In the bench's 10× overload on a one-CPU server (examples/bench,
// overload, isolated), the server worked on 1.33–1.46k calls/s of its
// 1.5k/s with the yield, against 1.06–1.30k/s without: see
// docs/overload.md, *The tap yields after each shed*.
func (s *Shedder) yieldAfterShed() {
	if s.noYield {
		return
	}
	runtime.Gosched()
}
