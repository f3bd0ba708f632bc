package balancer

import (
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/connectivity"
)

// ChannelSnapshot is the state of the policy in one channel, for debug
// pages. Its values are copies; nothing in it changes after Snapshot
// returns.
type ChannelSnapshot struct {
	// Target is the channel's target as grpc parsed it.
	Target string
	// State is the channel's state as the policy reports it.
	State connectivity.State
	// Endpoints are the resolved endpoints, in resolver order.
	Endpoints []EndpointSnapshot
}

// EndpointSnapshot is one endpoint as the policy sees it.
type EndpointSnapshot struct {
	// Endpoint is the endpoint's addresses, joined with ",".
	Endpoint string
	// State is aggregated over the endpoint's connections: READY if any is
	// READY, else CONNECTING if any is connecting, else TRANSIENT_FAILURE
	// (IDLE without connections).
	State connectivity.State
	// Connections counts the open connections (pick_first children);
	// Ready those of them that are READY (and healthy).
	Connections, Ready int
	// InFlight is the calls in flight, at the last sample.
	InFlight int
	// Latency is the latency estimate (peak EWMA) the picks use.
	Latency time.Duration
	// Ejected reports an ejection (consecutive failures) in force.
	Ejected bool
	// Held reports a black-hole hold in force (calls kept timing out while
	// other endpoints answered); Probing that the hold ended and the
	// endpoint takes one call at a time until one is answered.
	Held, Probing bool
	// Calls counts the endpoint's finished calls by outcome since it was
	// resolved.
	Calls CallCounts
}

// CallCounts counts finished calls by how the policy classified them.
type CallCounts struct {
	// OK counts calls the backend answered (any code not counted below).
	OK uint64
	// Failed counts calls that ended with one of ejection.failureCodes.
	Failed uint64
	// Shed counts calls the server refused with RESOURCE_EXHAUSTED.
	Shed uint64
	// Cancelled counts calls the caller cancelled.
	Cancelled uint64
	// TimedOut counts calls that ended with DEADLINE_EXCEEDED.
	TimedOut uint64
}

// live is every balancer not yet closed, for Snapshot.
var live = struct {
	mu sync.Mutex
	m  map[*lb]struct{}
}{m: map[*lb]struct{}{}}

func register(l *lb) {
	live.mu.Lock()
	defer live.mu.Unlock()
	live.m[l] = struct{}{}
}

func unregister(l *lb) {
	live.mu.Lock()
	defer live.mu.Unlock()
	delete(live.m, l)
}

// Snapshot returns the state of every channel in the process that uses the
// policy, sorted by target. It is safe for concurrent use and takes each
// channel's lock briefly; call it for a debug page, not per call.
func Snapshot() []ChannelSnapshot {
	live.mu.Lock()
	ls := make([]*lb, 0, len(live.m))
	for l := range live.m {
		ls = append(ls, l)
	}
	live.mu.Unlock()
	out := make([]ChannelSnapshot, 0, len(ls))
	for _, l := range ls {
		if s, ok := l.snapshot(); ok {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(a, b ChannelSnapshot) int { return strings.Compare(a.Target, b.Target) })
	return out
}

func (l *lb) snapshot() (ChannelSnapshot, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ChannelSnapshot{}, false
	}
	s := ChannelSnapshot{Target: l.target, State: l.state, Endpoints: make([]EndpointSnapshot, 0, len(l.order))}
	for _, ep := range l.order {
		st, ready := aggregate(ep.conns)
		c := ep.counts()
		s.Endpoints = append(s.Endpoints, EndpointSnapshot{
			Endpoint: ep.name, State: st, Connections: len(ep.conns), Ready: ready,
			InFlight: ep.inflight, Latency: time.Duration(ep.ewma * float64(time.Microsecond)),
			Ejected: ep.ejected, Held: ep.held, Probing: ep.probing,
			Calls: CallCounts{OK: c.ok, Failed: c.failed, Shed: c.shed, Cancelled: c.neutral, TimedOut: c.timeouts},
		})
	}
	return s, true
}
