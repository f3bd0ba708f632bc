package breaker_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

const (
	target = "dns:///backend:443"
	method = "/pkg.Svc/Method"
)

// recorder is a BreakerObserver that remembers what it saw.
type recorder struct {
	mu       sync.Mutex
	changes  []string
	rejected int
	onChange func() // runs inside BreakerStateChanged, to prove re-entrancy
}

func (r *recorder) BreakerStateChanged(_, key string, from, to telemetry.BreakerState) {
	r.mu.Lock()
	r.changes = append(r.changes, key+":"+from.String()+"->"+to.String())
	f := r.onChange
	r.mu.Unlock()
	if f != nil {
		f()
	}
}

func (r *recorder) BreakerRejected(string, string) {
	r.mu.Lock()
	r.rejected++
	r.mu.Unlock()
}

func (r *recorder) get() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.changes...), r.rejected
}

func newRegistry(t *testing.T, edit func(*breaker.Config), opts ...breaker.Option) *breaker.Registry {
	t.Helper()
	c := breaker.DefaultConfig()
	if edit != nil {
		edit(&c)
	}
	r, err := breaker.New(append([]breaker.Option{breaker.WithConfig(c)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func call(t *testing.T, b *breaker.Breaker, ctx context.Context, result error) error {
	t.Helper()
	tok, err := b.Allow()
	if err != nil {
		return err
	}
	tok.Done(ctx, result)
	return nil
}

func TestTripsAfterConsecutiveFailures(t *testing.T) {
	rec := &recorder{}
	r := newRegistry(t, func(c *breaker.Config) { c.ConsecutiveFailures = 3 }, breaker.WithObserver(rec))
	b := r.Get(target, method)
	ctx := context.Background()
	unavailable := status.Error(codes.Unavailable, "down")
	for i := range 2 {
		if err := call(t, b, ctx, unavailable); err != nil {
			t.Fatalf("call %d rejected: %v", i, err)
		}
	}
	// A success in between resets the run.
	if err := call(t, b, ctx, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := call(t, b, ctx, unavailable); err != nil {
			t.Fatalf("call %d rejected early: %v", i, err)
		}
	}
	if got := b.State(); got != breaker.StateOpen {
		t.Fatalf("State() = %v, want open", got)
	}
	_, err := b.Allow()
	if !errors.Is(err, breaker.ErrOpen) || status.Code(err) != codes.Unavailable {
		t.Fatalf("Allow() on open breaker = %v (code %v), want Unavailable wrapping ErrOpen", err, status.Code(err))
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, strconv.Quote(target+method)) || !strings.Contains(msg, "probing again in") {
		t.Errorf("message %q does not name the key and the next probe", msg)
	}
	changes, rejected := rec.get()
	if want := target + method + ":closed->open"; len(changes) != 1 || changes[0] != want {
		t.Errorf("observer saw %v, want [%s]", changes, want)
	}
	if rejected != 1 {
		t.Errorf("observer saw %d rejections, want 1", rejected)
	}
}

func TestClassification(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	live := context.Background()
	tests := []struct {
		name     string
		ctx      context.Context
		err      error
		codes    []codes.Code
		wantOpen bool
	}{
		{name: "ok", ctx: live, err: nil},
		{name: "unavailable", ctx: live, err: status.Error(codes.Unavailable, ""), wantOpen: true},
		{name: "internal", ctx: live, err: status.Error(codes.Internal, ""), wantOpen: true},
		{name: "unknown", ctx: live, err: status.Error(codes.Unknown, ""), wantOpen: true},
		{name: "data loss", ctx: live, err: status.Error(codes.DataLoss, ""), wantOpen: true},
		{name: "plain error is unknown", ctx: live, err: errors.New("boom"), wantOpen: true},
		{name: "deadline, caller alive", ctx: live, err: status.Error(codes.DeadlineExceeded, ""), wantOpen: true},
		{name: "deadline, caller expired", ctx: expired, err: status.Error(codes.DeadlineExceeded, "")},
		{name: "caller cancelled", ctx: cancelled, err: status.Error(codes.Canceled, "")},
		{name: "canceled code, caller alive", ctx: live, err: status.Error(codes.Canceled, "")},
		{name: "unavailable after caller cancelled", ctx: cancelled, err: status.Error(codes.Unavailable, "")},
		{name: "not found is an answer", ctx: live, err: status.Error(codes.NotFound, "")},
		{name: "resource exhausted by default", ctx: live, err: status.Error(codes.ResourceExhausted, "")},
		{name: "configured code", ctx: live, err: status.Error(codes.ResourceExhausted, ""), codes: []codes.Code{codes.ResourceExhausted}, wantOpen: true},
		{name: "configured away", ctx: live, err: status.Error(codes.Unavailable, ""), codes: []codes.Code{codes.Internal}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, func(c *breaker.Config) {
				c.ConsecutiveFailures = 1
				if tt.codes != nil {
					c.FailureCodes = tt.codes
				}
			})
			b := r.Get(target, method)
			if err := call(t, b, tt.ctx, tt.err); err != nil {
				t.Fatal(err)
			}
			if got := b.State() == breaker.StateOpen; got != tt.wantOpen {
				t.Errorf("after %v: open = %v, want %v", tt.err, got, tt.wantOpen)
			}
		})
	}
}

func TestFailureRatio(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) {
		c.ConsecutiveFailures = 0
		c.FailureRatio = 0.5
		c.MinimumRequests = 4
	})
	b := r.Get(target, method)
	fail := status.Error(codes.Unavailable, "")
	ctx := context.Background()
	for i, res := range []error{fail, nil, fail} {
		if err := call(t, b, ctx, res); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if b.State() != breaker.StateClosed {
		t.Fatal("opened before MinimumRequests")
	}
	if err := call(t, b, ctx, nil); err != nil { // 2 of 4 do not trip: the ratio is checked on failures
		t.Fatal(err)
	}
	if err := call(t, b, ctx, fail); err != nil { // 3 of 5 >= 0.5
		t.Fatal(err)
	}
	if b.State() != breaker.StateOpen {
		t.Fatal("not open at 3 failures of 5 with ratio 0.5")
	}
}

func TestRollingWindowForgets(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) {
		c.ConsecutiveFailures = 2
		c.Window = 40 * time.Millisecond
		c.WindowBuckets = 2
	})
	b := r.Get(target, method)
	ctx := context.Background()
	if err := call(t, b, ctx, status.Error(codes.Unavailable, "")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testutil.Eventually(t, time.Second, func() bool { return time.Since(start) > 60*time.Millisecond }, "time passes")
	if err := call(t, b, ctx, status.Error(codes.Unavailable, "")); err != nil {
		t.Fatal(err)
	}
	if b.State() != breaker.StateClosed {
		t.Fatal("a failure older than the window still counted")
	}
}

