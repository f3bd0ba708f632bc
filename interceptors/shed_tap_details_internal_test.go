package interceptors

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestTapDetailsBudget: the tap's answers carry details exactly
// detailsMost times in a second, and again from the next second on.
func TestTapDetailsBudget(t *testing.T) {
	s, err := NewShedder()
	if err != nil {
		t.Fatal(err)
	}
	s.detailsMost = 3
	sec := int64(time.Second)
	for i, c := range []struct {
		now  int64
		want bool
	}{
		{0, true}, {1, true}, {sec - 1, true}, {sec - 1, false}, {10, false}, // three in the first second
		{sec, true}, {sec + 5, true}, {2*sec - 1, true}, {2*sec - 1, false}, // three again in the next
		{5 * sec, true}, // a second skipped: a new budget
	} {
		if got := s.tapDetails(c.now); got != c.want {
			t.Fatalf("answer %d at %v: details = %v, want %v", i, time.Duration(c.now), got, c.want)
		}
	}
}

// TestTapDetailsBudgetConcurrent: many readers' goroutines sharing the
// budget give details to exactly detailsMost answers in a second.
func TestTapDetailsBudgetConcurrent(t *testing.T) {
	s, err := NewShedder()
	if err != nil {
		t.Fatal(err)
	}
	s.detailsMost = 100
	var detailed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if s.tapDetails(int64(7 * time.Second)) {
					detailed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := detailed.Load(); n != 100 {
		t.Fatalf("%d answers of 8,000 in one second had details, want 100", n)
	}
}

// TestTapDetailsBudgetNotSpentOnExpired: an expired request's answer
// never carries details, so it takes nothing of the second's budget: a
// flood of expired requests left the limit's sheds in that second without
// their ErrorInfo.
func TestTapDetailsBudgetNotSpentOnExpired(t *testing.T) {
	s, err := NewShedder()
	if err != nil {
		t.Fatal(err)
	}
	s.detailsMost = 2
	ctx := context.Background()
	for range 5 {
		if _, err := s.tapRefuse(ctx, rExpired, "/s/M", nil, 0); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("expired answer = %v, want DeadlineExceeded", err)
		}
	}
	for i := range 2 {
		_, err := s.tapRefuse(ctx, rLimit, "/s/M", nil, 1)
		if d := status.Convert(err).Details(); len(d) == 0 {
			t.Fatalf("limit shed %d after 5 expired answers in the second: no details, want ErrorInfo (budget 2)", i)
		}
	}
	if n := s.shed[rExpired].Load(); n != 5 {
		t.Fatalf("%d expired answers counted, want 5", n)
	}
}

// TestTapDetailsBudgetStaleClock: a reader whose clock reading is from
// the second before (read just before the boundary, answered just after
// another reader started the new second) must not start the budget again:
// bump counted it from zero in the older second, and the new second's
// next answer, seeing an older second, counted from zero again, so each
// such reader gave the second another full budget.
func TestTapDetailsBudgetStaleClock(t *testing.T) {
	s, err := NewShedder()
	if err != nil {
		t.Fatal(err)
	}
	s.detailsMost = 2
	sec := int64(time.Second)
	for i := range 2 {
		if !s.tapDetails(5 * sec) {
			t.Fatalf("answer %d in second 5: no details within the budget of 2", i)
		}
	}
	s.tapDetails(5*sec - 1) // a reading from second 4, late
	for i := range 3 {
		if s.tapDetails(5 * sec) {
			t.Fatalf("answer %d in second 5 after its budget of 2, and a late reader from second 4: details", 3+i)
		}
	}
}

// TestBumpKeepsTheLaterEpoch: bump never takes a bucket back to an
// earlier epoch; a late reader's count is refused instead.
func TestBumpKeepsTheLaterEpoch(t *testing.T) {
	var b atomic.Uint64
	for range 3 {
		bump(&b, 7)
	}
	if was, ok := bump(&b, 6); ok || was != 7<<countBits|3 {
		t.Fatalf("bump(6) on epoch 7's 3 = %#x, %v; want %#x, false", was, ok, uint64(7<<countBits|3))
	}
	if v := b.Load(); v != 7<<countBits|3 {
		t.Fatalf("bucket after a late bump = %#x, want epoch 7's 3 (%#x)", v, uint64(7<<countBits|3))
	}
}

// TestTapLeanAnswers: beyond the budget, each reason's tap answer has its
// code, its stable message, no details and its cause, and is counted once.
func TestTapLeanAnswers(t *testing.T) {
	s, err := NewShedder(WithShedderConfig(func() ShedderConfig { c := DefaultShedderConfig(); c.Pushback = 20 * time.Millisecond; return c }()))
	if err != nil {
		t.Fatal(err)
	}
	s.detailsMost = 0
	for r := range numReasons {
		code, cause := codes.ResourceExhausted, ErrShed
		if r == rExpired {
			code, cause = codes.DeadlineExceeded, context.DeadlineExceeded
		}
		_, err := s.tapRefuse(context.Background(), r, "/s/M", &serviceTime{}, 0)
		st := status.Convert(err)
		if st.Code() != code || st.Message() != messages[r] || len(st.Details()) != 0 || !errors.Is(err, cause) {
			t.Errorf("%v: lean answer %v (details %v), want %v %q, none, cause %v", r, err, st.Details(), code, messages[r], cause)
		}
		if n := s.shed[r].Load(); n != 1 {
			t.Errorf("%v: counted %d times, want 1", r, n)
		}
	}
}
