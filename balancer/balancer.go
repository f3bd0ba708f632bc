package balancer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/grpcreuse/grpcreuse/internal/observerattr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Name is the policy's name in service config ("loadBalancingConfig") and
// in grpc's balancer registry.
const Name = "grpcreuse_least_loaded"

// logger logs ejections, returns and connection scaling at verbosity 2
// (GRPC_GO_LOG_VERBOSITY_LEVEL=2), as grpc's own policies do.
var logger = grpclog.Component("grpcreuse-balancer")

func init() {
	grpcbalancer.Register(&builder{name: Name})
}

var (
	_ grpcbalancer.Builder      = (*builder)(nil)
	_ grpcbalancer.ConfigParser = (*builder)(nil)
	_ grpcbalancer.Balancer     = (*lb)(nil)
	_ grpcbalancer.Picker       = (*picker)(nil)
)

// Tuning that is not part of the service config. Tests change it through
// knobs (export_test.go); production code always uses these values.
const (
	// defaultSampleInterval is how often latency and failure statistics
	// are folded into the endpoints' scores while calls are flowing.
	defaultSampleInterval = 100 * time.Millisecond
	// defaultLatencyDecay is the time constant (tau) of the peak-EWMA.
	defaultLatencyDecay = 2 * time.Second
	// failurePenalty scales an endpoint's score by 1+failurePenalty*f,
	// f being its smoothed share of failed calls: a backend that fails half
	// its calls quickly scores as if it were 11 times slower.
	failurePenalty = 20
	// failureMemory is the number of calls over which the failure and shed
	// shares are smoothed (EWMA weight 1-exp(-calls/failureMemory) per
	// sample).
	failureMemory = 20
	// latencyBand: endpoints whose latency is within this factor of the
	// fastest one's score as equally fast.
	latencyBand = 1.5
	// shedPenalty scales an endpoint's score by 1+shedPenalty*s, s being
	// its smoothed share of calls the server shed (RESOURCE_EXHAUSTED).
	// Small on purpose: shedding is back-pressure, and a big penalty herds
	// the load onto the other backends, which then shed in turn.
	shedPenalty = 1
	// minTimeouts is how many calls in a row must time out
	// (DEADLINE_EXCEEDED) on an endpoint, while other endpoints answer,
	// before it is held out as a black hole.
	minTimeouts = 3
	// Black-hole holds start at holdBase and double with each probe that
	// times out again, up to the ejection's maxEjectionTime.
	holdBase = time.Second
	// maxSleep bounds how long the control loop sleeps with nothing to do.
	maxSleep = time.Minute
)

// knobs are the injected time, randomness and tuning of one builder.
type knobs struct {
	// now returns monotonic time since an arbitrary origin; nil means
	// time.Since(the balancer's creation).
	now func() time.Duration
	// rand returns uniformly random bits; nil means math/rand/v2.Uint64.
	rand           func() uint64
	sampleInterval time.Duration
	latencyDecay   time.Duration
	// manualLoop: no control-loop goroutine; the test calls tick.
	manualLoop bool
}

type builder struct {
	name string
	k    knobs
}

func (b *builder) Name() string { return b.name }

// ParseConfig implements grpc's balancer.ConfigParser.
func (b *builder) ParseConfig(raw json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	return ParseConfig(raw)
}

func (b *builder) Build(cc grpcbalancer.ClientConn, opts grpcbalancer.BuildOptions) grpcbalancer.Balancer {
	k := b.k
	if k.now == nil {
		start := time.Now()
		k.now = func() time.Duration { return time.Since(start) }
	}
	if k.rand == nil {
		k.rand = rand.Uint64
	}
	if k.sampleInterval <= 0 {
		k.sampleInterval = defaultSampleInterval
	}
	if k.latencyDecay <= 0 {
		k.latencyDecay = defaultLatencyDecay
	}
	l := &lb{
		cc:       cc,
		opts:     opts,
		target:   opts.Target.String(),
		k:        k,
		sh:       &shared{kick: make(chan struct{}, 1), now: k.now, rand: k.rand},
		quit:     make(chan struct{}),
		loopDone: make(chan struct{}),
		cfg:      defaultConfig(),
		obs:      telemetry.Nop{},
		eps:      resolver.NewEndpointMap[*endpoint](),
		state:    connectivity.Connecting,
	}
	l.sh.failThreshold.Store(int64(l.cfg.Ejection.ConsecutiveFailures))
	l.sh.failCodes.Store(codeMask(l.cfg.Ejection.FailureCodes))
	register(l)
	if k.manualLoop {
		close(l.loopDone)
	} else {
		go l.run()
	}
	return l
}