func TestHalfOpenProbeAndRecovery(t *testing.T) {
	rec := &recorder{}
	r := newRegistry(t, func(c *breaker.Config) {
		c.ConsecutiveFailures = 1
		c.OpenTimeout = 30 * time.Millisecond
		c.HalfOpenProbes = 2
	}, breaker.WithObserver(rec))
	b := r.Get(target, method)
	ctx := context.Background()
	fail := status.Error(codes.Unavailable, "")
	_ = call(t, b, ctx, fail)
	testutil.Eventually(t, 2*time.Second, func() bool { return b.State() == breaker.StateHalfOpen }, "breaker half-opens")

	// A failed probe opens it again.
	if err := call(t, b, ctx, fail); err != nil {
		t.Fatal(err)
	}
	if b.State() != breaker.StateOpen {
		t.Fatal("failed probe did not reopen")
	}
	testutil.Eventually(t, 2*time.Second, func() bool { return b.State() == breaker.StateHalfOpen }, "breaker half-opens again")

	// Two probes at once; a third is refused while they are in flight.
	p1, err1 := b.Allow()
	p2, err2 := b.Allow()
	if err1 != nil || err2 != nil {
		t.Fatalf("probes refused: %v, %v", err1, err2)
	}
	_, err := b.Allow()
	if !errors.Is(err, breaker.ErrOpen) || !strings.Contains(err.Error(), "half-open") {
		t.Fatalf("third concurrent call = %v, want ErrOpen naming half-open", err)
	}
	p1.Done(ctx, nil)
	if b.State() != breaker.StateHalfOpen {
		t.Fatal("closed after 1 of 2 probes")
	}
	p2.Done(ctx, nil)
	if b.State() != breaker.StateClosed {
		t.Fatal("not closed after both probes succeeded")
	}
	changes, _ := rec.get()
	k := target + method
	want := []string{k + ":closed->open", k + ":open->half_open", k + ":half_open->open", k + ":open->half_open", k + ":half_open->closed"}
	if strings.Join(changes, ",") != strings.Join(want, ",") {
		t.Errorf("observer saw\n%v\nwant\n%v", changes, want)
	}
}

