package balancer

import (
	"context"
	"errors"
	"io"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// picker is an immutable snapshot of the endpoints that can take calls.
type picker struct {
	sh     *shared
	eps    []pickEndpoint
	choice int
	err    error // returned when eps is empty
}

// pickEndpoint is an endpoint as one picker sees it.
type pickEndpoint struct {
	ep *endpoint
	// subs are the READY subchannels in creation order; the first nBase
	// of them are base subchannels (the eagerly opened ones).
	subs  []*subConn
	nBase int
	// target is targetStreamsPerSubchannel.
	target uint32
	// growAt is the in-flight count above which a pick asks the control
	// loop for another subchannel; 0 when the endpoint cannot grow.
	growAt uint64
}

// Pick chooses the endpoint with the lowest score among choice random ones
// (power of two choices by default), then a subchannel of it. It takes no
// lock and does not allocate.
func (p *picker) Pick(grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	eps := p.eps
	n := len(eps)
	if n == 0 {
		return grpcbalancer.PickResult{}, p.err
	}
	r := p.sh.rand()
	pe := &eps[0]
	switch {
	case n == 1:
	case n <= p.choice:
		// Fewer endpoints than choices: compare them all, starting at a
		// random one so that ties spread.
		start := int(r % uint64(n))
		pe = &eps[start]
		best := pe.ep.score()
		for i := 1; i < n; i++ {
			c := &eps[(start+i)%n]
			if s := c.ep.score(); s < best {
				pe, best = c, s
			}
		}
	default:
		// Two distinct random endpoints, then any further choices with
		// replacement.
		i := int(r % uint64(n))
		j := (i + 1 + int((r>>32)%uint64(n-1))) % n
		pe = &eps[i]
		best := pe.ep.score()
		if s := eps[j].ep.score(); s < best {
			pe, best = &eps[j], s
		}
		for k := 2; k < p.choice; k++ {
			c := &eps[p.sh.rand()%uint64(n)]
			if s := c.ep.score(); s < best {
				pe, best = c, s
			}
		}
	}
	s := pe.choose(r >> 48)
	ep := pe.ep
	t := uint64(p.sh.now() / time.Microsecond)
	x := ep.load.Add(t<<inflightBits + 1)
	s.use.Add(1<<32 + 1)
	if pe.growAt != 0 && x&inflightMask > pe.growAt && !ep.growReq.Load() && ep.growReq.CompareAndSwap(false, true) {
		p.sh.sleeping.Store(false)
		p.sh.wake()
	} else if p.sh.sleeping.Load() && p.sh.sleeping.CompareAndSwap(true, false) {
		p.sh.wake()
	}
	return grpcbalancer.PickResult{SubConn: s.sc, Done: s.done}, nil
}

// choose returns the subchannel for a call: the least loaded base
// subchannel while it is below target, else the first extra below target
// (so that extras drain and can close when load falls), else the least
// loaded of all.
func (pe *pickEndpoint) choose(r uint64) *subConn {
	subs := pe.subs
	if len(subs) == 1 {
		return subs[0]
	}
	var best *subConn
	bestN := ^uint32(0)
	if nb := pe.nBase; nb > 0 {
		off := int(r % uint64(nb))
		for i := 0; i < nb; i++ {
			s := subs[(off+i)%nb]
			if n := s.inflight(); n < bestN {
				best, bestN = s, n
			}
		}
		if bestN < pe.target {
			return best
		}
	}
	for _, s := range subs[pe.nBase:] {
		n := s.inflight()
		if n < pe.target {
			return s
		}
		if n < bestN {
			best, bestN = s, n
		}
	}
	return best
}

// onDone is a subchannel's done callback (built once, as s.done). It ends
// the call's in-flight accounting and classifies its outcome.
func (s *subConn) onDone(info grpcbalancer.DoneInfo) {
	ep := s.ep
	t := uint64(ep.sh.now() / time.Microsecond)
	s.use.Add(^uint64(0)) // in flight −1
	ep.load.Add(-(t<<inflightBits + 1))
	err := info.Err
	if err == nil || err == io.EOF {
		if err == nil && !info.BytesSent && !info.BytesReceived {
			// grpc gives back a pick whose transport was not ready.
			return
		}
		ep.answered()
		return
	}
	switch classify(err, ep.sh.failCodes.Load()) {
	case outcomeAnswered:
		ep.answered()
	case outcomeNeutral:
		ep.neutral.Add(1)
	default:
		ep.failed.Add(1)
		if thr := ep.sh.failThreshold.Load(); thr > 0 && ep.consec.Add(1) == thr {
			ep.sh.sleeping.Store(false)
			ep.sh.wake()
		}
	}
}

func (e *endpoint) answered() {
	e.ok.Add(1)
	if e.consec.Load() != 0 {
		e.consec.Store(0)
	}
}

type outcome int

const (
	// outcomeAnswered: the backend answered, whatever the code.
	outcomeAnswered outcome = iota
	// outcomeNeutral: the caller cancelled or its deadline passed. Never a
	// backend failure; the time spent still counts as latency.
	outcomeNeutral
	// outcomeFailed: the backend or the connection failed.
	outcomeFailed
)

// classify sorts a finished call's error; failCodes is the bit set of
// ejection.failureCodes.
func classify(err error, failCodes uint32) outcome {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return outcomeNeutral
	}
	switch c := status.Code(err); {
	case c == codes.Canceled || c == codes.DeadlineExceeded:
		return outcomeNeutral
	case c < 32 && failCodes&(1<<c) != 0:
		return outcomeFailed
	}
	return outcomeAnswered
}
