package balancer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

var okDone = grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true}

// TestEagerSubchannelsAndState: subchannelsPerEndpoint connections per
// endpoint are opened and connected before any pick; the aggregated state
// follows the subchannels (CONNECTING, READY if any is, TRANSIENT_FAILURE
// with the last connection error when none can serve); IDLE reconnects.
func TestEagerSubchannelsAndState(t *testing.T) {
	h := newHarness(t, 1)
	if err := h.update(mustConfig(t, `{"subchannelsPerEndpoint":3}`), endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	subs := h.cc.live()
	if len(subs) != 6 {
		t.Fatalf("opened %d subchannels, want 2 endpoints × 3", len(subs))
	}
	for _, s := range subs {
		if s.connects.Load() != 1 {
			t.Fatalf("subchannel %v connected %d times before any pick, want 1", s.addrs, s.connects.Load())
		}
	}
	if got := h.cc.last(); got.ConnectivityState != connectivity.Connecting {
		t.Fatalf("state %v, want CONNECTING", got.ConnectivityState)
	}
	if _, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{}); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Fatalf("Pick while connecting = %v, want ErrNoSubConnAvailable (queue the call)", err)
	}

	subs[4].set(connectivity.Connecting, nil)
	subs[4].set(connectivity.Ready, nil)
	if got := h.cc.last().ConnectivityState; got != connectivity.Ready {
		t.Fatalf("state %v with one READY subchannel, want READY", got)
	}
	if r := h.pick(); r.SubConn != subs[4] {
		t.Fatalf("picked %v, want the only READY subchannel", r.SubConn)
	}

	// Everything fails: picks fail with the last connection error, as a
	// plain error so that grpc gives fail-fast calls Unavailable and keeps
	// wait-for-ready calls waiting.
	// The READY connection breaks: pick_first goes IDLE and the control
	// loop reconnects it at once.
	subs[4].set(connectivity.Idle, nil)
	if got := h.cc.last().ConnectivityState; got != connectivity.Connecting {
		t.Fatalf("state %v after the only READY connection broke, want CONNECTING", got)
	}
	h.tick() // or the loop goroutine, woken by the IDLE report, does it
	testutil.Eventually(t, 5*time.Second, func() bool { return subs[4].connects.Load() == 2 }, "the broken connection reconnects once")
	subs[4].set(connectivity.Connecting, nil)
	for i, s := range subs {
		s.set(connectivity.TransientFailure, errors.New("dial tcp: connection refused #"+string(rune('0'+i))))
	}
	st := h.cc.last()
	if st.ConnectivityState != connectivity.TransientFailure {
		t.Fatalf("state %v, want TRANSIENT_FAILURE", st.ConnectivityState)
	}
	_, err := st.Picker.Pick(grpcbalancer.PickInfo{})
	if err == nil || !strings.Contains(err.Error(), "last connection error: dial tcp: connection refused #5") {
		t.Fatalf("Pick error = %v, want the last connection error", err)
	}
	if _, isStatus := status.FromError(err); isStatus {
		t.Fatalf("Pick error %v is a status; wait-for-ready calls would fail", err)
	}
	// Sticky TRANSIENT_FAILURE: IDLE after backoff reconnects, and the
	// state does not flap back to CONNECTING.
	subs[0].set(connectivity.Idle, nil)
	if subs[0].connects.Load() != 2 {
		t.Fatalf("IDLE subchannel connected %d times, want a reconnect", subs[0].connects.Load())
	}
	subs[0].set(connectivity.Connecting, nil)
	if got := h.cc.last().ConnectivityState; got != connectivity.TransientFailure {
		t.Fatalf("state %v after a reconnect attempt, want TRANSIENT_FAILURE to stick", got)
	}
	subs[0].set(connectivity.Ready, nil)
	if got := h.cc.last().ConnectivityState; got != connectivity.Ready {
		t.Fatalf("state %v, want READY", got)
	}
	if h.obs.count("a:1", connectivity.Idle) < 3 || h.obs.count("a:1", connectivity.Ready) != 1 {
		t.Fatalf("observer saw %v for a:1", h.obs.states["a:1"])
	}
}