// shared is what pickers and done callbacks need from their balancer.
// Everything in it is immutable or atomic.
type shared struct {
	// kick wakes the control loop (capacity 1, sent to without blocking).
	kick chan struct{}
	// sleeping is set while the control loop waits without a sample timer;
	// the next pick clears it and wakes the loop.
	sleeping      atomic.Bool
	failThreshold atomic.Int64
	failCodes     atomic.Uint32 // bit set of ejection.failureCodes
	now           func() time.Duration
	rand          func() uint64
}

func (s *shared) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Bit layout of endpoint.load.
const (
	inflightBits = 20
	inflightMask = 1<<inflightBits - 1
	areaBits     = 64 - inflightBits
	areaMask     = 1<<areaBits - 1
)

// endpoint is one resolver.Endpoint and its connections (pick_first
// children).
type endpoint struct {
	sh *shared

	// Written by every pick and done callback.
	//
	// load packs two counters into one word so that a single atomic load
	// gives a consistent snapshot: the low 20 bits count calls in flight
	// (n), the high 44 bits hold Z = Σ start − Σ end over all calls, in
	// microseconds modulo 2^44 (a pick adds start<<20+1, a done subtracts
	// end<<20+1). The time-integral of n up to t — the total time calls
	// have spent in flight — is then t·n − Z, and by Little's law its
	// growth over a window divided by the calls completed in it is their
	// mean latency. This measures latency exactly without any per-call
	// state, which lets the done callback be built once per connection.
	load     atomic.Uint64
	ok       atomic.Uint64 // calls the backend answered (any code but those below)
	failed   atomic.Uint64 // calls that failed with one of ejection.failureCodes
	shed     atomic.Uint64 // calls the server shed (RESOURCE_EXHAUSTED)
	neutral  atomic.Uint64 // calls cancelled by the caller
	timeouts atomic.Uint64 // calls that ended in DEADLINE_EXCEEDED
	consec   atomic.Int64  // consecutive failures
	consecTO atomic.Int64  // consecutive timeouts, reset by any answer
	weight   atomic.Uint64 // float64 bits: latency EWMA (µs) × penalties
	growReq  atomic.Bool   // a pick asked for another connection

	// Guarded by lb.mu.
	ep         resolver.Endpoint
	name       string
	conns      []*conn // live connections, in creation order
	ejected    bool
	ejections  int           // ejections in a row, decays while healthy
	returnAt   time.Duration // when an ejection ends
	lastReturn time.Duration // when the endpoint last came back (or was created)
	held       bool          // held out as a black hole (not an ejection)
	holds      int           // holds in a row; reset by an answered call
	holdUntil  time.Duration
	probing    bool // back from a hold: one call at a time until one is answered
	// drifted: avoided as slow, its estimate drifted back without a call
	// measuring it; it takes one call at a time until one does.
	drifted bool
	// answeredWindow: the endpoint answered a call in the last sample window.
	answeredWindow bool
	ewma           float64 // peak-EWMA latency, µs; 0 = no data yet
	failRate       float64 // smoothed share of failed calls
	shedRate       float64 // smoothed share of shed calls
	lastArea       uint64  // t·n − Z at the last sample, mod 2^44
	last           counts  // counters at the last sample
	reported       counts  // counters at the last EndpointCalls report
	inflight       int     // last reported in-flight
	aggState       connectivity.State
	aggConns       int // open connections at the last EndpointState report
}

