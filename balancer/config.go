package balancer

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/serviceconfig"

	"github.com/grpcreuse/grpcreuse/internal/duration"
	"github.com/grpcreuse/grpcreuse/internal/jsonfield"
)

// Limits of the integer fields. A config outside them is rejected, never
// clamped.
const (
	maxSubchannelsLimit   = 64
	maxTargetStreams      = 100000
	minChoiceCount        = 2
	maxChoiceCount        = 10
	maxConsecutiveFailure = 1000000
)

// Config is the parsed loadBalancingConfig of the policy. Every field is
// optional in JSON; an absent field takes the default documented on it.
//
//	{"loadBalancingConfig": [{"grpcreuse_least_loaded": {
//	    "subchannelsPerEndpoint": 1,
//	    "maxSubchannelsPerEndpoint": 4,
//	    "targetStreamsPerSubchannel": 50,
//	    "choiceCount": 2,
//	    "subchannelIdleTimeout": "60s",
//	    "ejection": {
//	        "consecutiveFailures": 5,
//	        "baseEjectionTime": "30s",
//	        "maxEjectionTime": "300s",
//	        "maxEjectionPercent": 50,
//	        "failureCodes": ["UNAVAILABLE"]}}}]}
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`

	// SubchannelsPerEndpoint ("subchannelsPerEndpoint") is how many
	// connections are opened to every endpoint as soon as it is resolved,
	// before the first call. Default 1; between 1 and
	// MaxSubchannelsPerEndpoint.
	SubchannelsPerEndpoint int
	// MaxSubchannelsPerEndpoint ("maxSubchannelsPerEndpoint") caps the
	// connections per endpoint, scale-up included. Default 4; between 1 and 64.
	MaxSubchannelsPerEndpoint int
	// TargetStreamsPerSubchannel ("targetStreamsPerSubchannel") is the
	// number of calls in flight per READY connection above which another
	// connection to the endpoint is opened. Set it below the servers'
	// MaxConcurrentStreams (often 100). Default 50; between 1 and 100000.
	TargetStreamsPerSubchannel int
	// ChoiceCount ("choiceCount") is how many endpoints are sampled per
	// pick; the one with the lowest score wins. Default 2; between 2 and 10.
	ChoiceCount int
	// SubchannelIdleTimeout ("subchannelIdleTimeout", a duration string)
	// is how long a connection above SubchannelsPerEndpoint must carry no
	// call before it is closed. Default 60s; greater than 0s.
	SubchannelIdleTimeout time.Duration
	// Ejection ("ejection") configures taking failing endpoints out of
	// picking.
	Ejection EjectionConfig
}

// EjectionConfig is the "ejection" object of Config.
type EjectionConfig struct {
	// ConsecutiveFailures ("consecutiveFailures") is how many calls in a row
	// must fail with one of FailureCodes to eject the endpoint. 0 disables
	// ejection. Default 5; between 0 and 1000000.
	ConsecutiveFailures int
	// BaseEjectionTime ("baseEjectionTime", a duration string) is how long
	// an endpoint stays out the first time; the n-th ejection in a row lasts
	// n times as long. Default 30s; greater than 0s.
	BaseEjectionTime time.Duration
	// MaxEjectionTime ("maxEjectionTime", a duration string) caps an
	// ejection's length. Default the larger of 300s and BaseEjectionTime;
	// at least BaseEjectionTime.
	MaxEjectionTime time.Duration
	// MaxEjectionPercent ("maxEjectionPercent") is the largest share of
	// endpoints, in percent, that may be ejected at once; an ejection that
	// would exceed it does not happen. Default 50; between 0 and 100.
	MaxEjectionPercent int
	// FailureCodes ("failureCodes", a list of status code names such as
	// "UNAVAILABLE") are the codes of a finished call that count as a
	// backend failure: toward ConsecutiveFailures and toward the score
	// penalty of failing endpoints. Other codes are answers. Default
	// ["UNAVAILABLE"]; at least one code, none twice, never "OK",
	// "CANCELLED", "DEADLINE_EXCEEDED" or "RESOURCE_EXHAUSTED": a
	// server's back-pressure (RESOURCE_EXHAUSTED) moves load away without
	// ejecting, and the caller's own deadline or cancellation never
	// counts against a backend.
	FailureCodes []codes.Code
}

// defaultConfig returns the defaults, fresh on every call.
func defaultConfig() *Config {
	return &Config{
		SubchannelsPerEndpoint:     1,
		MaxSubchannelsPerEndpoint:  4,
		TargetStreamsPerSubchannel: 50,
		ChoiceCount:                2,
		SubchannelIdleTimeout:      60 * time.Second,
		Ejection: EjectionConfig{
			ConsecutiveFailures: 5,
			BaseEjectionTime:    30 * time.Second,
			MaxEjectionTime:     300 * time.Second,
			MaxEjectionPercent:  50,
			FailureCodes:        []codes.Code{codes.Unavailable},
		},
	}
}

// ParseConfig parses the policy's loadBalancingConfig JSON (the object
// under "grpcreuse_least_loaded"), applies defaults to absent fields and
// validates every field. Unlike grpc's own policies, an unknown or
// duplicate field is an error naming it (with the nearest known name), so
// that a typo cannot silently leave a default in place. Errors name the
// JSON field, the value and what is allowed, for example
//
//	grpcreuse_least_loaded: "choiceCount" is 1; must be between 2 and 10
//	grpcreuse_least_loaded: "subchannelPerEndpoint" is not a known field; did you mean "subchannelsPerEndpoint"?
//
// A parsed *Config marshals back (MarshalJSON) to JSON that ParseConfig
// reads as an equal Config, as grpc's re-encoding of parsed configs needs.
func ParseConfig(raw json.RawMessage) (*Config, error) {
	cfg, err := parseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	return cfg, nil
}

func parseConfig(raw json.RawMessage) (*Config, error) {
	cfg := defaultConfig()
	o, err := jsonfield.Parse("", raw)
	if err != nil {
		return nil, err
	}
	ints := []struct {
		name     string
		dst      *int
		min, max int
	}{
		{"subchannelsPerEndpoint", &cfg.SubchannelsPerEndpoint, 1, maxSubchannelsLimit},
		{"maxSubchannelsPerEndpoint", &cfg.MaxSubchannelsPerEndpoint, 1, maxSubchannelsLimit},
		{"targetStreamsPerSubchannel", &cfg.TargetStreamsPerSubchannel, 1, maxTargetStreams},
		{"choiceCount", &cfg.ChoiceCount, minChoiceCount, maxChoiceCount},
	}
	for _, f := range ints {
		if err := o.Int(f.name, f.dst, f.min, f.max); err != nil {
			return nil, err
		}
	}
	if err := o.Duration("subchannelIdleTimeout", &cfg.SubchannelIdleTimeout); err != nil {
		return nil, err
	}
	ej, err := o.Object("ejection")
	if err != nil {
		return nil, err
	}
	e := &cfg.Ejection
	if err := ej.Int("consecutiveFailures", &e.ConsecutiveFailures, 0, maxConsecutiveFailure); err != nil {
		return nil, err
	}
	if err := ej.Int("maxEjectionPercent", &e.MaxEjectionPercent, 0, 100); err != nil {
		return nil, err
	}
	if err := ej.Duration("baseEjectionTime", &e.BaseEjectionTime); err != nil {
		return nil, err
	}
	// The default maximum never undercuts an explicit base.
	e.MaxEjectionTime = max(e.MaxEjectionTime, e.BaseEjectionTime)
	if err := ej.Duration("maxEjectionTime", &e.MaxEjectionTime); err != nil {
		return nil, err
	}
	if e.FailureCodes, err = codesField(ej, "failureCodes", e.FailureCodes); err != nil {
		return nil, err
	}
	if err := ej.Done(); err != nil {
		return nil, err
	}
	if err := o.Done(); err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// configJSON and ejectionJSON are the wire shapes MarshalJSON writes; their
// tags are the names parseConfig reads.
type configJSON struct {
	SubchannelsPerEndpoint     int          `json:"subchannelsPerEndpoint"`
	MaxSubchannelsPerEndpoint  int          `json:"maxSubchannelsPerEndpoint"`
	TargetStreamsPerSubchannel int          `json:"targetStreamsPerSubchannel"`
	ChoiceCount                int          `json:"choiceCount"`
	SubchannelIdleTimeout      string       `json:"subchannelIdleTimeout"`
	Ejection                   ejectionJSON `json:"ejection"`
}

type ejectionJSON struct {
	ConsecutiveFailures int      `json:"consecutiveFailures"`
	BaseEjectionTime    string   `json:"baseEjectionTime"`
	MaxEjectionTime     string   `json:"maxEjectionTime"`
	MaxEjectionPercent  int      `json:"maxEjectionPercent"`
	FailureCodes        []string `json:"failureCodes"`
}

// MarshalJSON writes c as the JSON ParseConfig reads: every field, with the
// same lowerCamelCase names and proto-JSON duration strings, so that
// ParseConfig(c.MarshalJSON()) equals c. grpc re-encodes parsed
// load-balancing configs this way (xDS does, for example), so a Config
// must survive it. It fails only for a Config that ParseConfig would
// reject, naming the field.
func (c *Config) MarshalJSON() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	e := c.Ejection
	names := make([]string, len(e.FailureCodes))
	for i, code := range e.FailureCodes {
		names[i] = codeNames[code]
	}
	return json.Marshal(configJSON{
		SubchannelsPerEndpoint:     c.SubchannelsPerEndpoint,
		MaxSubchannelsPerEndpoint:  c.MaxSubchannelsPerEndpoint,
		TargetStreamsPerSubchannel: c.TargetStreamsPerSubchannel,
		ChoiceCount:                c.ChoiceCount,
		SubchannelIdleTimeout:      duration.String(c.SubchannelIdleTimeout),
		Ejection: ejectionJSON{
			ConsecutiveFailures: e.ConsecutiveFailures,
			BaseEjectionTime:    duration.String(e.BaseEjectionTime),
			MaxEjectionTime:     duration.String(e.MaxEjectionTime),
			MaxEjectionPercent:  e.MaxEjectionPercent,
			FailureCodes:        names,
		},
	})
}

// validate checks what parseConfig cannot check field by field: ranges
// that depend on other fields, and durations. Messages use the JSON names.
func (c *Config) validate() error {
	switch {
	case c.MaxSubchannelsPerEndpoint < 1 || c.MaxSubchannelsPerEndpoint > maxSubchannelsLimit:
		return intErr("maxSubchannelsPerEndpoint", c.MaxSubchannelsPerEndpoint, fmt.Sprintf("must be between 1 and %d", maxSubchannelsLimit))
	case c.SubchannelsPerEndpoint < 1 || c.SubchannelsPerEndpoint > c.MaxSubchannelsPerEndpoint:
		return intErr("subchannelsPerEndpoint", c.SubchannelsPerEndpoint, fmt.Sprintf("must be between 1 and \"maxSubchannelsPerEndpoint\" (%d)", c.MaxSubchannelsPerEndpoint))
	case c.TargetStreamsPerSubchannel < 1 || c.TargetStreamsPerSubchannel > maxTargetStreams:
		return intErr("targetStreamsPerSubchannel", c.TargetStreamsPerSubchannel, fmt.Sprintf("must be between 1 and %d", maxTargetStreams))
	case c.ChoiceCount < minChoiceCount || c.ChoiceCount > maxChoiceCount:
		return intErr("choiceCount", c.ChoiceCount, fmt.Sprintf("must be between %d and %d", minChoiceCount, maxChoiceCount))
	case c.SubchannelIdleTimeout <= 0:
		return durErr("subchannelIdleTimeout", c.SubchannelIdleTimeout, "must be greater than 0s")
	}
	e := c.Ejection
	switch {
	case e.ConsecutiveFailures < 0 || e.ConsecutiveFailures > maxConsecutiveFailure:
		return intErr("ejection.consecutiveFailures", e.ConsecutiveFailures, fmt.Sprintf("must be between 0 and %d", maxConsecutiveFailure))
	case e.MaxEjectionPercent < 0 || e.MaxEjectionPercent > 100:
		return intErr("ejection.maxEjectionPercent", e.MaxEjectionPercent, "must be between 0 and 100")
	case e.BaseEjectionTime <= 0:
		return durErr("ejection.baseEjectionTime", e.BaseEjectionTime, "must be greater than 0s")
	case e.MaxEjectionTime < e.BaseEjectionTime:
		return durErr("ejection.maxEjectionTime", e.MaxEjectionTime, "must be at least \"ejection.baseEjectionTime\" ("+duration.String(e.BaseEjectionTime)+")")
	}
	return validateCodes("ejection.failureCodes", e.FailureCodes)
}

// intErr and durErr are validate's field errors, in the shape every
// parser of the toolkit gives.
func intErr(field string, v int, rule string) error {
	return &jsonfield.Error{Field: field, Value: strconv.Itoa(v), Rule: rule}
}

func durErr(field string, d time.Duration, rule string) error {
	return &jsonfield.Error{Field: field, Value: strconv.Quote(duration.String(d)), Rule: rule}
}

// codeNames are the canonical names of gRPC status codes, as service config
// spells them ("retryableStatusCodes"), indexed by code.
var codeNames = [...]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

// validateCodes checks a failureCodes list: at least one code, no code
// twice, and none of the codes that never say a backend failed.
func validateCodes(field string, cs []codes.Code) error {
	if len(cs) == 0 {
		return &jsonfield.Error{Field: field, Value: "[]", Rule: "must name at least one code (set \"ejection.consecutiveFailures\" to 0 to disable ejection)"}
	}
	var seen uint32
	for _, c := range cs {
		if int(c) >= len(codeNames) {
			return &jsonfield.Error{Field: field, Rule: fmt.Sprintf("holds code %d; must be status code names such as \"UNAVAILABLE\"", uint32(c))}
		}
		switch c {
		case codes.OK, codes.Canceled, codes.DeadlineExceeded, codes.ResourceExhausted:
			return &jsonfield.Error{Field: field, Rule: "holds " + strconv.Quote(codeNames[c]) + "; OK, CANCELLED, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED never count as backend failures"}
		}
		if seen&(1<<c) != 0 {
			return &jsonfield.Error{Field: field, Rule: "holds " + strconv.Quote(codeNames[c]) + " twice"}
		}
		seen |= 1 << c
	}
	return nil
}

// codeMask returns the codes of cs as a bit set (bit c for code c).
func codeMask(cs []codes.Code) uint32 {
	var m uint32
	for _, c := range cs {
		if c < 32 {
			m |= 1 << c
		}
	}
	return m
}

// codesField reads member name of o as a list of status code names.
// Absent or null yields def (copied). Membership rules are validateCodes'.
func codesField(o *jsonfield.Object, name string, def []codes.Code) ([]codes.Code, error) {
	field := o.Field(name)
	const rule = `must be status code names such as "UNAVAILABLE"`
	if !o.Has(name) {
		o.Raw(name) // known, and absent or null
		return slices.Clone(def), nil
	}
	names, err := o.Array(name)
	if err != nil {
		return nil, err
	}
	out := make([]codes.Code, 0, len(names))
	for _, n := range names {
		var s string
		if json.Unmarshal(n, &s) != nil {
			return nil, &jsonfield.Error{Field: field, Rule: "holds " + jsonfield.Clip(n) + "; " + rule}
		}
		i := slices.Index(codeNames[:], s)
		if i < 0 {
			r := "holds " + strconv.Quote(jsonfield.Clip([]byte(s))) + "; " + rule
			if near := jsonfield.Nearest(s, codeNames[:]); near != "" {
				r += "; did you mean " + strconv.Quote(near) + "?"
			}
			return nil, &jsonfield.Error{Field: field, Rule: r}
		}
		out = append(out, codes.Code(i))
	}
	return out, nil
}
