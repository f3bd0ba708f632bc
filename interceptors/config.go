package interceptors

import (
	"encoding/json"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/internal/duration"
	"github.com/grpcreuse/grpcreuse/internal/jsonfield"
)

// Scope says what one client limiter covers. It is breaker.Scope, so one
// Scope means one thing everywhere: its zero value is ScopeMethod. The
// limiter's default (DefaultLimiterConfig) is ScopeTarget.
type Scope = breaker.Scope

const (
	// ScopeTarget keeps one limiter per target: the concurrency a backend
	// (or a connection's MaxConcurrentStreams) can take. The limiter's
	// default.
	ScopeTarget = breaker.ScopeTarget
	// ScopeMethod keeps one limiter per target and full method name.
	ScopeMethod = breaker.ScopeMethod
)

// Algorithm chooses how a concurrency limit moves.
type Algorithm int

const (
	// Fixed keeps the limit at LimitConfig.Limit. The default.
	Fixed Algorithm = iota
	// AIMD adapts the limit: additive increase by one after a success
	// while at least half the limit is in use, multiplicative decrease by
	// BackoffRatio after a drop. For a client Limiter a drop is a call
	// that ended ResourceExhausted, Unavailable or DeadlineExceeded (not
	// by its caller's own deadline or cancellation), or took longer than
	// LatencyThreshold; a Shedder counts only what the server measured
	// (see ShedderConfig). It is Netflix concurrency-limits' AIMDLimit:
	// https://github.com/Netflix/concurrency-limits/blob/main/concurrency-limits-core/src/main/java/com/netflix/concurrency/limits/limit/AIMDLimit.java
	AIMD
)

// String returns "fixed" or "aimd", the spelling of the JSON policy.
func (a Algorithm) String() string {
	switch a {
	case Fixed:
		return "fixed"
	case AIMD:
		return "aimd"
	}
	return "Algorithm(" + strconv.Itoa(int(a)) + ")"
}

// LimitConfig is how a concurrency limit is set: fixed, or adaptive. It
// is shared by client limiters (LimiterConfig) and server shedding
// (ShedderConfig). JSON names are the field names in lowerCamelCase.
type LimitConfig struct {
	// Algorithm is Fixed (default) or AIMD.
	Algorithm Algorithm
	// Limit is the fixed limit, or the starting limit of AIMD (and of a
	// Shedder's Adaptive limit): how many calls may be in flight at once.
	// Default 100.
	Limit int
	// MinLimit and MaxLimit bound AIMD's limit, and a Shedder's Adaptive
	// one. Defaults 1 and 1000. Ignored by Fixed without Adaptive.
	MinLimit, MaxLimit int
	// BackoffRatio multiplies AIMD's limit after a drop; between 0 and 1
	// exclusive. Default 0.9.
	BackoffRatio float64
	// LatencyThreshold makes AIMD count a call that took longer as a drop.
	// Default 0: latency is not used.
	LatencyThreshold time.Duration
}

// DefaultLimitConfig returns the defaults documented on LimitConfig.
func DefaultLimitConfig() LimitConfig {
	return LimitConfig{Algorithm: Fixed, Limit: 100, MinLimit: 1, MaxLimit: 1000, BackoffRatio: 0.9}
}

// LimiterConfig configures a client Limiter: the limit, its wait queue and
// how calls are keyed.
type LimiterConfig struct {
	// LimitConfig is the limit of each key: fixed or AIMD.
	LimitConfig
	// Scope says whether limits are kept per target (default) or per
	// target+method. WithLimiterKeyFunc overrides it.
	Scope Scope
	// MaxQueued is how many calls may wait for a slot; more are rejected
	// at once. Default 64; 0 rejects at once whenever the limit is reached.
	MaxQueued int
	// MaxWait is the longest a call waits in the queue; a call never waits
	// past its own deadline. Default 100ms.
	MaxWait time.Duration
	// MaxKeys bounds how many keys have a limiter; beyond it the least
	// recently used is dropped. Default 1024.
	MaxKeys int
}

// DefaultLimiterConfig returns the defaults documented on LimiterConfig.
func DefaultLimiterConfig() LimiterConfig {
	return LimiterConfig{LimitConfig: DefaultLimitConfig(), Scope: ScopeTarget, MaxQueued: 64,
		MaxWait: 100 * time.Millisecond, MaxKeys: 1024}
}

