package interceptors

import (
	"context"

	"google.golang.org/grpc/stats"
)

// StatsHandler returns the Shedder's stats handler, which ServerOptions
// installs with an Adaptive limit: it marks when grpc-go begins each
// request the tap admitted on the request's own goroutine, so that the
// adaptive limit can tell the wait for a CPU the handlers keep busy (the
// goroutine had to wait its turn) from the wait for the request's message, which its client
// chooses (see docs/overload.md, *The adaptive limit on CPU-bound work*).
// It does nothing else, and nothing for requests the tap did not admit.
// Install it with grpc.StatsHandler beside TapHandle and the interceptors
// if you install those yourself; without it, the adaptive limit measures
// handler time alone.
func (s *Shedder) StatsHandler() stats.Handler { return shedderStats{s} }

// shedderStats is the Shedder's stats.Handler (StatsHandler).
type shedderStats struct{ s *Shedder }

func (shedderStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (shedderStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (shedderStats) HandleConn(context.Context, stats.ConnStats) {}

// HandleRPC marks a reservation's stream as begun: grpc-go sends Begin on
// the request's goroutine before it reads the message.
func (h shedderStats) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	if _, ok := rs.(*stats.Begin); !ok || h.s.grad == nil || h.s.reserved.last.Load() == 0 {
		return // only the adaptive limit reads it: no context lookup otherwise
	}
	if v, _ := ctx.Value(reservationKey{}).(*reservation); v != nil {
		v.began.CompareAndSwap(0, h.s.now())
	}
}
