package interceptors

import (
	"context"
	"strconv"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ticking is a context whose deadline comes closer by step at each
// Deadline call, as time passes between two readings of it.
type ticking struct {
	context.Context
	dl   time.Time
	step time.Duration
}

func (c *ticking) Deadline() (time.Time, bool) {
	d := c.dl
	c.dl = c.dl.Add(-c.step)
	return d, true
}

// TestShedderTrailerAndRetryInfoAgree: one shed, one decision: the
// pushback trailer is positive iff the details carry RetryInfo, even when
// the deadline crosses the pushback between the two readings of it (the
// interceptor decided the trailer and the details apart, each reading the
// clock).
func TestShedderTrailerAndRetryInfoAgree(t *testing.T) {
	s, err := NewShedder(WithShedderConfig(func() ShedderConfig {
		c := DefaultShedderConfig()
		c.Pushback = time.Second
		return c
	}()))
	if err != nil {
		t.Fatal(err)
	}
	st := s.serviceTime("/s/M")
	for _, step := range []time.Duration{0, 200 * time.Millisecond} {
		for _, left := range []time.Duration{900 * time.Millisecond, 1100 * time.Millisecond, 5 * time.Second} {
			ctx := &ticking{Context: context.Background(), dl: time.Now().Add(left), step: step}
			var md metadata.MD
			err := s.refuseWithTrailer(ctx, rLimit, "/s/M", st, func(m metadata.MD) error { md = m; return nil })
			var retry *errdetails.RetryInfo
			for _, d := range status.Convert(err).Details() {
				if r, ok := d.(*errdetails.RetryInfo); ok {
					retry = r
				}
			}
			got := md.Get(PushbackTrailer)
			if len(got) != 1 {
				t.Fatalf("left %v, step %v: trailer %q, want one value", left, step, got)
			}
			ms, _ := strconv.Atoi(got[0])
			if (ms > 0) != (retry != nil) {
				t.Errorf("left %v, step %v: trailer %q but RetryInfo %v: they must agree", left, step, got, retry)
			}
		}
	}
}