// TestResolverUpdates: new endpoints get subchannels, removed ones are shut
// down (gracefully: grpc lets their calls finish), kept ones are kept, and
// an empty update is a bad resolver state with a clear pick error.
func TestResolverUpdates(t *testing.T) {
	h := newHarness(t, 2)
	cfg := mustConfig(t, `{"subchannelsPerEndpoint":2}`)
	if err := h.update(cfg, endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	before := h.cc.live()
	if err := h.update(cfg, endpoints("b:1", "c:1")); err != nil {
		t.Fatal(err)
	}
	for _, s := range before {
		if want := s.addrs[0].Addr == "a:1"; s.shut.Load() != want {
			t.Fatalf("subchannel of %s shut down = %v, want %v", s.addrs[0].Addr, s.shut.Load(), want)
		}
	}
	if got := len(h.cc.live()); got != 4 {
		t.Fatalf("%d live subchannels, want 2 for b and 2 for c", got)
	}
	for range 50 {
		if a := h.addrOf(h.pick()); a != "b:1" {
			t.Fatalf("picked %s; only b:1 is READY", a)
		}
	}
	if h.obs.count("a:1", connectivity.Shutdown) != 2 {
		t.Fatalf("observer saw %d shutdowns of a:1, want 2", h.obs.count("a:1", connectivity.Shutdown))
	}
	// Multi-address endpoints: every connection is a pick_first child
	// given all the addresses; it tries the first, then the next.
	multi := []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: "d:1"}, {Addr: "d:2"}}}}
	if err := h.update(cfg, multi); err != nil {
		t.Fatal(err)
	}
	live := h.cc.live()
	if len(live) != 2 || live[0].addrs[0].Addr != "d:1" || live[1].addrs[0].Addr != "d:1" {
		t.Fatalf("live subchannels %d; want 2 connection attempts to d:1", len(live))
	}
	for _, s := range live {
		s.set(connectivity.Connecting, nil)
		s.set(connectivity.TransientFailure, errors.New("refused"))
	}
	live = h.cc.live()
	if len(live) != 4 || live[2].addrs[0].Addr != "d:2" || live[3].addrs[0].Addr != "d:2" {
		t.Fatalf("after d:1 failed: %d live subchannels; want each connection to try d:2", len(live))
	}
	if err := h.update(cfg, nil); !errors.Is(err, grpcbalancer.ErrBadResolverState) {
		t.Fatalf("update without endpoints = %v, want ErrBadResolverState", err)
	}
	if _, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{}); err == nil || !strings.Contains(err.Error(), "resolver produced no endpoints") {
		t.Fatalf("Pick after empty update = %v", err)
	}
	h.lb.ResolverError(errors.New("dns down"))
	if _, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{}); err == nil || !strings.Contains(err.Error(), "last resolver error: dns down") {
		t.Fatalf("Pick after resolver error = %v", err)
	}
}