func TestKeying(t *testing.T) {
	fail := status.Error(codes.Unavailable, "")
	tests := []struct {
		name     string
		opts     []breaker.Option
		scope    breaker.Scope
		wantKey  string
		wantOpen bool // is target+"/other.Svc/M" open after method failed?
	}{
		{name: "method scope", scope: breaker.ScopeMethod, wantKey: target + method},
		{name: "target scope", scope: breaker.ScopeTarget, wantKey: target, wantOpen: true},
		{name: "key func", scope: breaker.ScopeMethod, wantKey: "backend", wantOpen: true,
			opts: []breaker.Option{breaker.WithKeyFunc(func(string, string) string { return "backend" })}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRegistry(t, func(c *breaker.Config) { c.ConsecutiveFailures = 1; c.Scope = tt.scope }, tt.opts...)
			b := r.Get(target, method)
			if b.Key() != tt.wantKey {
				t.Errorf("Key() = %q, want %q", b.Key(), tt.wantKey)
			}
			_ = call(t, b, context.Background(), fail)
			if got := r.State(target, "/other.Svc/M") == breaker.StateOpen; got != tt.wantOpen {
				t.Errorf("other method open = %v, want %v", got, tt.wantOpen)
			}
			if r.Get(target, method) != b {
				t.Error("Get returned a different breaker for the same key")
			}
		})
	}
}

func TestRegistryIsBounded(t *testing.T) {
	for _, size := range []int{3, 1000} {
		r := newRegistry(t, func(c *breaker.Config) { c.MaxBreakers = size })
		for i := range 5000 {
			r.Get(target, "/svc/M"+strconv.Itoa(i))
		}
		// Shards round the bound up to a multiple of their count (at most 16).
		if n := r.Len(); n > size+15 || n < size-15 {
			t.Errorf("MaxBreakers %d: Len() = %d after 5000 keys", size, n)
		}
	}
}

func TestObserverMayCallBack(t *testing.T) {
	rec := &recorder{}
	var r *breaker.Registry
	rec.onChange = func() { _ = r.State(target, method); _ = r.Get(target, method).State() }
	r = newRegistry(t, func(c *breaker.Config) { c.ConsecutiveFailures = 1 }, breaker.WithObserver(rec))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = call(t, r.Get(target, method), context.Background(), status.Error(codes.Unavailable, ""))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("observer calling back into the registry deadlocked")
	}
	if changes, _ := rec.get(); len(changes) != 1 {
		t.Errorf("observer saw %v", changes)
	}
}

func TestConcurrentUse(t *testing.T) {
	rec := &recorder{}
	r := newRegistry(t, func(c *breaker.Config) { c.ConsecutiveFailures = 3; c.OpenTimeout = time.Millisecond }, breaker.WithObserver(rec))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				b := r.Get(target, "/svc/M"+strconv.Itoa(i%3))
				tok, err := b.Allow()
				if err != nil {
					continue
				}
				if (i+g)%2 == 0 {
					tok.Done(context.Background(), status.Error(codes.Unavailable, ""))
				} else {
					tok.Done(context.Background(), nil)
				}
			}
		}()
	}
	wg.Wait()
	// Every key's reported transitions must chain: each "from" is the previous "to".
	changes, _ := rec.get()
	last := map[string]string{}
	for _, c := range changes {
		i := strings.LastIndexByte(c, ':')
		key, move := c[:i], c[i+1:]
		from, to, _ := strings.Cut(move, "->")
		if prev, ok := last[key]; ok && prev != from {
			t.Fatalf("out-of-order report for %s: %s after ->%s", key, move, prev)
		}
		last[key] = to
	}
}

