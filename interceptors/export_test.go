package interceptors

import "time"

// SetShedderLogf replaces where s writes its summary line (tests only).
func SetShedderLogf(s *Shedder, f func(format string, args ...any)) { s.logf = f }

// SetShedderServiceTime sets the service time s knows for method, as if
// samples calls had measured d (tests only: it spares them real work).
func SetShedderServiceTime(s *Shedder, method string, d time.Duration, samples int) {
	st := s.serviceTime(method)
	st.ewma.Store(int64(d))
	st.low.Store(int64(d))
	st.samples.Store(int64(samples))
}

// ShedderPasses returns how many requests the tap let through at the
// limit are still on their way to the unary interceptor: to wait for a
// slot, and retry attempts (tests only: a count that never returns to 0
// is a leak).
func ShedderPasses(s *Shedder) (waiting, retries int64) { return s.passed.Load(), s.retries.Load() }

// SetShedderServedTime sets the mean service time of the unary calls s
// served, over all methods (tests only).
func SetShedderServedTime(s *Shedder, d time.Duration) { s.served.Store(int64(d)) }

// SetShedderReserveFor sets how long the tap's reservation of a request
// it admitted counts at most (tests only: a test that checks what the tap
// admits must not depend on how fast a loaded machine hands a request on
// to the interceptor). Call it before the Shedder serves.
func SetShedderReserveFor(s *Shedder, d time.Duration) { s.reserved = newReservations(d) }

// SetShedderHeldMost sets how many of the tap's answers grpc-go may hold
// until their deadline before the tap leaves requests with deadlines to
// the interceptor (tests only). Call it before the Shedder serves.
func SetShedderHeldMost(s *Shedder, n int64) { s.held.most = n }

// ShedderDeferred returns how many requests the tap left to the
// interceptor, since its answer would be held, are still on their way
// there (tests only: a count that never returns to 0 is a leak).
func ShedderDeferred(s *Shedder) int64 { return s.deferred.Load() }

// SetShedderTapDetails sets how many of the tap's answers each second
// carry status details (tests only). Call it before the Shedder serves.
func SetShedderTapDetails(s *Shedder, n uint64) { s.detailsMost = n }