// counts is a snapshot of an endpoint's call counters.
type counts struct{ ok, failed, shed, neutral, timeouts uint64 }

func (e *endpoint) counts() counts {
	return counts{e.ok.Load(), e.failed.Load(), e.shed.Load(), e.neutral.Load(), e.timeouts.Load()}
}

// setWeight stores the endpoint's weight: its latency factor times its
// failure and shed penalties. The latency factor is 1 for endpoints within
// latencyBand of ref, the fastest endpoint's latency, and grows in
// proportion beyond: endpoints alike then compete on calls in flight alone
// (with the round-robin tie-break), so that latency noise does not herd
// calls, while a really slower endpoint is avoided.
func (e *endpoint) setWeight(ref float64) {
	f := 1.0
	if ref > 0 && e.ewma > latencyBand*ref {
		f = e.ewma / (latencyBand * ref)
	}
	e.weight.Store(math.Float64bits(f * (1 + failurePenalty*e.failRate) * (1 + shedPenalty*e.shedRate)))
}

// conn is one connection of an endpoint: a pick_first child given all of
// the endpoint's addresses, so that it connects the way pick_first does
// (happy eyeballs, health checking, outlier-detection ejections through
// the health listener).
type conn struct {
	l  *lb
	ep *endpoint
	// done is c.onDone, built once so that picks do not allocate.
	done func(grpcbalancer.DoneInfo)
	// use packs calls in flight (low 32 bits) and picks mod 2^32 (high).
	use atomic.Uint64

	// childMu serialises calls into child. Lock order: childMu before
	// lb.mu (the child calls back into UpdateState, which takes lb.mu,
	// from inside its own methods), so the child is never called with
	// lb.mu held.
	childMu     sync.Mutex
	child       grpcbalancer.Balancer
	childClosed bool

	// Guarded by lb.mu.
	removed   bool               // closed by us; later updates are ignored
	state     connectivity.State // the child's state (health included)
	result    grpcbalancer.PickResult
	lastErr   error // the child's picker error while not READY
	lastPicks uint32
	idleSince time.Duration
	// connectingSince is when the child last went IDLE or CONNECTING
	// from another state (see connectWait).
	connectingSince time.Duration
}

func (c *conn) inflight() uint32 { return uint32(c.use.Load()) }

// connCC is the ClientConn a child sees: the channel's, with UpdateState
// intercepted.
type connCC struct {
	grpcbalancer.ClientConn
	c *conn
}

func (w *connCC) UpdateState(s grpcbalancer.State) { w.c.l.onChildState(w.c, s) }

// update gives the child the endpoint's addresses. Called without lb.mu.
func (c *conn) update(rs resolver.State) {
	c.childMu.Lock()
	defer c.childMu.Unlock()
	if !c.childClosed {
		_ = c.child.UpdateClientConnState(grpcbalancer.ClientConnState{ResolverState: rs})
	}
}

// close shuts the child down (its calls finish). Called without lb.mu.
func (c *conn) close() {
	c.childMu.Lock()
	defer c.childMu.Unlock()
	if !c.childClosed {
		c.childClosed = true
		c.child.Close()
	}
}

func (c *conn) exitIdle() {
	c.childMu.Lock()
	defer c.childMu.Unlock()
	if !c.childClosed {
		c.child.ExitIdle()
	}
}

// work is what a change decided under lb.mu asks of the children; do
// runs it after mu is released.
type work struct {
	update   []*conn
	rs       []resolver.State // rs[i] for update[i]
	close    []*conn
	exitIdle []*conn
}

func (w *work) empty() bool { return len(w.update)+len(w.close)+len(w.exitIdle) == 0 }

func (w *work) do() {
	for _, c := range w.close {
		c.close()
	}
	for i, c := range w.update {
		c.update(w.rs[i])
	}
	for _, c := range w.exitIdle {
		c.exitIdle()
	}
}