func TestAllowDoneAllocations(t *testing.T) {
	r := newRegistry(t, nil)
	ctx := context.Background()
	r.Get(target, method)
	allocs := testing.AllocsPerRun(1000, func() {
		tok, err := r.Get(target, method).Allow()
		if err != nil {
			t.Fatal(err)
		}
		tok.Done(ctx, nil)
	})
	// gobreaker's two-step Allow returns a closure: one allocation.
	if allocs > 1 {
		t.Errorf("Get+Allow+Done allocates %v times, want <= 1", allocs)
	}
}

// TestAbandonedHalfOpenProbeIsBounded is issue 13 item 3 (breaker half):
// a probe whose outcome never comes (an abandoned stream) counts as failed
// once ProbeTimeout has passed, so the breaker reopens and probes afresh
// instead of rejecting every call as "half-open" forever.
func TestAbandonedHalfOpenProbeIsBounded(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) {
		c.ConsecutiveFailures = 1
		c.OpenTimeout = 20 * time.Millisecond
		c.ProbeTimeout = 50 * time.Millisecond
	})
	b := r.Get(target, method)
	_ = call(t, b, context.Background(), status.Error(codes.Unavailable, ""))
	testutil.Eventually(t, 5*time.Second, func() bool { return b.State() == breaker.StateHalfOpen }, "breaker half-opens")
	if _, err := r.Allow(target, method); err != nil { // the probe, never reported
		t.Fatalf("probe refused: %v", err)
	}
	// Until the probe timeout, the next call is refused as half-open; after
	// it, the breaker reopens and later lets a new probe through.
	testutil.Eventually(t, 5*time.Second, func() bool {
		tok, err := r.Allow(target, method)
		if err == nil {
			tok.Done(context.Background(), nil)
			return true
		}
		return false
	}, "a new probe after the abandoned one timed out")
	if st := b.State(); st != breaker.StateClosed {
		t.Errorf("after a successful fresh probe the breaker is %v, want closed", st)
	}
}

// TestOpenBreakerSurvivesKeyFlood is issue 13 item 4 (breaker half): an
// open breaker is never evicted into a fresh closed one.
func TestOpenBreakerSurvivesKeyFlood(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) { c.ConsecutiveFailures = 1; c.MaxBreakers = 4; c.OpenTimeout = time.Hour })
	_ = call(t, r.Get(target, method), context.Background(), status.Error(codes.Unavailable, ""))
	for i := range 1000 {
		tok, err := r.Allow(target, "/flood/M"+strconv.Itoa(i))
		if err == nil {
			tok.Done(context.Background(), nil)
		}
	}
	if st := r.State(target, method); st != breaker.StateOpen {
		t.Fatalf("after a flood of keys the open breaker is %v", st)
	}
	if _, err := r.Allow(target, method); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("call after the flood: %v, want ErrOpen", err)
	}
}

// TestStatusCarriesTenant: a registry's snapshot names its tenant, and
// rejections name it too (issue 13 item 1).
func TestStatusCarriesTenant(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) { c.ConsecutiveFailures = 1 }, breaker.WithTenant("acme"))
	_ = call(t, r.Get(target, method), context.Background(), status.Error(codes.Unavailable, ""))
	_, err := r.Allow(target, method)
	if err == nil || !strings.Contains(err.Error(), `(tenant "acme") is open`) {
		t.Errorf("rejection %v does not name the tenant", err)
	}
	s := r.Snapshot()
	if len(s) != 1 || s[0].Tenant != "acme" || s[0].State != breaker.StateOpen || s[0].Rejections != 1 || s[0].Since.IsZero() || s[0].NextProbe.IsZero() {
		t.Errorf("Snapshot() = %+v", s)
	}
}