// TestPickZeroAllocs: a pick and its done callback allocate nothing.
func TestPickZeroAllocs(t *testing.T) {
	h := newHarness(t, 3)
	if err := h.update(mustConfig(t, `{"subchannelsPerEndpoint":2}`), endpoints("a:1", "b:1", "c:1", "d:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	p := h.cc.last().Picker
	info := grpcbalancer.PickInfo{FullMethodName: "/s/m", Ctx: context.Background()}
	allocs := testing.AllocsPerRun(1000, func() {
		r, err := p.Pick(info)
		if err != nil {
			t.Fatal(err)
		}
		r.Done(okDone)
	})
	if allocs != 0 {
		t.Fatalf("Pick+Done allocates %v times per call, want 0", allocs)
	}
}

// TestPickPrefersLeastLoadedAndFaster: the endpoint with the lower score
// (latency × (in flight + 1)) wins whenever it is sampled.
func TestPickPrefersLeastLoadedAndFaster(t *testing.T) {
	h := newHarness(t, 4)
	if err := h.update(mustConfig(t, `{}`), endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	// Equal latency: picks alternate to keep in-flight counts level.
	var held []grpcbalancer.PickResult
	count := map[string]int{}
	for range 100 {
		r := h.pick()
		count[h.addrOf(r)]++
		held = append(held, r)
	}
	if count["a:1"] != 50 || count["b:1"] != 50 {
		t.Fatalf("100 concurrent picks spread %v, want 50/50", count)
	}
	for _, r := range held {
		r.Done(okDone)
	}
	// b is 10 times slower (a weight of 10/1.5 = 6.7 beyond the latency
	// band): it gets a call only once a has several times as many in
	// flight.
	h.lb.mu.Lock()
	h.lb.order[0].ewma, h.lb.order[1].ewma = 1000, 10000
	h.lb.order[0].setWeight(1000)
	h.lb.order[1].setWeight(1000)
	h.lb.mu.Unlock()
	count = map[string]int{}
	held = held[:0]
	for range 22 {
		r := h.pick()
		count[h.addrOf(r)]++
		held = append(held, r)
	}
	if count["a:1"] != 18 || count["b:1"] != 4 {
		t.Fatalf("22 concurrent picks spread %v, want a:1 18, b:1 4", count)
	}
	for _, r := range held {
		r.Done(okDone)
	}
}

// TestChooseSubchannel: within an endpoint, calls spread over the base
// subchannels while they are below target, then fill extras in order.
func TestChooseSubchannel(t *testing.T) {
	subs := make([]*conn, 4)
	for i := range subs {
		subs[i] = &conn{}
	}
	pe := &pickEndpoint{conns: subs, nBase: 2, target: 2}
	got := func() int {
		s := pe.choose(0)
		s.use.Add(1<<32 + 1)
		for i, o := range subs {
			if o == s {
				return i
			}
		}
		return -1
	}
	var seq []int
	for range 9 {
		seq = append(seq, got())
	}
	// base 0,1 up to 2 each, extra 2 up to 2, extra 3 up to 2, then least loaded.
	want := []int{0, 1, 0, 1, 2, 2, 3, 3, 0}
	for i := range want {
		if seq[i] != want[i] {
			t.Fatalf("choice sequence %v, want %v", seq, want)
		}
	}
}

// TestDoneClassification: failures count towards ejection, answers reset
// the count, and the caller's own cancellation or deadline never counts.
func TestDoneClassification(t *testing.T) {
	h := newHarness(t, 5)
	if err := h.update(mustConfig(t, `{"ejection":{"consecutiveFailures":100}}`), endpoints("a:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	ep := h.lb.order[0]
	tests := []struct {
		name   string
		info   grpcbalancer.DoneInfo
		consec int64
	}{
		{"unavailable", grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}, 1},
		{"back-pressure is not a failure", grpcbalancer.DoneInfo{Err: status.Error(codes.ResourceExhausted, "x")}, 0},
		{"unavailable", grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}, 1},
		{"internal is not a failure by default", grpcbalancer.DoneInfo{Err: status.Error(codes.Internal, "x")}, 0},
		{"unavailable", grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}, 1},
		{"caller cancelled (status)", grpcbalancer.DoneInfo{Err: status.Error(codes.Canceled, "x")}, 1},
		{"caller cancelled (context)", grpcbalancer.DoneInfo{Err: context.Canceled}, 1},
		{"caller deadline", grpcbalancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, "x")}, 1},
		{"transport not ready: pick given back", grpcbalancer.DoneInfo{}, 1},
		{"unavailable again", grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}, 2},
		{"unknown (application error) is an answer", grpcbalancer.DoneInfo{Err: errors.New("boom")}, 0},
		{"application error is an answer", grpcbalancer.DoneInfo{Err: status.Error(codes.NotFound, "x")}, 0},
		{"unavailable again", grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "x")}, 1},
		{"received message over the client's limit is not shedding", grpcbalancer.DoneInfo{Err: status.Error(codes.ResourceExhausted, "grpc: received message larger than max (9 vs. 4)"), BytesReceived: true}, 0},
		{"sent message over the client's limit is not shedding", grpcbalancer.DoneInfo{Err: status.Error(codes.ResourceExhausted, "trying to send message larger than max (9 vs. 4)")}, 0},
		{"success", okDone, 0},
	}
	for _, tt := range tests {
		h.pick().Done(tt.info)
		if got := ep.consec.Load(); got != tt.consec {
			t.Fatalf("%s: consecutive failures %d, want %d", tt.name, got, tt.consec)
		}
	}
	if n := ep.load.Load() & inflightMask; n != 0 {
		t.Fatalf("in flight %d after every call finished", n)
	}
	if got, want := ep.counts(), (counts{ok: 6, failed: 5, shed: 1, neutral: 2, timeouts: 1}); got != want {
		t.Fatalf("counts %+v; want %+v", got, want)
	}
}

