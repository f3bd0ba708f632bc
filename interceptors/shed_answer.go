package interceptors

import (
	"context"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// answer is a shed's prebuilt status and error, valid while the number it
// carries (key) is current: a shed costs no status or proto building while
// the limit (or the method's rounded service time) stays the same.
type answer struct {
	key int64
	err error
}

// shedError is a shed's error: its status for the client, ErrShed (or
// context.DeadlineExceeded) for errors.Is.
type shedError struct {
	st    *status.Status
	cause error
}

func (e *shedError) Error() string {
	return "rpc error: code = " + e.st.Code().String() + " desc = " + e.st.Message()
}

// GRPCStatus returns the status sent to the client.
func (e *shedError) GRPCStatus() *status.Status { return e.st }

// Unwrap returns ErrShed, or context.DeadlineExceeded for a request that
// arrived after its deadline.
func (e *shedError) Unwrap() error { return e.cause }

// answer returns the error for a shed for r; retry is Shedder.retry's
// decision for its request (with RetryInfo, or, for a reason that pushes
// back, without: those answers are cached apart).
func (s *Shedder) answer(r reason, st *serviceTime, retry bool) error {
	var key int64
	slot := &s.answers[r]
	if !retry && s.pushesBack(r) {
		slot = &s.noRetryAnswers[r]
	}
	switch r {
	case rLimit, rSheddable:
		key = s.slots.limit.Load()
	case rDeadline:
		key = st.low.Load() / int64(100*time.Microsecond) // what the deadline was compared with
		slot = &st.ans
	case rStreamLimit:
		key = int64(s.cfg.StreamLimit)
	}
	if a := slot.Load(); a != nil && a.key == key {
		return a.err
	}
	a := &answer{key: key, err: s.buildAnswer(r, key, retry)}
	slot.Store(a)
	return a.err
}

// buildAnswer builds r's answer with the number key, and a RetryInfo of
// Pushback when retry says so.
func (s *Shedder) buildAnswer(r reason, key int64, retry bool) error {
	if r == rExpired {
		return leanAnswers[r]
	}
	itoa := func(n int64) string { return strconv.FormatInt(n, 10) }
	info := &errdetails.ErrorInfo{Domain: ErrorInfoDomain, Metadata: map[string]string{}}
	switch r {
	case rLimit:
		info.Reason = ErrorInfoReasonLimit
		info.Metadata["limit"] = itoa(key)
	case rSheddable:
		info.Reason = ErrorInfoReasonSheddable
		info.Metadata["limit"] = itoa(key)
		info.Metadata["sheddableLimit"] = itoa(max(int64(float64(key)*s.cfg.SheddableShare), 1))
	case rDeadline:
		info.Reason = ErrorInfoReasonDeadline
		info.Metadata["serviceTimeMs"] = strconv.FormatFloat(float64(key)/10, 'f', 1, 64)
	case rStreamLimit:
		info.Reason = ErrorInfoReasonStreamLimit
		info.Metadata["streamLimit"] = itoa(key)
	}
	st := status.New(codes.ResourceExhausted, messages[r])
	if retry {
		if d, err := st.WithDetails(info, &errdetails.RetryInfo{RetryDelay: durationpb.New(s.cfg.Pushback)}); err == nil {
			st = d
		}
	} else if d, err := st.WithDetails(info); err == nil {
		st = d
	}
	return &shedError{st: st, cause: ErrShed}
}

// messages are the reasons' status messages.
var messages = [numReasons]string{
	rLimit:       MessageShedLimit,
	rSheddable:   MessageShedSheddable,
	rDeadline:    MessageShedDeadline,
	rStreamLimit: MessageShedStreamLimit,
	rExpired:     MessageExpired,
}

// leanAnswers are the reasons' answers without details: the code and the
// stable message, the same for every Shedder (nothing in them is its
// own). An expired request's answer is always this one; the tap sends
// them for the other reasons too once its details budget is spent
// (tapDetails).
var leanAnswers = func() (a [numReasons]error) {
	for r := range numReasons {
		a[r] = &shedError{st: status.New(codes.ResourceExhausted, messages[r]), cause: ErrShed}
	}
	a[rExpired] = &shedError{st: status.New(codes.DeadlineExceeded, MessageExpired), cause: context.DeadlineExceeded}
	return a
}()

// tapDetailsPerSecond bounds the tap's answers with status details each
// second; its answers beyond carry the code and the stable message only.
//
// grpc-go marshals and base64-encodes the details again for every answer
// the tap gives (writeEarlyAbort in internal/transport, grpc-go 1.85):
// that was a fifth of the tap's CPU per shed call (BenchmarkShedCPU, tap
// against tap-details), and the tap exists to shed cheaply under a flood,
// where every answer would carry the same numbers, which the metrics and
// the debug page show anyway. Up to this many sheds a second, every
// answer has them, at about 6 ms of CPU a second at most. The interceptor
// path's answers always carry them: grpc-go marshals them there too, but
// that path already costs twice the tap's.
const tapDetailsPerSecond = 1000

// tapDetails reports whether the tap's answer at now (nanoseconds since
// the Shedder's epoch) may carry status details: fewer than
// tapDetailsPerSecond of its answers did in the current second. A spent
// budget is read without a write, so a flood of sheds does not contend on
// it.
func (s *Shedder) tapDetails(now int64) bool {
	e := uint64(now / int64(time.Second))
	if v := s.detailed.Load(); v>>countBits == e && v&countMask >= s.detailsMost {
		return false
	}
	was, ok := bump(&s.detailed, e)
	return ok && (was>>countBits != e || was&countMask < s.detailsMost)
}

// maybeLog writes the one-line summary when LogInterval has passed since
// the last one and something was shed since.
func (s *Shedder) maybeLog() {
	if s.cfg.LogInterval <= 0 {
		return
	}
	now := s.now()
	next := s.nextLog.Load()
	if now < next || !s.logMu.TryLock() {
		return
	}
	defer s.logMu.Unlock()
	if s.nextLog.Load() != next {
		return // another request just logged
	}
	var total int64
	var b strings.Builder
	for r := range numReasons {
		n := s.shed[r].Load()
		d := n - s.logged[r]
		s.logged[r] = n
		if d == 0 {
			continue
		}
		total += d
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(r.String() + "=" + strconv.FormatInt(d, 10))
	}
	since := time.Duration(now - s.loggedAt)
	s.loggedAt = now
	if total == 0 {
		s.nextLog.Store(0) // nothing shed: the next shed logs at once
		return
	}
	s.nextLog.Store(now + int64(s.cfg.LogInterval))
	s.logf("interceptors: shed %d requests in the last %v (by reason: %s); limit %d, %d in flight, %d streams open",
		total, since.Round(time.Millisecond), b.String(), s.slots.limit.Load(), s.slots.inflight.Load(), s.streams.Load())
}
