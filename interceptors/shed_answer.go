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
		return &shedError{st: status.New(codes.DeadlineExceeded, MessageExpired), cause: context.DeadlineExceeded}
	}
	itoa := func(n int64) string { return strconv.FormatInt(n, 10) }
	var msg string
	info := &errdetails.ErrorInfo{Domain: ErrorInfoDomain, Metadata: map[string]string{}}
	switch r {
	case rLimit:
		msg, info.Reason = MessageShedLimit, ErrorInfoReasonLimit
		info.Metadata["limit"] = itoa(key)
	case rSheddable:
		msg, info.Reason = MessageShedSheddable, ErrorInfoReasonSheddable
		info.Metadata["limit"] = itoa(key)
		info.Metadata["sheddableLimit"] = itoa(max(int64(float64(key)*s.cfg.SheddableShare), 1))
	case rDeadline:
		msg, info.Reason = MessageShedDeadline, ErrorInfoReasonDeadline
		info.Metadata["serviceTimeMs"] = strconv.FormatFloat(float64(key)/10, 'f', 1, 64)
	case rStreamLimit:
		msg, info.Reason = MessageShedStreamLimit, ErrorInfoReasonStreamLimit
		info.Metadata["streamLimit"] = itoa(key)
	}
	st := status.New(codes.ResourceExhausted, msg)
	if retry {
		if d, err := st.WithDetails(info, &errdetails.RetryInfo{RetryDelay: durationpb.New(s.cfg.Pushback)}); err == nil {
			st = d
		}
	} else if d, err := st.WithDetails(info); err == nil {
		st = d
	}
	return &shedError{st: st, cause: ErrShed}
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