// ShedderConfig configures server load shedding (Shedder). Start from
// DefaultShedderConfig.
type ShedderConfig struct {
	// LimitConfig is the in-flight limit of unary calls, all methods
	// together but grpc.health.v1.Health's and Exempt's; beyond it
	// requests are shed. With Algorithm AIMD the Shedder counts as a drop
	// only what the server itself measured: a handler that ran longer than
	// LatencyThreshold, or that answered with a shed (ResourceExhausted
	// from a Shedder or Limiter further in: its error, its ErrorInfo, or
	// the stable Message* text a tap's lean answer carries alone)
	// while its caller still waited. Other ResourceExhausted answers, such
	// as a caller's quota, are not the server's load. A call cut short by
	// its caller's deadline or cancellation never raises the limit, and
	// lowers it only if its handler still ran longer than
	// LatencyThreshold. Ignored when Adaptive is set, except Limit,
	// MinLimit and MaxLimit.
	LimitConfig
	// Adaptive makes the unary in-flight limit follow the server's own
	// measured handler time: a latency gradient in the spirit of Envoy's
	// adaptive-concurrency filter and Netflix's Gradient2. It starts at
	// Limit and stays within MinLimit and MaxLimit. No request waits for
	// a slot (MaxWait) with it. Default false; requires Algorithm Fixed.
	// docs/overload.md has the tests and numbers behind each rule.
	//
	// Each Window, the window's mean handler time is compared with its
	// baseline: the mean its mix of methods would have at each method's
	// own baseline, so a mix that moves toward a slower method is not
	// taken for queueing. The gradient is Tolerance × baseline / mean. At
	// 1 or above, the limit grows by max(1, √limit/4) while at least half
	// of it is in use. From 0.9 to 1 it holds. Below 0.9 it shrinks to the
	// window's peak in flight times the gradient, at most halving.
	//
	// A shrink has two floors. One is the concurrency the server served
	// at baseline latency: latency that rises without more calls in
	// flight is a starved CPU, not a queue. That floor decays by 1/256 a
	// window while it holds the limit up. The other is the window's
	// throughput times the baseline (Little's law).
	//
	// A method's baseline is its lowest window mean. Between probes it
	// rises only in windows that ran at no more than the probe's
	// concurrency. A probe re-measures every baseline at 3 calls in
	// flight (or the limit if lower, at least MinLimit; Envoy's minRTT),
	// shedding what exceeds it: its calls are those admitted during it
	// (at least a Window and MinSamples calls), each followed to its end
	// (at most 8 Windows), so a method's long calls count as much as its
	// fast ones, and it sets each baseline to their mean plus two
	// standard errors. It comes after the first window, every 60s, and
	// when MinSamples calls were cut short before any window closed. A
	// probe ends 8 Windows in whatever its calls do: on what it measured,
	// or, having measured nothing, giving up.
	//
	// Two rules keep noise and clients from moving it. A window moves a
	// baseline or the limit down only by what is beyond two standard
	// errors of its mean: a method's own spread is not queueing. A call cut short by its caller's
	// deadline or cancellation counts only if it took more than Tolerance
	// × its method's baseline, and then as a queued call: short client
	// deadlines cannot move the limit.
	Adaptive bool
	// Tolerance is how much slower than the baseline a window may be
	// before the adaptive limit stops growing (it shrinks below a gradient
	// of 0.9, see Adaptive); between 1 and 100. Default 1.25 (Envoy's
	// adaptive-concurrency buffer of 25%).
	Tolerance float64
	// Window is how often the adaptive limit moves: a window closes after
	// this long and at least MinSamples calls. A window whose calls
	// clearly queued (their mean over Tolerance × baseline / 0.75) closes
	// as soon as it has MinSamples calls: waiting out its time would only
	// lengthen the queue, as at an overload's onset. A probe's window never
	// closes early. Default 25ms.
	Window time.Duration
	// MinSamples is how many successful calls of a method must be measured
	// before requests whose remaining deadline is shorter than its recent
	// service time (the time under which one in ten of its recent
	// successful calls ended: not the mean, which a few slow calls raise
	// above what most calls take) are shed, and before any of its
	// requests may wait for a slot (MaxWait). It is also the fewest calls
	// an adaptive Window closes with. Default 10.
	MinSamples int
	// StreamLimit is how many streams (client-, server- or bidi-streaming
	// calls) may be open at once, counted apart from unary calls: a
	// stream's lifetime is the client's to choose, so idle long-lived
	// streams never take unary calls' slots, and their lifetime never
	// feeds a service time. Default 1000.
	StreamLimit int
	// Criticality is the criticality of requests that carry no
	// CriticalityHeader, by full method ("/pkg.Service/Method") or by
	// service ("/pkg.Service/"); the method's entry wins. Requests of other
	// methods are Critical. Default empty.
	Criticality map[string]Criticality
	// Exempt lists methods ("/pkg.Service/Method") and services
	// ("/pkg.Service/") that are never shed and never counted, as
	// grpc.health.v1.Health always is: long polls and watches a client
	// holds open by design, admin services (channelz, reflection), whose
	// calls would otherwise take slots from the work the limit protects or
	// be shed at the moment an operator needs them. Their callers get
	// plain grpc-go behaviour. A service's entry covers every method name
	// a client sends under it: grpc-go answers a name the server does not
	// serve with Unimplemented before any interceptor, except on a server
	// with grpc.UnknownServiceHandler (a proxy), which hands it to that
	// handler, unshed: there, list the methods. Default empty.
	Exempt []string
	// SheddableShare is the share of the in-flight limit that Sheddable
	// requests may use: they are shed once that many calls are in flight,
	// so critical work keeps the rest. Between 0 (exclusive) and 1.
	// Default 0.75.
	SheddableShare float64
	// MaxWait is how long, at most, a critical unary request that finds
	// a fixed in-flight limit in use waits for a slot instead of being
	// shed at once. A slot freed while requests wait goes straight to one
	// of them, so the server's slots do not stand idle
	// between one call's end and the next request's arrival. The wait
	// bridges that moment; it is not a queue: it is at most the time in
	// which one of the limit's slots frees on average at the recent
	// service time of the calls served, all methods (service time /
	// limit), never so long that less than its method's service time
	// would be left of the request's deadline, and
	// one request waits at a time (within one wait one slot frees on
	// average: a second waiter would only be shed later, and past the tap
	// path's cheap rejection); the others are shed at once, by the tap
	// when it is installed. No request waits before
	// its method's service time is measured (MinSamples), when it is
	// Sheddable, or with an AIMD or Adaptive limit (they keep their own
	// headroom above what the server serves at once). One whose wait ends
	// without a slot is shed (ReasonLimit). 0 sheds at once. Default 50ms.
	MaxWait time.Duration
	// Pushback is the grpc-retry-pushback-ms trailer sent with a shed on
	// the interceptor path (grpc-go clients with a retry policy wait this
	// long before their next attempt) and the RetryInfo detail of every
	// shed, except ReasonDeadline's (the same deadline would not do
	// better) and ReasonExpired's. The trailer carries whole milliseconds
	// (at least 1: 1.5ms is sent as 1), RetryInfo the exact value. A shed
	// whose request has less than Pushback (and its method's service
	// time) left of its deadline says "do not retry" instead: a trailer of
	// -1 (gRFC A6) and no RetryInfo, since grpc-go would wait out the
	// pushback past the deadline. 0 sends neither. Default 20ms.
	Pushback time.Duration
	// LogInterval is how often, at most, a one-line summary of what was
	// shed is logged (grpclog, warning level, component "grpcreuse-interceptors"); a
	// summary is written only after something was shed, lazily by the next
	// request. 0 never logs. Default 10s.
	LogInterval time.Duration
}