// lb is the balancer of one channel.
//
// Concurrency: grpc calls UpdateClientConnState, ResolverError, ExitIdle
// and Close from one goroutine; children report through UpdateState from
// that goroutine and from their own timers (happy eyeballs); the control
// loop (run) is one more goroutine. All of them take mu. Pick and the done
// callbacks take no lock: they read the immutable picker and update
// atomics.
//
// Lock order: conn.childMu, then mu. Calls into children are made without
// mu (see work); calls into grpc's ClientConn (UpdateState) are made with
// mu held, and grpc never calls back synchronously. The observer is only
// called after mu is released.
type lb struct {
	cc       grpcbalancer.ClientConn
	opts     grpcbalancer.BuildOptions
	target   string
	k        knobs
	sh       *shared
	quit     chan struct{}
	loopDone chan struct{}

	mu          sync.Mutex
	closed      bool
	cfg         *Config
	obs         telemetry.SubchannelObserver
	attrs       *resolver.State // attributes handed to children (ResolverState without endpoints)
	eps         *resolver.EndpointMap[*endpoint]
	order       []*endpoint // eps in resolver order
	state       connectivity.State
	lastErr     error // last error of a child that could not serve
	resolverErr error
	lastSample  time.Duration
	active      bool // calls flowed in the last sample window
	// othersAnswer is how many endpoints answered a call in the last
	// sample window.
	othersAnswer int
	// refLatency is the lowest latency estimate of any endpoint, µs; 0
	// before the first sample.
	refLatency  float64
	inhibit     int // >0 while a top-down change is applied to children
	pendingIdle []*conn
	pending     []event
	// connectWaitUntil is, while the picker holds calls back for a
	// connecting endpoint (connectWait), when it must stop; else 0.
	connectWaitUntil time.Duration
	// waitingForConnect says an episode in which nothing outside ejection
	// and holds is READY has begun (at waitSince): its waits for
	// connecting endpoints add up to connectWait at most.
	waitingForConnect bool
	waitSince         time.Duration
}

// event is an observer call collected under mu and made after it.
type event struct {
	kind  int // evState, evEjected, evReturned, evLoad, evEndpoint, evCalls, evRemoved
	ep    string
	state connectivity.State
	d     time.Duration
	n     int
	calls counts
}

const (
	evState = iota
	evEjected
	evReturned
	evLoad
	evEndpoint
	evCalls
	evRemoved
)

// unlockAndEmit releases mu and then reports the collected events.
func (l *lb) unlockAndEmit() {
	evs, obs := l.pending, l.obs
	l.pending = nil
	l.mu.Unlock()
	for _, ev := range evs {
		switch ev.kind {
		case evState:
			obs.SubchannelState(l.target, ev.ep, ev.state)
		case evEjected:
			obs.EndpointEjected(l.target, ev.ep, ev.d)
		case evReturned:
			obs.EndpointReturned(l.target, ev.ep)
		case evLoad:
			obs.EndpointLoad(l.target, ev.ep, ev.n, ev.d)
		case evEndpoint:
			obs.EndpointState(l.target, ev.ep, ev.state, ev.n)
		case evCalls:
			obs.EndpointCalls(l.target, ev.ep, telemetry.EndpointCalls{OK: ev.calls.ok, Failed: ev.calls.failed, Shed: ev.calls.shed,
				Cancelled: ev.calls.neutral, TimedOut: ev.calls.timeouts})
		case evRemoved:
			obs.EndpointRemoved(l.target, ev.ep)
		}
	}
}

// childState is the resolver state a child of ep is given: ep alone, the
// channel's attributes, and pick_first's health listener enabled so that
// health checking and outlier detection reach us through it.
func (l *lb) childStateLocked(ep *endpoint) resolver.State {
	rs := resolver.State{Endpoints: []resolver.Endpoint{ep.ep}}
	if l.attrs != nil {
		rs.Attributes = l.attrs.Attributes
	}
	return pickfirst.EnableHealthListener(rs)
}