// TestLatencySampling: the area accounting measures the mean latency of
// finished calls exactly, peaks are taken at once and decay after.
func TestLatencySampling(t *testing.T) {
	h := newHarness(t, 6)
	if err := h.update(mustConfig(t, `{}`), endpoints("a:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	ep := h.lb.order[0]
	h.tick() // baseline sample
	run := func(lat time.Duration, n int) {
		var rs []grpcbalancer.PickResult
		for range n {
			rs = append(rs, h.pick())
		}
		h.clock.advance(lat)
		for _, r := range rs {
			r.Done(okDone)
		}
		h.clock.advance(100*time.Millisecond - lat)
		h.tick()
	}
	run(10*time.Millisecond, 4)
	h.lb.mu.Lock()
	got := ep.ewma
	h.lb.mu.Unlock()
	if got < 9999 || got > 10001 {
		t.Fatalf("latency EWMA %vµs after calls of 10ms, want 10000µs", got)
	}
	run(40*time.Millisecond, 1) // a peak is taken at once
	h.lb.mu.Lock()
	got = ep.ewma
	h.lb.mu.Unlock()
	if got < 39999 || got > 40001 {
		t.Fatalf("latency EWMA %vµs after a 40ms call, want the peak 40000µs", got)
	}
	run(10*time.Millisecond, 1) // a faster sample decays: w = exp(-0.1/2)
	h.lb.mu.Lock()
	got = ep.ewma
	h.lb.mu.Unlock()
	if want := 10000 + 30000*0.951229; got < want-1 || got > want+1 {
		t.Fatalf("latency EWMA %vµs, want %vµs", got, want)
	}
}

// TestEjectionLifecycle: consecutive failures eject for base × n (capped),
// maxEjectionPercent is never exceeded, and ejected endpoints return on
// their own.
func TestEjectionLifecycle(t *testing.T) {
	h := newHarness(t, 7)
	cfg := mustConfig(t, `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"10s","maxEjectionTime":"25s","maxEjectionPercent":50}}`)
	if err := h.update(cfg, endpoints("a:1", "b:1", "c:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	fail := func(addr string, n int) {
		t.Helper()
		for done := 0; done < n; {
			r := h.pick()
			if h.addrOf(r) == addr {
				r.Done(grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "down")})
				done++
			} else {
				r.Done(okDone)
			}
		}
		h.tick()
	}
	fail("a:1", 3)
	if got := h.obs.ejections("a:1"); len(got) != 1 || got[0] != 10*time.Second {
		t.Fatalf("a:1 ejections %v, want [10s]", got)
	}
	for range 100 {
		if a := h.addrOf(h.pick()); a == "a:1" {
			t.Fatal("picked an ejected endpoint")
		}
	}
	// 2 of 3 ejected would be 67% > 50%: b stays.
	fail("b:1", 3)
	if got := h.obs.ejections("b:1"); len(got) != 0 {
		t.Fatalf("b:1 ejected %v beyond maxEjectionPercent", got)
	}
	h.clock.advance(10 * time.Second)
	h.tick()
	if h.obs.returns("a:1") != 1 {
		t.Fatal("a:1 did not return after its ejection time")
	}
	// Ejected again right away: twice as long, then capped at 25s.
	fail("a:1", 3)
	h.clock.advance(20 * time.Second)
	h.tick()
	fail("a:1", 3)
	if got := h.obs.ejections("a:1"); len(got) != 3 || got[1] != 20*time.Second || got[2] != 25*time.Second {
		t.Fatalf("a:1 ejections %v, want [10s 20s 25s]", got)
	}
	// Long healthy periods wear the multiplier off.
	h.clock.advance(25 * time.Second)
	h.tick()
	h.clock.advance(time.Hour)
	fail("a:1", 3)
	if got := h.obs.ejections("a:1"); got[len(got)-1] != 10*time.Second {
		t.Fatalf("a:1 ejected for %v after an hour healthy, want the base 10s", got[len(got)-1])
	}
}

// TestEjectionFailsOpen: with every endpoint ejected, picks still go to the
// connected ones instead of failing.
func TestEjectionFailsOpen(t *testing.T) {
	h := newHarness(t, 8)
	cfg := mustConfig(t, `{"ejection":{"consecutiveFailures":1,"maxEjectionPercent":100}}`)
	if err := h.update(cfg, endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	for range 10 {
		h.pick().Done(grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "down")})
		h.tick()
	}
	if len(h.obs.ejections("a:1")) != 1 || len(h.obs.ejections("b:1")) != 1 {
		t.Fatalf("ejections a %v b %v, want both", h.obs.ejections("a:1"), h.obs.ejections("b:1"))
	}
	if st := h.cc.last(); st.ConnectivityState != connectivity.Ready {
		t.Fatalf("state %v with every endpoint ejected but connected, want READY", st.ConnectivityState)
	}
	h.pick().Done(okDone)
}

