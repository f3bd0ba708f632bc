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
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/grpcreuse/grpcreuse/internal/observerattr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Name is the policy's name in service config ("loadBalancingConfig") and
// in grpc's balancer registry.
const Name = "grpcreuse_least_loaded"

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
	// failureMemory is the number of calls over which the failure share is
	// smoothed (EWMA weight 1-exp(-calls/failureMemory) per sample).
	failureMemory = 20
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
	go l.run()
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

// endpoint is one resolver.Endpoint and its subchannels.
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
	// state, which lets the done callback be built once per subchannel.
	load     atomic.Uint64
	ok       atomic.Uint64 // calls the backend answered (any code but the failure codes)
	failed   atomic.Uint64 // calls that failed with a failure code
	neutral  atomic.Uint64 // calls cancelled or timed out by the caller
	consec   atomic.Int64  // consecutive failures
	weight   atomic.Uint64 // float64 bits: latency EWMA (µs) × failure penalty
	growReq  atomic.Bool   // a pick asked for another subchannel
	inflight int           // last reported in-flight, guarded by lb.mu

	// Guarded by lb.mu.
	addrs      []resolver.Address
	name       string
	subs       []*subConn // live subchannels, in creation order
	ejected    bool
	ejections  int           // ejections in a row, decays while healthy
	returnAt   time.Duration // when an ejection ends
	lastReturn time.Duration // when the endpoint last came back (or was created)
	ewma       float64       // peak-EWMA latency, µs; 0 = no data yet
	failRate   float64       // smoothed share of failed calls
	lastArea   uint64        // t·n − Z at the last sample, mod 2^44
	lastDone   uint64        // ok+neutral at the last sample
	lastFailed uint64
}

// score is the endpoint's cost for a new call: latency × (in flight + 1).
func (e *endpoint) score() float64 {
	return math.Float64frombits(e.weight.Load()) * float64(e.load.Load()&inflightMask+1)
}

func (e *endpoint) setWeight() {
	w := e.ewma
	if w <= 0 {
		w = 1
	}
	e.weight.Store(math.Float64bits(w * (1 + failurePenalty*e.failRate)))
}

// subConn is one connection of an endpoint.
type subConn struct {
	ep *endpoint
	sc grpcbalancer.SubConn
	// done is s.onDone, built once so that picks do not allocate.
	done func(grpcbalancer.DoneInfo)
	// use packs calls in flight (low 32 bits) and picks mod 2^32 (high).
	use atomic.Uint64

	// Guarded by lb.mu.
	state     connectivity.State
	sticky    bool // in TRANSIENT_FAILURE until it becomes READY again
	shutdown  bool
	lastPicks uint32
	idleSince time.Duration
}

func (s *subConn) inflight() uint32 { return uint32(s.use.Load()) }

// lb is the balancer of one channel.
//
// Concurrency: grpc calls UpdateClientConnState, ResolverError, ExitIdle,
// Close and the subchannel state listeners from one goroutine; the control
// loop (run) is a second one. Both take mu. Pick and the done callbacks
// take no lock: they read the immutable picker and update atomics.
//
// Lock order: mu is the only lock. Calls into grpc (NewSubConn, Connect,
// Shutdown, UpdateState) are made with mu held; none of them calls back
// into the balancer synchronously. The observer is only called after mu is
// released.
type lb struct {
	cc       grpcbalancer.ClientConn
	target   string
	k        knobs
	sh       *shared
	quit     chan struct{}
	loopDone chan struct{}

	mu          sync.Mutex
	closed      bool
	cfg         *Config
	obs         telemetry.SubchannelObserver
	eps         *resolver.EndpointMap[*endpoint]
	order       []*endpoint // eps in resolver order
	state       connectivity.State
	connErr     error // last connection error of any subchannel
	resolverErr error
	lastSample  time.Duration
	active      bool // calls flowed in the last sample window
	pending     []event
}