func (l *lb) UpdateClientConnState(ccs grpcbalancer.ClientConnState) error {
	cfg, ok := ccs.BalancerConfig.(*Config)
	if ccs.BalancerConfig == nil {
		cfg, ok = defaultConfig(), true
	}
	if !ok {
		return fmt.Errorf("%s: config of type %T; want *balancer.Config: %w", Name, ccs.BalancerConfig, grpcbalancer.ErrBadResolverState)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.obs = observerattr.Get(ccs.ResolverState)
	l.cfg = cfg
	l.sh.failThreshold.Store(int64(cfg.Ejection.ConsecutiveFailures))
	l.sh.failCodes.Store(codeMask(cfg.Ejection.FailureCodes))
	l.resolverErr = nil
	l.attrs = &resolver.State{Attributes: ccs.ResolverState.Attributes}

	endpoints := ccs.ResolverState.Endpoints
	if len(endpoints) == 0 {
		for _, a := range ccs.ResolverState.Addresses {
			endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{a}})
		}
	}
	now := l.sh.now()
	var w work
	seen := resolver.NewEndpointMap[bool]()
	var order []*endpoint
	for _, re := range endpoints {
		if len(re.Addresses) == 0 {
			continue
		}
		if _, dup := seen.Get(re); dup {
			continue
		}
		seen.Set(re, true)
		ep, ok := l.eps.Get(re)
		if !ok {
			ep = l.newEndpointLocked(re, now)
			l.eps.Set(re, ep)
		}
		ep.ep = re // attributes (weights, ...) may have changed
		order = append(order, ep)
	}
	for re, ep := range l.eps.All() {
		if _, ok := seen.Get(re); !ok {
			l.eps.Delete(re)
			for len(ep.conns) > 0 {
				w.close = append(w.close, l.removeLocked(ep.conns[0]))
			}
			l.pending = append(l.pending, event{kind: evRemoved, ep: ep.name})
		}
	}
	l.order = order
	for _, ep := range l.order {
		for len(ep.conns) > cfg.MaxSubchannelsPerEndpoint {
			w.close = append(w.close, l.removeLocked(ep.conns[len(ep.conns)-1]))
		}
		rs := l.childStateLocked(ep)
		for _, c := range ep.conns {
			w.update = append(w.update, c)
			w.rs = append(w.rs, rs)
		}
		for len(ep.conns) < cfg.SubchannelsPerEndpoint {
			w.update = append(w.update, l.newConnLocked(ep, now))
			w.rs = append(w.rs, rs)
		}
	}
	var err error
	if len(l.order) == 0 {
		l.resolverErr = errors.New("resolver produced no endpoints")
		err = grpcbalancer.ErrBadResolverState
	}
	l.applyLocked(&w)
	return err
}

// applyLocked runs w on the children without mu (their state reports
// wait), then publishes one picker. It is called with mu held and
// returns with mu released and the events emitted.
func (l *lb) applyLocked(w *work) {
	if w.empty() {
		l.updatePickerLocked()
		l.unlockAndEmit()
		return
	}
	// The picker first: the events about to be emitted (an ejection, a
	// return) then describe a picker already in force, and no call picks
	// an endpoint just ejected while the work runs. Otherwise an observer
	// that saw the ejection could still see a call reach it.
	l.updatePickerLocked()
	l.inhibit++
	l.unlockAndEmit()
	w.do()
	l.mu.Lock()
	l.inhibit--
	if !l.closed {
		l.updatePickerLocked()
	}
	l.unlockAndEmit()
}

func (l *lb) newEndpointLocked(re resolver.Endpoint, now time.Duration) *endpoint {
	names := make([]string, len(re.Addresses))
	for i, a := range re.Addresses {
		names[i] = a.Addr
	}
	ep := &endpoint{
		sh:         l.sh,
		ep:         re,
		name:       strings.Join(names, ","),
		lastReturn: now,
		aggState:   connectivity.Idle,
	}
	// A new endpoint starts at the mean latency of the others, so that it is
	// neither flooded nor starved before its first sample.
	var sum float64
	var n int
	for _, o := range l.order {
		if o.ewma > 0 {
			sum += o.ewma
			n++
		}
	}
	if n > 0 {
		ep.ewma = sum / float64(n)
	}
	ep.setWeight(l.refLatency)
	return ep
}