// TestEjectedEndpointWaitsForConnectingOnes: an ejected endpoint gets no
// calls while another endpoint is still connecting; they wait for it, as
// with grpc's outlier detection. Only when nothing else can connect do
// calls go to the ejected endpoint (failing open), or once the others
// have been connecting for connectWait (a hung connection must not hold
// calls back from a connected endpoint for long). A client just started
// had only its first endpoint connected, which failed and was ejected, and
// it went on getting the calls (TestIntegrationEjectionAndReturn, under
// load).
func TestEjectedEndpointWaitsForConnectingOnes(t *testing.T) {
	h := newHarness(t, 9)
	cfg := mustConfig(t, `{"ejection":{"consecutiveFailures":3,"maxEjectionPercent":50}}`)
	if err := h.update(cfg, endpoints("a:1", "b:1", "c:1")); err != nil {
		t.Fatal(err)
	}
	subs := map[string]*fakeSC{}
	for _, s := range h.cc.live() {
		subs[s.addrs[0].Addr] = s
		s.set(connectivity.Connecting, nil)
	}
	subs["a:1"].set(connectivity.Ready, nil)
	for range 3 {
		r := h.pick()
		if a := h.addrOf(r); a != "a:1" {
			t.Fatalf("picked %s, want a:1, the only one connected", a)
		}
		r.Done(grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "down")})
	}
	h.tick()
	if len(h.obs.ejections("a:1")) != 1 {
		t.Fatalf("a:1 ejections %v, want one", h.obs.ejections("a:1"))
	}
	st := h.cc.last()
	if _, err := st.Picker.Pick(grpcbalancer.PickInfo{}); err != grpcbalancer.ErrNoSubConnAvailable || st.ConnectivityState != connectivity.Connecting {
		t.Fatalf("with a:1 ejected and b:1, c:1 connecting: pick error %v, state %v; want ErrNoSubConnAvailable, CONNECTING", err, st.ConnectivityState)
	}
	// A connection that hangs holds calls back for connectWait at most;
	// then the ejected endpoint serves (no one else can).
	h.clock.advance(connectWait - time.Millisecond)
	h.tick()
	if _, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{}); err != grpcbalancer.ErrNoSubConnAvailable {
		t.Fatalf("pick error %v just before connectWait passed, want ErrNoSubConnAvailable", err)
	}
	h.clock.advance(time.Millisecond)
	h.tick()
	if a := h.addrOf(h.pick()); a != "a:1" {
		t.Fatalf("picked %s after b:1 and c:1 connected for connectWait, want the ejected a:1", a)
	}
	subs["b:1"].set(connectivity.Ready, nil)
	for range 20 {
		if a := h.addrOf(h.pick()); a != "b:1" {
			t.Fatalf("picked %s, want b:1 (a:1 ejected)", a)
		}
	}
	// Nothing but the ejected endpoint can serve: it does.
	subs["b:1"].set(connectivity.Idle, nil) // its connection went away
	for _, a := range []string{"b:1", "c:1"} {
		if a == "b:1" {
			subs[a].set(connectivity.Connecting, nil)
		}
		subs[a].set(connectivity.TransientFailure, errors.New("refused"))
	}
	if a := h.addrOf(h.pick()); a != "a:1" {
		t.Fatalf("picked %s with only the ejected a:1 connected, want a:1", a)
	}
}

