package breaker_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestOverflowBreakerRecoversAfterOutage: a burst of failures over many
// methods (a backend outage, or a caller trying random method names)
// opens more breakers than MaxBreakers, and the overflow breaker too.
// The open breakers stay (they are never evicted into closed ones) even
// with no call since, but long after the outage a method that never
// failed is not failed fast: the overflow breaker it shares probes and
// closes like any other.
func TestOverflowBreakerRecoversAfterOutage(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) {
		c.ConsecutiveFailures = 1
		c.MaxBreakers = 8
		c.OpenTimeout = 20 * time.Millisecond
		c.Window = 40 * time.Millisecond
		c.WindowBuckets = 1
	})
	fail := status.Error(codes.Unavailable, "outage")
	for i := range 64 { // the outage: every key trips, the overflow too
		if tok, err := r.Allow(target, "/outage/M"+strconv.Itoa(i)); err == nil {
			tok.Done(context.Background(), fail)
		}
	}
	// Long after: nothing called the outage keys since.
	stale := time.Now().Add(200 * time.Millisecond)
	testutil.Eventually(t, 5*time.Second, func() bool { return time.Now().After(stale) }, "the outage to be long past")
	for i := range 8 {
		m := "/healthy/M" + strconv.Itoa(i)
		tok, err := r.Allow(target, m)
		if errors.Is(err, breaker.ErrOpen) {
			t.Fatalf("%s never failed, long after the outage: %v", m, err)
		}
		if err != nil {
			t.Fatal(err)
		}
		tok.Done(context.Background(), nil)
	}
}

// TestCancelledProbeFreesTheHalfOpenSlot: the caller cancelling the one
// half-open probe says nothing about the backend; the next call must be
// let through as a new probe, not refused until the probe timeout.
func TestCancelledProbeFreesTheHalfOpenSlot(t *testing.T) {
	r := newRegistry(t, func(c *breaker.Config) {
		c.ConsecutiveFailures = 1
		c.OpenTimeout = 10 * time.Millisecond
		c.ProbeTimeout = time.Hour
	})
	b := r.Get(target, method)
	_ = call(t, b, context.Background(), status.Error(codes.Unavailable, ""))
	testutil.Eventually(t, 5*time.Second, func() bool { return b.State() == breaker.StateHalfOpen }, "breaker half-opens")
	tok, err := r.Allow(target, method)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tok.Done(ctx, status.FromContextError(ctx.Err()).Err())
	tok, err = r.Allow(target, method)
	if err != nil {
		t.Fatalf("next call after a cancelled probe: %v, want a new probe", err)
	}
	tok.Done(context.Background(), nil)
	if st := b.State(); st != breaker.StateClosed {
		t.Fatalf("after a successful probe: %v, want closed", st)
	}
}