// DefaultShedderConfig returns the defaults documented on ShedderConfig.
func DefaultShedderConfig() ShedderConfig {
	return ShedderConfig{LimitConfig: DefaultLimitConfig(), Tolerance: 1.25, Window: 25 * time.Millisecond,
		MinSamples: 10, StreamLimit: 1000, SheddableShare: 0.75, MaxWait: 50 * time.Millisecond, Pushback: 20 * time.Millisecond,
		LogInterval: 10 * time.Second}
}

const maxLimitValue = 1 << 30

// ConfigError reports an invalid configuration field: Field is the
// field's JSON name ("maxQueued"), Value the value received as JSON spells
// it, Rule what is allowed. It is the same type as breaker.ConfigError,
// the one field error of every grpcreuse parser. Validate returns it
// wrapped, with the message prefixed "interceptors: "; match it with
// errors.As.
type ConfigError = jsonfield.Error

// configError prefixes a *ConfigError with the package name.
type configError struct{ err *ConfigError }

func (e configError) Error() string { return "interceptors: " + e.err.Error() }
func (e configError) Unwrap() error { return e.err }

func bad(field, value, rule string) error {
	return configError{&ConfigError{Field: field, Value: value, Rule: rule}}
}

func durJSON(d time.Duration) string { return strconv.Quote(duration.String(d)) }