// TestConnectWaitIsBoundedPerEpisode: a resolver that keeps adding
// endpoints that never connect does not hold calls back from the ejected
// endpoint, the only one connected, for longer than connectWait in all:
// each new endpoint starts connecting afresh, but the episode's wait does
// not start again.
func TestConnectWaitIsBoundedPerEpisode(t *testing.T) {
	h := newHarness(t, 10)
	cfg := mustConfig(t, `{"ejection":{"consecutiveFailures":3,"maxEjectionPercent":50}}`)
	addrs := []string{"a:1", "b:1", "c:1"}
	if err := h.update(cfg, endpoints(addrs...)); err != nil {
		t.Fatal(err)
	}
	for _, s := range h.cc.live() {
		s.set(connectivity.Connecting, nil)
		if s.addrs[0].Addr == "a:1" {
			s.set(connectivity.Ready, nil)
		}
	}
	for range 3 {
		h.pick().Done(grpcbalancer.DoneInfo{Err: status.Error(codes.Unavailable, "down")})
	}
	h.tick()
	if len(h.obs.ejections("a:1")) != 1 {
		t.Fatalf("a:1 ejections %v, want one", h.obs.ejections("a:1"))
	}
	// Every 400 ms the resolver adds an endpoint, which starts connecting
	// and never gets there.
	for i := range 4 {
		h.clock.advance(400 * time.Millisecond)
		addrs = append(addrs, fmt.Sprintf("new%d:1", i))
		if err := h.update(cfg, endpoints(addrs...)); err != nil {
			t.Fatal(err)
		}
		for _, s := range h.cc.live() {
			if s.addrs[0].Addr == addrs[len(addrs)-1] {
				s.set(connectivity.Connecting, nil)
			}
		}
		h.tick()
		_, err := h.cc.last().Picker.Pick(grpcbalancer.PickInfo{})
		if waited := time.Duration(i+1) * 400 * time.Millisecond; waited >= connectWait && err != nil {
			t.Fatalf("%v after the ejection, with endpoints added that never connect: pick error %v, want the ejected a:1", waited, err)
		}
	}
	if a := h.addrOf(h.pick()); a != "a:1" {
		t.Fatalf("picked %s, want the ejected a:1, the only one connected", a)
	}
}