// newConnLocked adds one connection (a pick_first child, not yet given its
// addresses: the caller's work does that) to ep.
func (l *lb) newConnLocked(ep *endpoint, now time.Duration) *conn {
	c := &conn{l: l, ep: ep, state: connectivity.Idle, idleSince: now, connectingSince: now}
	c.done = c.onDone
	c.child = grpcbalancer.Get(pickfirst.Name).Build(&connCC{ClientConn: l.cc, c: c}, l.opts)
	ep.conns = append(ep.conns, c)
	l.pending = append(l.pending, event{kind: evState, ep: ep.name, state: connectivity.Idle})
	l.endpointStateLocked(ep)
	return c
}

// removeLocked forgets c and returns it for the caller's work to close.
func (l *lb) removeLocked(c *conn) *conn {
	c.removed = true
	for i, o := range c.ep.conns {
		if o == c {
			c.ep.conns = append(c.ep.conns[:i:i], c.ep.conns[i+1:]...)
			break
		}
	}
	l.pending = append(l.pending, event{kind: evState, ep: c.ep.name, state: connectivity.Shutdown})
	l.endpointStateLocked(c.ep)
	return c
}

// endpointStateLocked reports ep's state aggregated over its connections
// (READY if any is READY, else CONNECTING if any is connecting or idle,
// else TRANSIENT_FAILURE) and its count of open connections, when either
// changed.
func (l *lb) endpointStateLocked(ep *endpoint) {
	st, ready := aggregate(ep.conns)
	if st == ep.aggState && len(ep.conns) == ep.aggConns {
		return
	}
	if st != ep.aggState && logger.V(2) {
		logger.Infof("%s: target %q: endpoint %s is %v with %d of %d connections ready", Name, l.target, ep.name, st, ready, len(ep.conns))
	}
	ep.aggState, ep.aggConns = st, len(ep.conns)
	l.pending = append(l.pending, event{kind: evEndpoint, ep: ep.name, state: st, n: len(ep.conns)})
}

func aggregate(conns []*conn) (connectivity.State, int) {
	ready, connecting := 0, false
	for _, c := range conns {
		switch c.state {
		case connectivity.Ready:
			ready++
		case connectivity.Connecting, connectivity.Idle:
			connecting = true
		}
	}
	switch {
	case ready > 0:
		return connectivity.Ready, ready
	case connecting:
		return connectivity.Connecting, 0
	case len(conns) == 0:
		return connectivity.Idle, 0
	}
	return connectivity.TransientFailure, 0
}

// onChildState records a child's state. The child calls it from inside
// its own methods, possibly holding its own lock, so nothing here calls
// back into a child: IDLE children are handed to the control loop to be
// reconnected.
func (l *lb) onChildState(c *conn, st grpcbalancer.State) {
	l.mu.Lock()
	if l.closed || c.removed {
		l.mu.Unlock()
		return
	}
	old := c.state
	c.state = st.ConnectivityState
	if connecting(c.state) && !connecting(old) {
		c.connectingSince = l.sh.now()
	}
	switch c.state {
	case connectivity.Ready:
		res, err := st.Picker.Pick(grpcbalancer.PickInfo{})
		if err != nil || res.SubConn == nil {
			// Not a pick_first picker we understand; treat as connecting.
			c.state = connectivity.Connecting
			break
		}
		c.result = grpcbalancer.PickResult{SubConn: res.SubConn, Done: c.done, Metadata: res.Metadata}
		if childDone := res.Done; childDone != nil {
			c.result.Done = func(info grpcbalancer.DoneInfo) { c.onDone(info); childDone(info) }
		}
		c.lastErr = nil
	case connectivity.TransientFailure:
		if _, err := st.Picker.Pick(grpcbalancer.PickInfo{}); err != nil {
			c.lastErr, l.lastErr = err, err
		}
	case connectivity.Idle:
		// A connection went away. Keep connections warm: the control loop
		// asks the child to reconnect (grpc applies its backoff to
		// failed attempts).
		l.pendingIdle = append(l.pendingIdle, c)
		l.sh.wake()
	}
	if old != c.state {
		l.pending = append(l.pending, event{kind: evState, ep: c.ep.name, state: c.state})
		l.endpointStateLocked(c.ep)
		if l.inhibit == 0 {
			l.updatePickerLocked()
		}
	} else if c.state == connectivity.TransientFailure && l.inhibit == 0 && l.state == connectivity.TransientFailure {
		l.updatePickerLocked() // a newer error for the picker
	}
	l.unlockAndEmit()
}

