package breaker

import (
	"encoding/json"
	"math"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/grpcreuse/grpcreuse/internal/duration"
	"github.com/grpcreuse/grpcreuse/internal/jsonfield"
)

// Scope says what one breaker (or, in package interceptors, one client
// limiter) covers. Its zero value is ScopeMethod everywhere; the limiter's
// defaults choose ScopeTarget explicitly.
type Scope int

const (
	// ScopeMethod keeps one breaker per target and full method name
	// ("dns:///backend:443" + "/pkg.Service/Method"). It is the default:
	// a method that fails does not cut the callers of healthy methods off.
	ScopeMethod Scope = iota
	// ScopeTarget keeps one breaker per target: every method of a
	// backend trips and recovers together.
	ScopeTarget
)

// String returns "method" or "target", the spelling of the JSON policy.
func (s Scope) String() string {
	switch s {
	case ScopeMethod:
		return "method"
	case ScopeTarget:
		return "target"
	}
	return "Scope(" + strconv.Itoa(int(s)) + ")"
}

// Config is the trip and recovery policy of the breakers of a Registry.
// Start from DefaultConfig; the zero Config is not valid. The JSON names
// of the grpcreuse service-config policy are the field names in
// lowerCamelCase ("consecutiveFailures").
type Config struct {
	// Scope says whether breakers are kept per target+method (the
	// default, ScopeMethod) or per target. WithKeyFunc overrides it.
	Scope Scope
	// ConsecutiveFailures trips the breaker after this many failures in a
	// row within Window. Default 5; 0 disables the rule.
	ConsecutiveFailures int
	// FailureRatio trips the breaker when failures/(failures+successes)
	// within Window reaches it, once MinimumRequests calls have completed
	// there. Between 0 and 1; default 0, which disables the rule.
	FailureRatio float64
	// MinimumRequests is how many completed (not excluded) calls Window
	// must hold before FailureRatio applies. Default 20.
	MinimumRequests int
	// Window is the rolling window over which failures are counted.
	// Default 10s.
	Window time.Duration
	// WindowBuckets is how many buckets the window rolls by; the window
	// forgets Window/WindowBuckets of history at a time. Default 10.
	WindowBuckets int
	// OpenTimeout is how long an open breaker fails calls before it lets
	// probes through (half-open). Default 10s.
	OpenTimeout time.Duration
	// HalfOpenProbes is how many calls a half-open breaker lets through at
	// once, and how many of them must succeed to close it; one failure
	// opens it again. Default 1.
	HalfOpenProbes int
	// ProbeTimeout bounds how long a half-open probe may take to report
	// its outcome: a probe still outstanding after it (a stream nobody
	// reads, a call that hangs) counts as failed when the next call asks,
	// so the breaker opens again and later probes afresh instead of
	// staying half-open. Default 10s; must be positive.
	ProbeTimeout time.Duration
	// FailureCodes are the gRPC codes that count as failures. Default
	// (DefaultFailureCodes): Unavailable, Internal, Unknown, DataLoss and
	// DeadlineExceeded. DeadlineExceeded counts only when the caller's own
	// context had not expired. Canceled and OK may not be listed: a
	// caller's cancellation never counts. Other codes count as successes:
	// the backend answered.
	FailureCodes []codes.Code
	// MaxBreakers bounds the registry: beyond it the least recently used
	// breaker is dropped (and starts closed if its key comes back).
	// Default 1024.
	MaxBreakers int
}

// DefaultFailureCodes returns, freshly allocated, the codes that count as
// failures by default.
func DefaultFailureCodes() []codes.Code {
	return []codes.Code{codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss, codes.DeadlineExceeded}
}

// DefaultConfig returns the defaults documented on Config's fields.
func DefaultConfig() Config {
	return Config{
		Scope:               ScopeMethod,
		ConsecutiveFailures: 5,
		FailureRatio:        0,
		MinimumRequests:     20,
		Window:              10 * time.Second,
		WindowBuckets:       10,
		OpenTimeout:         10 * time.Second,
		HalfOpenProbes:      1,
		ProbeTimeout:        10 * time.Second,
		FailureCodes:        DefaultFailureCodes(),
		MaxBreakers:         1024,
	}
}

// Bounds of Config's fields.
const (
	maxCount       = 1 << 30
	maxBuckets     = 1000
	maxMaxBreakers = 1 << 20
)

// ConfigError reports an invalid Config field: Field is the field's JSON
// name ("failureRatio"), Value the value received as JSON spells it, and
// Rule what is allowed ("must be between 0 and 1"). It is the one field
// error type of every grpcreuse config parser (interceptors.ConfigError is
// the same type). Validate returns it wrapped, with the message prefixed
// "breaker: "; match it with errors.As.
type ConfigError = jsonfield.Error

// configError prefixes a *ConfigError with the package name and unwraps
// to it.
type configError struct{ err *ConfigError }

