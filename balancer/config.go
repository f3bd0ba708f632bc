package balancer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/serviceconfig"

	"github.com/grpcreuse/grpcreuse/internal/duration"
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
//	grpcreuse_least_loaded: unknown field "subchannelPerEndpoint"; did you mean "subchannelsPerEndpoint"?
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

// JSON field names, top level and in "ejection".
var (
	configFields   = []string{"subchannelsPerEndpoint", "maxSubchannelsPerEndpoint", "targetStreamsPerSubchannel", "choiceCount", "subchannelIdleTimeout", "ejection"}
	ejectionFields = []string{"consecutiveFailures", "baseEjectionTime", "maxEjectionTime", "maxEjectionPercent", "failureCodes"}
)

func parseConfig(raw json.RawMessage) (*Config, error) {
	cfg := defaultConfig()
	fields, err := object("", "config", raw, configFields)
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
		if err := intField(f.name, fields[f.name], f.dst, f.min, f.max); err != nil {
			return nil, err
		}
	}
	if cfg.SubchannelIdleTimeout, err = duration.FromJSON("subchannelIdleTimeout", fields["subchannelIdleTimeout"], cfg.SubchannelIdleTimeout); err != nil {
		return nil, err
	}
	ej, err := object("ejection.", `"ejection"`, fields["ejection"], ejectionFields)
	if err != nil {
		return nil, err
	}
	e := &cfg.Ejection
	if err := intField("ejection.consecutiveFailures", ej["consecutiveFailures"], &e.ConsecutiveFailures, 0, maxConsecutiveFailure); err != nil {
		return nil, err
	}
	if err := intField("ejection.maxEjectionPercent", ej["maxEjectionPercent"], &e.MaxEjectionPercent, 0, 100); err != nil {
		return nil, err
	}
	if e.BaseEjectionTime, err = duration.FromJSON("ejection.baseEjectionTime", ej["baseEjectionTime"], e.BaseEjectionTime); err != nil {
		return nil, err
	}
	// The default maximum never undercuts an explicit base.
	defMax := max(e.MaxEjectionTime, e.BaseEjectionTime)
	if e.MaxEjectionTime, err = duration.FromJSON("ejection.maxEjectionTime", ej["maxEjectionTime"], defMax); err != nil {
		return nil, err
	}
	if e.FailureCodes, err = codesField("ejection.failureCodes", ej["failureCodes"], e.FailureCodes); err != nil {
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
		return fmt.Errorf("%q is %d; must be between 1 and %d", "maxSubchannelsPerEndpoint", c.MaxSubchannelsPerEndpoint, maxSubchannelsLimit)
	case c.SubchannelsPerEndpoint < 1 || c.SubchannelsPerEndpoint > c.MaxSubchannelsPerEndpoint:
		return fmt.Errorf("%q is %d; must be between 1 and \"maxSubchannelsPerEndpoint\" (%d)", "subchannelsPerEndpoint", c.SubchannelsPerEndpoint, c.MaxSubchannelsPerEndpoint)
	case c.TargetStreamsPerSubchannel < 1 || c.TargetStreamsPerSubchannel > maxTargetStreams:
		return fmt.Errorf("%q is %d; must be between 1 and %d", "targetStreamsPerSubchannel", c.TargetStreamsPerSubchannel, maxTargetStreams)
	case c.ChoiceCount < minChoiceCount || c.ChoiceCount > maxChoiceCount:
		return fmt.Errorf("%q is %d; must be between %d and %d", "choiceCount", c.ChoiceCount, minChoiceCount, maxChoiceCount)
	case c.SubchannelIdleTimeout <= 0:
		return fmt.Errorf("%q is %q; must be greater than 0s", "subchannelIdleTimeout", duration.String(c.SubchannelIdleTimeout))
	}
	e := c.Ejection
	switch {
	case e.ConsecutiveFailures < 0 || e.ConsecutiveFailures > maxConsecutiveFailure:
		return fmt.Errorf("%q is %d; must be between 0 and %d", "ejection.consecutiveFailures", e.ConsecutiveFailures, maxConsecutiveFailure)
	case e.MaxEjectionPercent < 0 || e.MaxEjectionPercent > 100:
		return fmt.Errorf("%q is %d; must be between 0 and 100", "ejection.maxEjectionPercent", e.MaxEjectionPercent)
	case e.BaseEjectionTime <= 0:
		return fmt.Errorf("%q is %q; must be greater than 0s", "ejection.baseEjectionTime", duration.String(e.BaseEjectionTime))
	case e.MaxEjectionTime < e.BaseEjectionTime:
		return fmt.Errorf("%q is %q; must be at least \"ejection.baseEjectionTime\" (%s)", "ejection.maxEjectionTime", duration.String(e.MaxEjectionTime), duration.String(e.BaseEjectionTime))
	}
	return validateCodes("ejection.failureCodes", e.FailureCodes)
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
		return fmt.Errorf("%q is []; must name at least one code (set \"ejection.consecutiveFailures\" to 0 to disable ejection)", field)
	}
	var seen uint32
	for _, c := range cs {
		if int(c) >= len(codeNames) {
			return fmt.Errorf("%q holds code %d; must be status code names such as \"UNAVAILABLE\"", field, uint32(c))
		}
		switch c {
		case codes.OK, codes.Canceled, codes.DeadlineExceeded, codes.ResourceExhausted:
			return fmt.Errorf("%q holds %q; OK, CANCELLED, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED never count as backend failures", field, codeNames[c])
		}
		if seen&(1<<c) != 0 {
			return fmt.Errorf("%q holds %q twice", field, codeNames[c])
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

// codesField parses raw, the JSON value of field, as a list of status code
// names. Absent or null yields def (copied). Membership rules are
// validateCodes'.
func codesField(field string, raw json.RawMessage, def []codes.Code) ([]codes.Code, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return slices.Clone(def), nil
	}
	var names []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &names) != nil {
		return nil, fmt.Errorf("%q is %s; must be a list of status code names such as [\"UNAVAILABLE\"]", field, clip(raw))
	}
	out := make([]codes.Code, 0, len(names))
	for _, n := range names {
		var name string
		if json.Unmarshal(n, &name) != nil {
			return nil, fmt.Errorf("%q holds %s; must be status code names such as \"UNAVAILABLE\"", field, clip(n))
		}
		i := slices.Index(codeNames[:], name)
		if i < 0 {
			return nil, fmt.Errorf("%q holds %q; must be status code names such as \"UNAVAILABLE\"%s", field, clip([]byte(name)), suggest(name, codeNames[:]))
		}
		out = append(out, codes.Code(i))
	}
	return out, nil
}