// TestScaleUpAndDown: a pick above targetStreamsPerSubchannel × READY
// subchannels opens one more subchannel (up to the maximum, one at a time);
// extras that stay idle for subchannelIdleTimeout are closed, base ones never.
func TestScaleUpAndDown(t *testing.T) {
	h := newHarness(t, 9)
	cfg := mustConfig(t, `{"maxSubchannelsPerEndpoint":3,"targetStreamsPerSubchannel":2,"subchannelIdleTimeout":"5s"}`)
	if err := h.update(cfg, endpoints("a:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	var held []grpcbalancer.PickResult
	pickN := func(n int) {
		for range n {
			held = append(held, h.pick())
		}
		h.tick()
	}
	pickN(2)
	if n := len(h.cc.live()); n != 1 {
		t.Fatalf("%d subchannels at the target, want 1", n)
	}
	pickN(1) // 3 in flight > 2 × 1
	if n := len(h.cc.live()); n != 2 {
		t.Fatalf("%d subchannels above the target, want 2", n)
	}
	pickN(5) // still connecting: no third one yet
	if n := len(h.cc.live()); n != 2 {
		t.Fatalf("%d subchannels while the new one connects, want 2", n)
	}
	h.readyAll()
	pickN(1) // 9 in flight > 2 × 2
	h.readyAll()
	pickN(10)
	if n := len(h.cc.live()); n != 3 {
		t.Fatalf("%d subchannels, want the maximum 3", n)
	}
	for _, r := range held {
		r.Done(okDone)
	}
	h.clock.advance(100 * time.Millisecond)
	h.tick() // notices the last picks
	h.clock.advance(5 * time.Second)
	h.tick()
	live := h.cc.live()
	if len(live) != 1 || live[0] != h.cc.subs[0] {
		t.Fatalf("%d subchannels after the idle timeout, want only the base one", len(live))
	}
	if h.obs.count("a:1", connectivity.Shutdown) != 2 {
		t.Fatalf("observer saw %d closed subchannels, want 2", h.obs.count("a:1", connectivity.Shutdown))
	}
}

// TestCloseShutsDown: Close shuts every subchannel down and stops the loop
// (leakcheck in TestMain checks the goroutine), and is idempotent.
func TestCloseShutsDown(t *testing.T) {
	h := newHarness(t, 10)
	if err := h.update(mustConfig(t, `{"subchannelsPerEndpoint":2}`), endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	h.lb.Close()
	h.lb.Close()
	if n := len(h.cc.live()); n != 0 {
		t.Fatalf("%d subchannels left after Close", n)
	}
	// Late state updates and updates after Close are ignored.
	h.cc.subs[0].set(connectivity.Ready, nil)
	if err := h.update(mustConfig(t, `{}`), endpoints("c:1")); err != nil {
		t.Fatal(err)
	}
}

// TestFailureCodesConfigurable: ejection.failureCodes decides what counts;
// INTERNAL ejects only when listed.
func TestFailureCodesConfigurable(t *testing.T) {
	for _, tt := range []struct {
		cfg    string
		consec int64
	}{
		{`{"ejection":{"consecutiveFailures":100}}`, 0},
		{`{"ejection":{"consecutiveFailures":100,"failureCodes":["UNAVAILABLE","INTERNAL"]}}`, 3},
	} {
		h := newHarness(t, 11)
		if err := h.update(mustConfig(t, tt.cfg), endpoints("a:1")); err != nil {
			t.Fatal(err)
		}
		h.readyAll()
		for range 3 {
			h.pick().Done(grpcbalancer.DoneInfo{Err: status.Error(codes.Internal, "x")})
		}
		if got := h.lb.order[0].consec.Load(); got != tt.consec {
			t.Fatalf("%s: %d consecutive failures after 3 INTERNAL; want %d", tt.cfg, got, tt.consec)
		}
	}
}

// TestBlackHoleHold: an endpoint whose calls keep timing out while another
// answers is held out, then probed one call at a time; a probe that times
// out doubles the hold; an answered probe ends it. Timeouts everywhere
// (the callers' deadlines) hold nothing, and nothing is ever ejected.
func TestBlackHoleHold(t *testing.T) {
	h := newHarness(t, 12)
	if err := h.update(mustConfig(t, `{}`), endpoints("a:1", "b:1")); err != nil {
		t.Fatal(err)
	}
	h.readyAll()
	deadline := grpcbalancer.DoneInfo{Err: status.Error(codes.DeadlineExceeded, "context deadline exceeded")}
	held := func() bool {
		h.lb.mu.Lock()
		defer h.lb.mu.Unlock()
		return h.lb.order[0].held
	}
	// The callers' own deadlines on every endpoint, nobody answering in
	// the window: no hold, and the runs are forgotten.
	for range 10 {
		h.pick().Done(deadline)
	}
	h.clock.advance(100 * time.Millisecond)
	h.tick()
	if held() {
		t.Fatal("held an endpoint when every endpoint's calls timed out")
	}
	if n := h.lb.order[0].consecTO.Load(); n != 0 {
		t.Fatalf("timeout run %d kept after a window where nobody answered", n)
	}
	// a times out 3 times in a row while b answers: held.
	timeoutsOn := func(a string, n int) {
		for got := 0; got < n; {
			r := h.pick()
			if h.addrOf(r) == a {
				r.Done(deadline)
				got++
			} else {
				r.Done(okDone)
			}
		}
	}
	timeoutsOn("a:1", 3)
	h.clock.advance(100 * time.Millisecond)
	h.tick()
	if !held() {
		t.Fatal("a:1 not held after 3 timeouts in a row while b:1 answered")
	}
	for range 50 {
		r := h.pick()
		if h.addrOf(r) != "b:1" {
			t.Fatal("picked the held endpoint")
		}
		r.Done(okDone)
	}
	// The hold (1 s) ends: one probe at a time.
	h.clock.advance(time.Second)
	h.tick()
	if held() {
		t.Fatal("still held after 1 s")
	}
	var probe grpcbalancer.PickResult
	for range 100 {
		r := h.pick()
		if h.addrOf(r) == "a:1" {
			if probe.SubConn != nil {
				t.Fatal("a second call went to the endpoint while its probe was in flight")
			}
			probe = r
			continue
		}
		r.Done(okDone)
	}
	if probe.SubConn == nil {
		t.Fatal("no probe call after the hold ended")
	}
	probe.Done(deadline) // the probe times out: held again, for 2 s
	h.clock.advance(100 * time.Millisecond)
	h.tick()
	if !held() {
		t.Fatal("not held again after the probe timed out")
	}
	h.lb.mu.Lock()
	until := h.lb.order[0].holdUntil - h.clock.now()
	h.lb.mu.Unlock()
	if until != 2*time.Second {
		t.Fatalf("second hold lasts %v; want 2s", until)
	}
	h.clock.advance(2 * time.Second)
	h.tick()
	for {
		r := h.pick()
		if h.addrOf(r) == "a:1" {
			r.Done(okDone) // the probe is answered
			break
		}
		r.Done(okDone)
	}
	h.clock.advance(100 * time.Millisecond)
	h.tick()
	h.lb.mu.Lock()
	probing, holds := h.lb.order[0].probing, h.lb.order[0].holds
	h.lb.mu.Unlock()
	if probing || holds != 0 {
		t.Fatalf("after an answered probe: probing %v, holds %d; want neither", probing, holds)
	}
	if len(h.obs.ejections("a:1")) != 0 {
		t.Fatal("timeouts ejected the endpoint")
	}
}