// event is an observer call collected under mu and made after it.
type event struct {
	kind  int // evState, evEjected, evReturned, evLoad
	ep    string
	state connectivity.State
	d     time.Duration
	n     int
}

const (
	evState = iota
	evEjected
	evReturned
	evLoad
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
		}
	}
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
	defer l.unlockAndEmit()
	if l.closed {
		return nil
	}
	l.obs = observerattr.Get(ccs.ResolverState)
	l.cfg = cfg
	l.sh.failThreshold.Store(int64(cfg.Ejection.ConsecutiveFailures))
	l.sh.failCodes.Store(codeMask(cfg.Ejection.FailureCodes))
	l.resolverErr = nil

	endpoints := ccs.ResolverState.Endpoints
	if len(endpoints) == 0 {
		for _, a := range ccs.ResolverState.Addresses {
			endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{a}})
		}
	}
	now := l.sh.now()
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
		order = append(order, ep)
	}
	for re, ep := range l.eps.All() {
		if _, ok := seen.Get(re); !ok {
			l.eps.Delete(re)
			for _, s := range ep.subs {
				l.shutdownLocked(s)
			}
			ep.subs = nil
		}
	}
	l.order = order
	for _, ep := range l.order {
		for len(ep.subs) < cfg.SubchannelsPerEndpoint {
			if !l.newSubConnLocked(ep, now) {
				break
			}
		}
		for len(ep.subs) > cfg.MaxSubchannelsPerEndpoint {
			l.shutdownLocked(ep.subs[len(ep.subs)-1])
		}
	}
	if len(l.order) == 0 {
		l.resolverErr = errors.New("resolver produced no endpoints")
		l.updatePickerLocked()
		return grpcbalancer.ErrBadResolverState
	}
	l.updatePickerLocked()
	return nil
}

