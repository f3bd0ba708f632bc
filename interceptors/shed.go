package interceptors

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/rpcerr"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ShedderOption configures NewShedder.
type ShedderOption interface {
	applyShedder(*shedderOptions)
}

type shedderOptionFunc func(*shedderOptions)

func (f shedderOptionFunc) applyShedder(o *shedderOptions) { f(o) }

type shedderOptions struct {
	cfg ShedderConfig
	obs telemetry.LimiterObserver
}

// WithShedderConfig replaces the whole Shedder configuration; start from
// DefaultShedderConfig. NewShedder validates it.
func WithShedderConfig(c ShedderConfig) ShedderOption {
	return shedderOptionFunc(func(o *shedderOptions) { o.cfg = c })
}

// WithShedderObserver sends limit changes (key ShedderKey) and shed
// requests (key: the full method) to obs. Default telemetry.Nop.
func WithShedderObserver(obs telemetry.LimiterObserver) ShedderOption {
	return shedderOptionFunc(func(o *shedderOptions) { o.obs = obs })
}

// ShedderKey is the key under which a Shedder reports its limit changes.
const ShedderKey = "server"

// healthPrefix marks the methods a Shedder never sheds.
const healthPrefix = "/grpc.health.v1.Health/"

// maxTrackedMethods bounds the per-method service-time table; methods past
// it share one entry.
const maxTrackedMethods = 1024

// Shedder is server-side load shedding. It sheds at once, with
// codes.ResourceExhausted:
//   - every request beyond the in-flight limit (fixed or AIMD), and
//   - every request whose remaining deadline is shorter than its method's
//     recent service time (an exponentially weighted moving average of
//     successful calls, once MinSamples are measured): it would time out
//     anyway, after using capacity that others need.
//
// grpc.health.v1.Health is never shed and not counted. A stream is one
// request from its start to its handler's return. Safe for concurrent use;
// it starts no goroutines.
type Shedder struct {
	cfg ShedderConfig
	lim *limiter
	obs telemetry.LimiterObserver

	mu      sync.Mutex                              // serialises writers of methods
	methods atomic.Pointer[map[string]*serviceTime] // copy on write
	other   serviceTime                             // methods beyond maxTrackedMethods
}

// serviceTime is a method's recent service time: an EWMA with weight 1/8.
type serviceTime struct {
	ewma    atomic.Int64 // nanoseconds
	samples atomic.Int64
}

// decay lowers the estimate by 1/64 after a request was shed for it. Only
// admitted, successful requests measure the service time, so without this
// an estimate inflated by an overload would shed every request whose
// deadline is below it forever, and never be measured again: a method
// shed for every request now sees its estimate fall until requests get
// through and re-measure it (about 44 sheds halve it).
func (s *serviceTime) decay() {
	for {
		old := s.ewma.Load()
		if s.ewma.CompareAndSwap(old, old-old/64) {
			return
		}
	}
}

func (s *serviceTime) observe(d time.Duration) {
	if s.samples.Add(1) == 1 {
		s.ewma.Store(int64(d))
		return
	}
	for {
		old := s.ewma.Load()
		next := old + (int64(d)-old)/8
		if s.ewma.CompareAndSwap(old, next) {
			return
		}
	}
}

// NewShedder returns a Shedder (defaults: DefaultShedderConfig,
// telemetry.Nop) or a *ConfigError.
func NewShedder(opts ...ShedderOption) (*Shedder, error) {
	o := shedderOptions{cfg: DefaultShedderConfig(), obs: telemetry.Nop{}}
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("interceptors: NewShedder: option %d is nil", i)
		}
		opt.applyShedder(&o)
	}
	if o.obs == nil {
		return nil, errors.New("interceptors: WithShedderObserver(nil); pass telemetry.Nop{} to observe nothing")
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Shedder{cfg: o.cfg, obs: o.obs, lim: newLimiter(ShedderKey, newAlgo(o.cfg.LimitConfig, 0, 0, o.obs))}
	m := map[string]*serviceTime{}
	s.methods.Store(&m)
	return s, nil
}

// InFlight returns the current in-flight limit and how many requests are
// in flight.
func (s *Shedder) InFlight() (limit, inFlight int) {
	return int(s.lim.limit.Load()), int(s.lim.inflight.Load())
}

func (s *Shedder) serviceTime(method string) *serviceTime {
	if st, ok := (*s.methods.Load())[method]; ok {
		return st
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.methods.Load()
	if st, ok := old[method]; ok {
		return st
	}
	if len(old) >= maxTrackedMethods {
		return &s.other
	}
	m := make(map[string]*serviceTime, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	st := &serviceTime{}
	m[method] = st
	s.methods.Store(&m)
	return st
}

// admit decides on a request: nil and the method's service time, or the
// shedding error.
func (s *Shedder) admit(ctx context.Context, method string) (*serviceTime, error) {
	st := s.serviceTime(method)
	if dl, ok := ctx.Deadline(); ok && st.samples.Load() >= int64(s.cfg.MinSamples) {
		if left, recent := time.Until(dl), time.Duration(st.ewma.Load()); left < recent {
			st.decay()
			s.obs.LimiterRejected(method, ReasonDeadline)
			return nil, rpcerr.New(codes.ResourceExhausted, "interceptors: shed "+strconv.Quote(method)+": "+
				left.Round(time.Microsecond).String()+" left before the deadline, recent service time "+
				recent.Round(time.Microsecond).String(), ErrShed)
		}
	}
	if !s.lim.tryAcquire() {
		s.obs.LimiterRejected(method, ReasonLimit)
		return nil, rpcerr.New(codes.ResourceExhausted, "interceptors: shed "+strconv.Quote(method)+
			": server at its in-flight limit of "+strconv.FormatInt(s.lim.limit.Load(), 10), ErrShed)
	}
	return st, nil
}

func (s *Shedder) done(ctx context.Context, st *serviceTime, err error, took time.Duration, stream bool) {
	o := outcomeOK
	switch {
	case err == nil:
		if !stream {
			st.observe(took)
		}
	case ctx.Err() == context.Canceled:
		o = outcomeIgnored
	case ctx.Err() == context.DeadlineExceeded:
		o = outcomeDrop
	default:
		switch status.Code(err) {
		case codes.ResourceExhausted, codes.DeadlineExceeded:
			o = outcomeDrop
		}
	}
	if stream {
		took = 0 // a stream's lifetime is not a service time
	}
	s.lim.release(o, took)
}

// UnaryServerInterceptor returns the Shedder as a unary server interceptor.
func (s *Shedder) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if strings.HasPrefix(info.FullMethod, healthPrefix) {
			return handler(ctx, req)
		}
		st, err := s.admit(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		released := false
		defer func() {
			if !released { // handler panicked
				s.lim.release(outcomeIgnored, 0)
			}
		}()
		resp, err := handler(ctx, req)
		released = true
		s.done(ctx, st, err, time.Since(start), false)
		return resp, err
	}
}

// StreamServerInterceptor returns the Shedder as a stream server
// interceptor. Streams count against the in-flight limit; their deadline
// is compared with the method's recent stream lifetime.
func (s *Shedder) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if strings.HasPrefix(info.FullMethod, healthPrefix) {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		st, err := s.admit(ctx, info.FullMethod)
		if err != nil {
			return err
		}
		start := time.Now()
		released := false
		defer func() {
			if !released {
				s.lim.release(outcomeIgnored, 0)
			}
		}()
		err = handler(srv, ss)
		released = true
		if err == nil {
			st.observe(time.Since(start))
		}
		s.done(ctx, st, err, 0, true)
		return err
	}
}
