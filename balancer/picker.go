package balancer

import (
	"context"
	"errors"
	"io"
	"math"
	"strings"
	"sync/atomic"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// picker is an immutable snapshot of the endpoints that can take calls.
type picker struct {
	// next is the round-robin position; it starts at a random offset.
	next   atomic.Uint32
	sh     *shared
	eps    []pickEndpoint
	choice int
	err    error // returned when eps is empty
}

// pickEndpoint is an endpoint as one picker sees it.
type pickEndpoint struct {
	ep *endpoint
	// conns are the READY connections in creation order; the first nBase
	// of them are base connections (the eagerly opened ones).
	conns []*conn
	nBase int
	// target is targetStreamsPerSubchannel.
	target uint32
	// growAt is the in-flight count above which a pick asks the control
	// loop for another connection; 0 when the endpoint cannot grow.
	growAt uint64
	// limit, when not 0, is the most calls the endpoint may have in flight
	// before it is passed over (a probe after a black-hole hold).
	limit uint64
}

// score is pe's cost for a new call, weight × (in flight + 1 + extra);
// +Inf while it is at its limit.
func (pe *pickEndpoint) score(extra uint64) float64 {
	n := pe.ep.load.Load() & inflightMask
	if pe.limit != 0 && n >= pe.limit {
		return math.Inf(1)
	}
	return math.Float64frombits(pe.ep.weight.Load()) * float64(n+1+extra)
}

// tieBand is how much lower (as a share) another candidate's score must
// be than the round-robin candidate's to take the call instead, the other
// candidate being scored with one more call in flight than it has. Within
// the band the round-robin candidate wins, so that endpoints alike get
// calls as evenly as round_robin gives them (random sampling alone makes
// bursts, and bursts make servers with an in-flight limit shed); an
// endpoint that is really slower, failing or busier loses.
const tieBand = 0.3

// Pick takes the next endpoint in round-robin order and compares it with
// choice−1 random others (power of two choices by default, all of them
// when there are no more endpoints than choices); another candidate wins
// only if its score is lower by more than tieBand. Then it picks a
// connection of the endpoint. It takes no lock and does not allocate.
func (p *picker) Pick(grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	eps := p.eps
	n := len(eps)
	if n == 0 {
		return grpcbalancer.PickResult{}, p.err
	}
	r := p.sh.rand()
	i := int(p.next.Add(1) % uint32(n))
	pe := &eps[i]
	if n > 1 {
		bar := pe.score(0) * (1 - tieBand)
		try := func(c *pickEndpoint) {
			if s := c.score(1); s < bar {
				pe, bar = c, c.score(0)*(1-tieBand)
			}
		}
		if n <= p.choice {
			for k := 1; k < n; k++ {
				try(&eps[(i+k)%n])
			}
		} else {
			// A distinct random endpoint, then any further choices with
			// replacement.
			try(&eps[(i+1+int((r>>32)%uint64(n-1)))%n])
			for k := 2; k < p.choice; k++ {
				try(&eps[p.sh.rand()%uint64(n)])
			}
		}
	}
	c := pe.choose(r >> 48)
	ep := pe.ep
	t := uint64(p.sh.now() / time.Microsecond)
	x := ep.load.Add(t<<inflightBits + 1)
	c.use.Add(1<<32 + 1)
	if pe.growAt != 0 && x&inflightMask > pe.growAt && !ep.growReq.Load() && ep.growReq.CompareAndSwap(false, true) {
		p.sh.sleeping.Store(false)
		p.sh.wake()
	} else if p.sh.sleeping.Load() && p.sh.sleeping.CompareAndSwap(true, false) {
		p.sh.wake()
	}
	return c.result, nil
}

// choose returns the connection for a call: the least loaded base
// connection while it is below target, else the first extra below target
// (so that extras drain and can close when load falls), else the least
// loaded of all.
func (pe *pickEndpoint) choose(r uint64) *conn {
	conns := pe.conns
	if len(conns) == 1 {
		return conns[0]
	}
	var best *conn
	bestN := ^uint32(0)
	if nb := pe.nBase; nb > 0 {
		off := int(r % uint64(nb))
		for i := 0; i < nb; i++ {
			c := conns[(off+i)%nb]
			if n := c.inflight(); n < bestN {
				best, bestN = c, n
			}
		}
		if bestN < pe.target {
			return best
		}
	}
	for _, c := range conns[pe.nBase:] {
		n := c.inflight()
		if n < pe.target {
			return c
		}
		if n < bestN {
			best, bestN = c, n
		}
	}
	return best
}

// onDone is a connection's done callback (built once, as c.done). It ends
// the call's in-flight accounting and classifies its outcome.
func (c *conn) onDone(info grpcbalancer.DoneInfo) {
	ep := c.ep
	t := uint64(ep.sh.now() / time.Microsecond)
	c.use.Add(^uint64(0)) // in flight −1
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
	case outcomeShed:
		ep.shed.Add(1)
		ep.answeredNoCount()
	case outcomeNeutral:
		ep.neutral.Add(1)
	case outcomeTimeout:
		ep.timeouts.Add(1)
		if ep.consecTO.Add(1) == minTimeouts {
			ep.sh.sleeping.Store(false)
			ep.sh.wake()
		}
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
	e.answeredNoCount()
}

// answeredNoCount resets the failure and timeout runs: the backend spoke.
func (e *endpoint) answeredNoCount() {
	if e.consec.Load() != 0 {
		e.consec.Store(0)
	}
	if e.consecTO.Load() != 0 {
		e.consecTO.Store(0)
	}
}

type outcome int

const (
	// outcomeAnswered: the backend answered, whatever the code.
	outcomeAnswered outcome = iota
	// outcomeShed: the server refused the call with RESOURCE_EXHAUSTED
	// (back-pressure). Never a failure; raises the score a little.
	outcomeShed
	// outcomeNeutral: the caller cancelled. Never a backend failure; the
	// time spent still counts as latency.
	outcomeNeutral
	// outcomeTimeout: DEADLINE_EXCEEDED. Never a failure (the deadline is
	// the caller's); the time spent counts as latency, and a run of them
	// while other endpoints answer holds the endpoint out as a black hole.
	outcomeTimeout
	// outcomeFailed: one of ejection.failureCodes.
	outcomeFailed
)

// classify sorts a finished call's error; failCodes is the bit set of
// ejection.failureCodes.
func classify(err error, failCodes uint32) outcome {
	if errors.Is(err, context.Canceled) {
		return outcomeNeutral
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return outcomeTimeout
	}
	switch c := status.Code(err); {
	case c == codes.Canceled:
		return outcomeNeutral
	case c == codes.DeadlineExceeded:
		return outcomeTimeout
	case c == codes.ResourceExhausted:
		if clientLimit(err) {
			return outcomeAnswered
		}
		return outcomeShed
	case c < 32 && failCodes&(1<<c) != 0:
		return outcomeFailed
	}
	return outcomeAnswered
}

// clientLimit reports whether a RESOURCE_EXHAUSTED error was raised by
// grpc-go on the client for a message over its size limits (rpc_util.go,
// stream.go), rather than answered by the server.
func clientLimit(err error) bool {
	s, _ := status.FromError(err)
	m := s.Message()
	return strings.HasPrefix(m, "grpc: received message") || strings.HasPrefix(m, "grpc: message") ||
		strings.HasPrefix(m, "trying to send message larger than max")
}