// Validate checks every field and returns an error wrapping a
// *ConfigError for the first invalid one.
func (c LimitConfig) Validate() error {
	itoa := strconv.Itoa
	if c.Algorithm != Fixed && c.Algorithm != AIMD {
		return bad("algorithm", strconv.Quote(c.Algorithm.String()), `must be "fixed" or "aimd"`)
	}
	if c.Limit < 1 || c.Limit > maxLimitValue {
		return bad("limit", itoa(c.Limit), "must be between 1 and "+itoa(maxLimitValue))
	}
	if c.Algorithm == Fixed {
		// Ignored, but written back to JSON (MarshalJSON), which must read
		// back: NaN or an infinity made a valid config fail to marshal
		// (TestShedderConfigJSONRoundTripRandom).
		if math.IsNaN(c.BackoffRatio) || math.IsInf(c.BackoffRatio, 0) {
			return bad("backoffRatio", strconv.FormatFloat(c.BackoffRatio, 'g', -1, 64), "must be a finite number (ignored by \"fixed\")")
		}
		for _, f := range []struct {
			name string
			v    int
		}{{"minLimit", c.MinLimit}, {"maxLimit", c.MaxLimit}} {
			if f.v < -maxJSONInt || f.v > maxJSONInt { // what intField reads back
				return bad(f.name, itoa(f.v), "must be between "+itoa(-maxJSONInt)+" and "+itoa(maxJSONInt)+` (ignored by "fixed")`)
			}
		}
		return nil
	}
	if c.MinLimit < 1 || c.MinLimit > c.Limit {
		return bad("minLimit", itoa(c.MinLimit), "must be between 1 and \"limit\" ("+itoa(c.Limit)+")")
	}
	if c.MaxLimit < c.Limit || c.MaxLimit > maxLimitValue {
		return bad("maxLimit", itoa(c.MaxLimit), "must be between \"limit\" ("+itoa(c.Limit)+") and "+itoa(maxLimitValue))
	}
	if math.IsNaN(c.BackoffRatio) || c.BackoffRatio <= 0 || c.BackoffRatio >= 1 {
		return bad("backoffRatio", strconv.FormatFloat(c.BackoffRatio, 'g', -1, 64), "must be between 0 and 1, exclusive")
	}
	if c.LatencyThreshold < 0 {
		return bad("latencyThreshold", durJSON(c.LatencyThreshold), "must not be negative")
	}
	return nil
}

// Validate checks every field and returns an error wrapping a
// *ConfigError for the first invalid one.
func (c LimiterConfig) Validate() error {
	if err := c.LimitConfig.Validate(); err != nil {
		return err
	}
	itoa := strconv.Itoa
	if c.Scope != ScopeTarget && c.Scope != ScopeMethod {
		return bad("scope", strconv.Quote(c.Scope.String()), `must be "target" or "method"`)
	}
	if c.MaxQueued < 0 || c.MaxQueued > maxLimitValue {
		return bad("maxQueued", itoa(c.MaxQueued), "must be between 0 and "+itoa(maxLimitValue))
	}
	if c.MaxWait <= 0 {
		return bad("maxWait", durJSON(c.MaxWait), "must be positive")
	}
	if c.MaxKeys < 1 || c.MaxKeys > maxLimitValue {
		return bad("maxKeys", itoa(c.MaxKeys), "must be between 1 and "+itoa(maxLimitValue))
	}
	return nil
}