func (e configError) Error() string { return "breaker: " + e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// Validate checks every field of c and returns an error wrapping a
// *ConfigError for the first invalid one. New calls it; so does the JSON policy parser.
func (c Config) Validate() error {
	bad := func(field, value, rule string) error {
		return configError{&ConfigError{Field: field, Value: value, Rule: rule}}
	}
	itoa := strconv.Itoa
	dur := func(d time.Duration) string { return strconv.Quote(duration.String(d)) }
	if c.Scope != ScopeMethod && c.Scope != ScopeTarget {
		return bad("scope", strconv.Quote(c.Scope.String()), `must be "method" or "target"`)
	}
	if c.ConsecutiveFailures < 0 || c.ConsecutiveFailures > maxCount {
		return bad("consecutiveFailures", itoa(c.ConsecutiveFailures), "must be between 0 and "+itoa(maxCount))
	}
	if math.IsNaN(c.FailureRatio) || c.FailureRatio < 0 || c.FailureRatio > 1 {
		return bad("failureRatio", strconv.FormatFloat(c.FailureRatio, 'g', -1, 64), "must be between 0 and 1")
	}
	if c.ConsecutiveFailures == 0 && c.FailureRatio == 0 {
		return bad("consecutiveFailures", "0", "must be at least 1 when \"failureRatio\" is 0 (no trip rule enabled)")
	}
	if c.MinimumRequests < 1 || c.MinimumRequests > maxCount {
		return bad("minimumRequests", itoa(c.MinimumRequests), "must be between 1 and "+itoa(maxCount))
	}
	if c.WindowBuckets < 1 || c.WindowBuckets > maxBuckets {
		return bad("windowBuckets", itoa(c.WindowBuckets), "must be between 1 and "+itoa(maxBuckets))
	}
	if c.Window < time.Millisecond*time.Duration(c.WindowBuckets) {
		return bad("window", dur(c.Window), "must be at least 1ms per bucket ("+itoa(c.WindowBuckets)+" buckets)")
	}
	if c.OpenTimeout <= 0 {
		return bad("openTimeout", dur(c.OpenTimeout), "must be positive")
	}
	if c.HalfOpenProbes < 1 || c.HalfOpenProbes > maxCount {
		return bad("halfOpenProbes", itoa(c.HalfOpenProbes), "must be between 1 and "+itoa(maxCount))
	}
	if c.ProbeTimeout <= 0 {
		return bad("probeTimeout", dur(c.ProbeTimeout), "must be positive")
	}
	if len(c.FailureCodes) == 0 {
		return bad("failureCodes", "[]", "must list at least one gRPC code")
	}
	for i, code := range c.FailureCodes {
		if code == codes.OK || code == codes.Canceled || code > codes.Unauthenticated {
			return bad("failureCodes["+itoa(i)+"]", codeJSON(code), "must be a gRPC code other than OK and CANCELLED")
		}
	}
	if c.MaxBreakers < 1 || c.MaxBreakers > maxMaxBreakers {
		return bad("maxBreakers", itoa(c.MaxBreakers), "must be between 1 and "+itoa(maxMaxBreakers))
	}
	return nil
}

// codeNames are the service-config spellings of the gRPC codes, by value.
var codeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// codeJSON spells code as service config does ("UNAVAILABLE").
func codeJSON(c codes.Code) string {
	if int(c) < len(codeNames) {
		return strconv.Quote(codeNames[c])
	}
	return strconv.FormatUint(uint64(c), 10)
}

// MarshalJSON writes c as the "circuitBreaker" object of the grpcreuse
// service-config policy: every field under its JSON name, durations as
// proto-JSON strings ("10s"), codes by name ("UNAVAILABLE"), so parsing
// the result gives c back.
func (c Config) MarshalJSON() ([]byte, error) {
	fc := make([]json.RawMessage, len(c.FailureCodes))
	for i, code := range c.FailureCodes {
		fc[i] = json.RawMessage(codeJSON(code))
	}
	return json.Marshal(struct {
		Scope               string            `json:"scope"`
		ConsecutiveFailures int               `json:"consecutiveFailures"`
		FailureRatio        float64           `json:"failureRatio"`
		MinimumRequests     int               `json:"minimumRequests"`
		Window              string            `json:"window"`
		WindowBuckets       int               `json:"windowBuckets"`
		OpenTimeout         string            `json:"openTimeout"`
		HalfOpenProbes      int               `json:"halfOpenProbes"`
		ProbeTimeout        string            `json:"probeTimeout"`
		FailureCodes        []json.RawMessage `json:"failureCodes"`
		MaxBreakers         int               `json:"maxBreakers"`
	}{c.Scope.String(), c.ConsecutiveFailures, c.FailureRatio, c.MinimumRequests, duration.String(c.Window),
		c.WindowBuckets, duration.String(c.OpenTimeout), c.HalfOpenProbes, duration.String(c.ProbeTimeout), fc, c.MaxBreakers})
}