func (l *lb) ResolverError(err error) {
	l.mu.Lock()
	defer l.unlockAndEmit()
	if l.closed {
		return
	}
	l.resolverErr = err
	if len(l.order) == 0 || l.state == connectivity.TransientFailure {
		l.updatePickerLocked()
	}
}

// UpdateSubConnState is never called: pick_first children use listeners.
func (l *lb) UpdateSubConnState(grpcbalancer.SubConn, grpcbalancer.SubConnState) {}

func (l *lb) ExitIdle() {
	l.mu.Lock()
	var w work
	for _, ep := range l.order {
		w.exitIdle = append(w.exitIdle, ep.conns...)
	}
	l.unlockAndEmit()
	w.do()
}

// Close shuts every connection down (in-flight calls finish) and stops the
// control loop, waiting for it. It is idempotent.
func (l *lb) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	unregister(l)
	var w work
	for _, ep := range l.order {
		for len(ep.conns) > 0 {
			w.close = append(w.close, l.removeLocked(ep.conns[0]))
		}
	}
	l.unlockAndEmit()
	close(l.quit)
	<-l.loopDone
	w.do()
}

// updatePickerLocked builds a picker from the current state and hands it
// to grpc with the aggregated connectivity state.
func (l *lb) updatePickerLocked() {
	cfg := l.cfg
	var pes []pickEndpoint
	anyConnecting := false
	for _, ep := range l.order {
		// Each picker may ask for one more connection per endpoint.
		ep.growReq.Store(false)
	}
	now := l.sh.now()
	l.connectWaitUntil = 0
	failOpen := false // the second pass ran
	for pass := 0; pass < 2 && len(pes) == 0; pass++ {
		if pass == 1 {
			if l.waitForConnectingLocked(now) {
				break
			}
			failOpen = true
		}
		// The first pass skips ejected and held endpoints; the second
		// runs only when nothing else can serve, so that neither fails
		// calls that a connected endpoint could take. Nor while another
		// endpoint has been connecting for less than connectWait: calls
		// wait for it then, as with grpc's outlier detection (an ejected
		// endpoint is in TRANSIENT_FAILURE to round_robin); a client just
		// started gave every call to the one endpoint connected first,
		// ejected (TestEjectedEndpointWaitsForConnectingOnes).
		for _, ep := range l.order {
			if pass == 0 && (ep.ejected || ep.held) {
				continue
			}
			pe := pickEndpoint{ep: ep, target: uint32(cfg.TargetStreamsPerSubchannel)}
			if ep.probing || ep.drifted {
				pe.limit = 1
			}
			allReady := true
			for i, c := range ep.conns {
				switch c.state {
				case connectivity.Ready:
					pe.conns = append(pe.conns, c)
					if i < cfg.SubchannelsPerEndpoint {
						pe.nBase++
					}
				case connectivity.Connecting, connectivity.Idle:
					anyConnecting = true
					allReady = false
					if pass == 0 && !ep.ejected && !ep.held && now-c.connectingSince < connectWait {
						l.connectWaitUntil = max(l.connectWaitUntil, c.connectingSince+connectWait)
					}
				default:
					allReady = false
				}
			}
			if len(pe.conns) == 0 {
				continue
			}
			if allReady && !ep.ejected && !ep.held && pe.limit == 0 && len(ep.conns) < cfg.MaxSubchannelsPerEndpoint {
				pe.growAt = uint64(cfg.TargetStreamsPerSubchannel) * uint64(len(pe.conns))
			}
			pes = append(pes, pe)
		}
	}
	switch {
	case len(pes) > 0:
		l.connectWaitUntil = 0
		if !failOpen {
			l.waitingForConnect = false // served outside ejection and holds: the episode is over
		}
	case l.connectWaitUntil != 0:
		l.sh.wake() // so that the loop's next round is by the wait's end
	}
	p := &picker{sh: l.sh, eps: pes, choice: cfg.ChoiceCount}
	p.next.Store(uint32(l.sh.rand()))
	switch {
	case len(pes) > 0:
		l.state = connectivity.Ready
	case anyConnecting:
		l.state = connectivity.Connecting
		p.err = grpcbalancer.ErrNoSubConnAvailable
	default:
		l.state = connectivity.TransientFailure
		p.err = l.failureErrLocked()
	}
	l.cc.UpdateState(grpcbalancer.State{ConnectivityState: l.state, Picker: p})
}

