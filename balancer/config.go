package balancer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

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
//	        "maxEjectionPercent": 50}}}]}
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
	// must fail (Unavailable, ResourceExhausted, Internal, Unknown,
	// DataLoss) to eject the endpoint. 0 disables ejection. Default 5;
	// between 0 and 1000000.
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
		},
	}
}

// ParseConfig parses the policy's loadBalancingConfig JSON (the object
// under "grpcreuse_least_loaded"), applies defaults to absent fields and
// validates every field. Unknown fields are ignored, as gRPC requires for
// forward compatibility. Errors name the JSON field, the value and what is
// allowed, for example
//
//	grpcreuse_least_loaded: "choiceCount" is 1; must be between 2 and 10
func ParseConfig(raw json.RawMessage) (*Config, error) {
	cfg, err := parseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Name, err)
	}
	return cfg, nil
}

func parseConfig(raw json.RawMessage) (*Config, error) {
	cfg := defaultConfig()
	fields, err := object("config", raw)
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
	ej, err := object(`"ejection"`, fields["ejection"])
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
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
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
	return nil
}

// object decodes raw as a JSON object into its members, keyed exactly as
// spelled (encoding/json would also match "ChoiceCount" to choiceCount).
// Absent or null yields an empty map. label names raw in errors.
func object(label string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var m map[string]json.RawMessage
	if raw[0] != '{' || json.Unmarshal(raw, &m) != nil {
		return nil, fmt.Errorf("%s is %s; must be a JSON object", label, clip(raw))
	}
	return m, nil
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