// Validate checks every field and returns an error wrapping a
// *ConfigError for the first invalid one.
func (c ShedderConfig) Validate() error {
	if err := c.LimitConfig.Validate(); err != nil {
		return err
	}
	itoa := strconv.Itoa
	if c.Adaptive {
		if c.Algorithm != Fixed {
			return bad("algorithm", strconv.Quote(c.Algorithm.String()), `must be "fixed" with "adaptive"`)
		}
		if c.MinLimit < 1 || c.MinLimit > c.Limit {
			return bad("minLimit", itoa(c.MinLimit), "must be between 1 and \"limit\" ("+itoa(c.Limit)+")")
		}
		if c.MaxLimit < c.Limit || c.MaxLimit > maxLimitValue {
			return bad("maxLimit", itoa(c.MaxLimit), "must be between \"limit\" ("+itoa(c.Limit)+") and "+itoa(maxLimitValue))
		}
		if math.IsNaN(c.Tolerance) || c.Tolerance < 1 || c.Tolerance > 100 {
			return bad("tolerance", strconv.FormatFloat(c.Tolerance, 'g', -1, 64), "must be between 1 and 100")
		}
		if c.Window <= 0 {
			return bad("window", durJSON(c.Window), "must be positive")
		}
	} else if math.IsNaN(c.Tolerance) || math.IsInf(c.Tolerance, 0) { // ignored, but written back (see LimitConfig.Validate)
		return bad("tolerance", strconv.FormatFloat(c.Tolerance, 'g', -1, 64), "must be a finite number (ignored without \"adaptive\")")
	}
	if c.MinSamples < 1 || c.MinSamples > maxLimitValue {
		return bad("minSamples", itoa(c.MinSamples), "must be between 1 and "+itoa(maxLimitValue))
	}
	if c.StreamLimit < 1 || c.StreamLimit > maxLimitValue {
		return bad("streamLimit", itoa(c.StreamLimit), "must be between 1 and "+itoa(maxLimitValue))
	}
	for _, k := range slices.Sorted(maps.Keys(c.Criticality)) {
		v := c.Criticality[k]
		if !validMethodKey(k) {
			return bad("criticality", strconv.Quote(k), `keys must be "/pkg.Service/Method" or "/pkg.Service/"`)
		}
		if v != Critical && v != Sheddable {
			return bad("criticality", strconv.Quote(v.String()), `values must be "critical" or "sheddable" (key `+strconv.Quote(k)+")")
		}
	}
	seen := make(map[string]bool, len(c.Exempt))
	for _, k := range c.Exempt {
		if !validMethodKey(k) {
			return bad("exempt", strconv.Quote(k), `entries must be "/pkg.Service/Method" or "/pkg.Service/"`)
		}
		if seen[k] {
			return bad("exempt", strconv.Quote(k), "is listed twice")
		}
		seen[k] = true
	}
	if math.IsNaN(c.SheddableShare) || c.SheddableShare <= 0 || c.SheddableShare > 1 {
		return bad("sheddableShare", strconv.FormatFloat(c.SheddableShare, 'g', -1, 64), "must be above 0 and at most 1")
	}
	if c.MaxWait < 0 || c.MaxWait > time.Hour {
		return bad("maxWait", durJSON(c.MaxWait), "must be between \"0s\" and \"3600s\"")
	}
	if c.Pushback < 0 || c.Pushback > time.Hour {
		return bad("pushback", durJSON(c.Pushback), "must be between \"0s\" and \"3600s\"")
	}
	if c.LogInterval < 0 {
		return bad("logInterval", durJSON(c.LogInterval), "must not be negative")
	}
	return nil
}

// MarshalJSON writes c as the "concurrencyLimit" object of the grpcreuse
// service-config policy: every field under its JSON name, durations as
// proto-JSON strings, so parsing the result gives c back.
func (c LimiterConfig) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Scope string `json:"scope"`
		limitJSON
		MaxQueued int    `json:"maxQueued"`
		MaxWait   string `json:"maxWait"`
		MaxKeys   int    `json:"maxKeys"`
	}{c.Scope.String(), c.LimitConfig.toJSON(), c.MaxQueued, duration.String(c.MaxWait), c.MaxKeys})
}

// limitJSON is LimitConfig's fields as the JSON of the configs embedding
// it writes them (readLimit reads them back).
type limitJSON struct {
	Algorithm        string  `json:"algorithm"`
	Limit            int     `json:"limit"`
	MinLimit         int     `json:"minLimit"`
	MaxLimit         int     `json:"maxLimit"`
	BackoffRatio     float64 `json:"backoffRatio"`
	LatencyThreshold string  `json:"latencyThreshold"`
}

func (c LimitConfig) toJSON() limitJSON {
	return limitJSON{c.Algorithm.String(), c.Limit, c.MinLimit, c.MaxLimit, c.BackoffRatio, duration.String(c.LatencyThreshold)}
}

// readLimit reads LimitConfig's fields from obj into c (absent ones keep
// c's values); Validate applies their ranges.
func readLimit(obj *jsonfield.Object, c *LimitConfig) error {
	algorithm := c.Algorithm.String()
	if err := obj.Enum("algorithm", &algorithm, "fixed", "aimd"); err != nil {
		return err
	}
	c.Algorithm = map[string]Algorithm{"fixed": Fixed, "aimd": AIMD}[algorithm]
	for _, f := range []struct {
		name string
		dst  *int
	}{{"limit", &c.Limit}, {"minLimit", &c.MinLimit}, {"maxLimit", &c.MaxLimit}} {
		if err := intField(obj, f.name, f.dst); err != nil {
			return err
		}
	}
	if err := obj.Float("backoffRatio", &c.BackoffRatio); err != nil {
		return err
	}
	return obj.Duration("latencyThreshold", &c.LatencyThreshold)
}