// connectWait is how long calls wait for an endpoint that is connecting
// rather than go to ejected or held ones when nothing else is connected.
// Bounded: an endpoint whose connection hangs (a black-holed address, up
// to grpc's 20 s connect timeout) must not hold calls back from a
// connected endpoint, ejected or not, for longer than a connection takes
// to set up, TLS included, within a region.
const connectWait = time.Second

// waitForConnectingLocked reports whether calls wait for a connecting
// endpoint instead of going to ejected or held ones, called when nothing
// else is READY; l.connectWaitUntil is then when the wait ends. A wait
// lasts connectWait from when the endpoints that had been connecting for
// less than that began (the first pass set connectWaitUntil), and the
// whole episode without a READY endpoint outside ejection and holds lasts
// connectWait at most: endpoints that a resolver keeps adding and that
// never connect do not hold calls back for longer.
func (l *lb) waitForConnectingLocked(now time.Duration) bool {
	if l.connectWaitUntil == 0 {
		return false
	}
	if !l.waitingForConnect {
		l.waitingForConnect, l.waitSince = true, now
	}
	l.connectWaitUntil = min(l.connectWaitUntil, l.waitSince+connectWait)
	if now >= l.connectWaitUntil {
		l.connectWaitUntil = 0
		return false
	}
	return true
}

// connecting reports whether a child in state st is on its way to READY.
func connecting(st connectivity.State) bool {
	return st == connectivity.Connecting || st == connectivity.Idle
}

// failureErrLocked is the error of picks when nothing can serve. It is a
// plain error, not a status: grpc fails non-wait-for-ready calls with
// Unavailable and this message, and keeps wait-for-ready calls waiting.
func (l *lb) failureErrLocked() error {
	n, unhealthy := 0, 0
	for _, ep := range l.order {
		for _, c := range ep.conns {
			n++
			if c.lastErr != nil && strings.Contains(c.lastErr.Error(), "health check") {
				unhealthy++
			}
		}
	}
	what := "no endpoint can serve"
	if n > 0 && unhealthy == n {
		what = fmt.Sprintf("all %d endpoints fail their health checks (NOT_SERVING or no health service)", len(l.order))
	}
	switch {
	case l.lastErr != nil && l.resolverErr != nil:
		return fmt.Errorf("%s: %s; last connection error: %v; last resolver error: %v", Name, what, l.lastErr, l.resolverErr)
	case l.lastErr != nil:
		return fmt.Errorf("%s: %s; last connection error: %v", Name, what, l.lastErr)
	case l.resolverErr != nil:
		return fmt.Errorf("%s: %s; last resolver error: %v", Name, what, l.resolverErr)
	}
	return fmt.Errorf("%s: %s", Name, what)
}