// object decodes raw as a JSON object into its members, keyed exactly as
// spelled (encoding/json would also match "ChoiceCount" to choiceCount).
// Absent or null yields an empty map. A member not in known, or one given
// twice, is an error naming it as prefix+name, with the nearest known name.
// label names raw in errors.
func object(prefix, label string, raw json.RawMessage, known []string) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	notObject := fmt.Errorf("%s is %s; must be a JSON object", label, clip(raw))
	if raw[0] != '{' || !json.Valid(raw) {
		return nil, notObject
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, notObject
	}
	m := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, notObject
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, notObject
		}
		if !slices.Contains(known, name) {
			return nil, fmt.Errorf("unknown field %q%s", prefix+name, suggest(name, known))
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("field %q appears twice", prefix+name)
		}
		m[name] = v
	}
	return m, nil
}

// suggest returns `; did you mean "x"?` for the known name nearest to
// name, or "" when none is near.
func suggest(name string, known []string) string {
	best, bestD := "", len(name)/2+2
	for _, k := range known {
		if d := editDistance(strings.ToLower(name), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 {
		a = a[:64]
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// intField parses raw, the JSON value of field, as a whole number between
// lo and hi into dst. Absent or null leaves dst (the default) alone.
func intField(field string, raw json.RawMessage, dst *int, lo, hi int) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return fmt.Errorf("%q is %s; must be a whole number between %d and %d", field, clip(raw), lo, hi)
	}
	if n < int64(lo) || n > int64(hi) {
		return fmt.Errorf("%q is %d; must be between %d and %d", field, n, lo, hi)
	}
	*dst = int(n)
	return nil
}

// clip keeps error messages short when a caller sends a huge value.
func clip(raw []byte) string {
	const limit = 40
	if len(raw) > limit {
		return string(raw[:limit]) + "…"
	}
	return string(raw)
}