func (l *lb) newEndpointLocked(re resolver.Endpoint, now time.Duration) *endpoint {
	names := make([]string, len(re.Addresses))
	for i, a := range re.Addresses {
		names[i] = a.Addr
	}
	ep := &endpoint{
		sh:         l.sh,
		addrs:      re.Addresses,
		name:       strings.Join(names, ","),
		lastReturn: now,
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
	ep.setWeight()
	return ep
}

// newSubConnLocked opens one more connection to ep and reports whether it
// could.
func (l *lb) newSubConnLocked(ep *endpoint, now time.Duration) bool {
	s := &subConn{ep: ep, state: connectivity.Idle, idleSince: now}
	s.done = s.onDone
	//lint:ignore SA1019 one SubConn per connection, given all of the endpoint's addresses (see doc.go); grpc has no replacement yet
	sc, err := l.cc.NewSubConn(ep.addrs, grpcbalancer.NewSubConnOptions{
		StateListener: func(st grpcbalancer.SubConnState) { l.onSubConnState(s, st) },
	})
	if err != nil {
		l.connErr = err
		return false
	}
	s.sc = sc
	ep.subs = append(ep.subs, s)
	l.pending = append(l.pending, event{kind: evState, ep: ep.name, state: connectivity.Idle})
	sc.Connect()
	return true
}

// shutdownLocked closes s gracefully (its calls finish) and forgets it.
func (l *lb) shutdownLocked(s *subConn) {
	if s.shutdown {
		return
	}
	s.shutdown = true
	s.sc.Shutdown()
	s.ep.remove(s)
	l.pending = append(l.pending, event{kind: evState, ep: s.ep.name, state: connectivity.Shutdown})
}

// remove drops s from e.subs, keeping the order. Called with lb.mu held.
func (e *endpoint) remove(s *subConn) {
	for i, o := range e.subs {
		if o == s {
			e.subs = append(e.subs[:i:i], e.subs[i+1:]...)
			return
		}
	}
}

func (l *lb) onSubConnState(s *subConn, st grpcbalancer.SubConnState) {
	l.mu.Lock()
	defer l.unlockAndEmit()
	if l.closed || s.shutdown {
		return
	}
	old := s.state
	s.state = st.ConnectivityState
	l.pending = append(l.pending, event{kind: evState, ep: s.ep.name, state: s.state})
	switch s.state {
	case connectivity.Idle:
		// Keep connections warm; grpc applies its reconnect backoff
		// before a failed subchannel reports IDLE again.
		s.sc.Connect()
	case connectivity.TransientFailure:
		s.sticky = true
		l.connErr = st.ConnectionError
	case connectivity.Ready:
		s.sticky = false
	case connectivity.Shutdown:
		// Not requested by us (we ignore updates after our Shutdown).
		s.shutdown = true
		s.ep.remove(s)
	}
	if old != s.state {
		l.updatePickerLocked()
	}
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

// UpdateSubConnState is never called: every subchannel has a listener.
func (l *lb) UpdateSubConnState(grpcbalancer.SubConn, grpcbalancer.SubConnState) {}

func (l *lb) ExitIdle() {
	l.mu.Lock()
	defer l.unlockAndEmit()
	for _, ep := range l.order {
		for _, s := range ep.subs {
			if s.state == connectivity.Idle {
				s.sc.Connect()
			}
		}
	}
}

// Close shuts every subchannel down (in-flight calls finish) and stops the
// control loop, waiting for it. It is idempotent.
func (l *lb) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	for _, ep := range l.order {
		for len(ep.subs) > 0 {
			l.shutdownLocked(ep.subs[0])
		}
	}
	l.unlockAndEmit()
	close(l.quit)
	<-l.loopDone
}

// updatePickerLocked builds a picker from the current state and hands it
// to grpc with the aggregated connectivity state.
func (l *lb) updatePickerLocked() {
	cfg := l.cfg
	var pes []pickEndpoint
	anyConnecting := false
	for _, ep := range l.order {
		// Each picker may ask for one more subchannel per endpoint.
		ep.growReq.Store(false)
	}
	for pass := 0; pass < 2 && len(pes) == 0; pass++ {
		// The first pass skips ejected endpoints; the second runs only
		// when nothing else can serve, so ejection never fails calls that
		// an ejected but connected endpoint could take.
		for _, ep := range l.order {
			if pass == 0 && ep.ejected {
				continue
			}
			pe := pickEndpoint{ep: ep, target: uint32(cfg.TargetStreamsPerSubchannel)}
			allReady := true
			for i, s := range ep.subs {
				switch {
				case s.state == connectivity.Ready:
					pe.subs = append(pe.subs, s)
					if i < cfg.SubchannelsPerEndpoint {
						pe.nBase++
					}
				case !s.sticky && (s.state == connectivity.Connecting || s.state == connectivity.Idle):
					anyConnecting = true
					allReady = false
				default:
					allReady = false
				}
			}
			if len(pe.subs) == 0 {
				continue
			}
			if allReady && !ep.ejected && len(ep.subs) < cfg.MaxSubchannelsPerEndpoint {
				pe.growAt = uint64(cfg.TargetStreamsPerSubchannel) * uint64(len(pe.subs))
			}
			pes = append(pes, pe)
		}
	}
	p := &picker{sh: l.sh, eps: pes, choice: cfg.ChoiceCount}
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

// failureErrLocked is the error of picks when nothing can serve. It is a
// plain error, not a status: grpc fails non-wait-for-ready calls with
// Unavailable and this message, and keeps wait-for-ready calls waiting.
func (l *lb) failureErrLocked() error {
	switch {
	case l.connErr != nil && l.resolverErr != nil:
		return fmt.Errorf("%s: no endpoint can serve; last connection error: %v; last resolver error: %v", Name, l.connErr, l.resolverErr)
	case l.connErr != nil:
		return fmt.Errorf("%s: no endpoint can serve; last connection error: %v", Name, l.connErr)
	case l.resolverErr != nil:
		return fmt.Errorf("%s: no endpoint can serve; last resolver error: %v", Name, l.resolverErr)
	}
	return fmt.Errorf("%s: no endpoint can serve", Name)
}
