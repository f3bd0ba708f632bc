package interceptors

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/internal/jsonfield"
)

// PolicyKey is the top-level service-config key that holds the grpcreuse
// policy.
const PolicyKey = "grpcreuse"

// Policy is the breaker and limiter policy of a channel, as written in
// the "grpcreuse" object of a service config:
//
//	{
//	  "methodConfig": [{"name": [{"service": "echo.Echo"}], "timeout": "1s"}],
//	  "grpcreuse": {
//	    "methodConfig": [
//	      {
//	        "name": [{}],
//	        "circuitBreaker": {"consecutiveFailures": 5, "openTimeout": "10s"},
//	        "concurrencyLimit": {"algorithm": "aimd", "limit": 50, "maxQueued": 100, "maxWait": "0.1s"}
//	      },
//	      {
//	        "name": [{"service": "echo.Echo", "method": "Stream"}],
//	        "circuitBreaker": {"failureRatio": 0.5, "minimumRequests": 20, "window": "30s"}
//	      }
//	    ]
//	  }
//	}
//
// Each methodConfig entry applies to the methods its names select, with
// gRPC's methodConfig rules: {"service": s, "method": m} selects one
// method, {"service": s} every method of s, and {} (or an empty service)
// every method not selected otherwise; the most specific entry applies
// whole (entries are not merged), and a name may appear only once. An
// entry without "circuitBreaker" or "concurrencyLimit" leaves its methods
// without that layer.
//
// "circuitBreaker" holds breaker.Config's fields and "concurrencyLimit"
// LimiterConfig's, in lowerCamelCase, with their Go defaults for absent
// fields: scope ("method"/"target"), consecutiveFailures, failureRatio,
// minimumRequests, window, windowBuckets, openTimeout, halfOpenProbes,
// failureCodes (names such as "UNAVAILABLE", or numbers), maxBreakers;
// and scope, algorithm ("fixed"/"aimd"), limit, minLimit, maxLimit,
// backoffRatio, latencyThreshold, maxQueued, maxWait, maxKeys. Durations
// are proto-JSON strings ("0.25s"); probeTimeout bounds a half-open probe.
// Parsing is strict: an unknown or duplicate field anywhere in the object
// is an error naming it, with the nearest known name, and so is a
// top-level field that is a near miss of "grpcreuse" (gRPC ignores
// unknown top-level fields, so the policy would silently not apply).
// docs/policy.md describes every field, its default and its range.
type Policy struct {
	// MethodConfig holds the "grpcreuse" object's methodConfig entries,
	// in their order.
	MethodConfig []MethodPolicy
}

// MethodPolicy is one entry of Policy.MethodConfig.
type MethodPolicy struct {
	// Name selects the methods the entry applies to.
	Name []MethodName
	// CircuitBreaker is the breaker policy; nil: no breaker.
	CircuitBreaker *breaker.Config
	// ConcurrencyLimit is the client limiter policy; nil: no limiter.
	ConcurrencyLimit *LimiterConfig
}

// MethodName selects methods as gRPC's methodConfig "name" does.
type MethodName struct {
	// Service is the full service name ("pkg.Service"); empty selects
	// every method not selected otherwise (Method must then be empty).
	Service string
	// Method is the method name ("Method"); empty matches every method of
	// Service.
	Method string
}

// grpcTopLevel are the top-level fields of gRPC's own service config.
var grpcTopLevel = []string{"loadBalancingPolicy", "loadBalancingConfig", "methodConfig", "retryThrottling", "healthCheckConfig"}

// PolicyError is the error of a policy that does not parse or validate:
// Err names the field (its path inside the methodConfig entry, or inside
// the "grpcreuse" object), the value and the rule; Where is the entry
// ("methodConfig[0]"), "" for errors outside entries. It prints as
// `grpcreuse: "circuitBreaker.failureRatio" is 1.5; must be between 0 and 1 (methodConfig[0])`
// and unwraps to Err.
type PolicyError struct {
	// Err is the field, value and rule that failed.
	Err *ConfigError
	// Where is the methodConfig entry ("methodConfig[0]"), or "".
	Where string
}

// Error returns the message, prefixed "grpcreuse: ".
func (e *PolicyError) Error() string {
	msg := "grpcreuse: " + e.Err.Error()
	if e.Where != "" {
		msg += " (" + e.Where + ")"
	}
	return msg
}

// Unwrap returns the field error.
func (e *PolicyError) Unwrap() error { return e.Err }

// policyErr turns a parser or Validate error into a *PolicyError, adding
// prefix to its field.
func policyErr(err error, prefix, where string) error {
	var fe *ConfigError
	if errors.As(err, &fe) {
		c := *fe
		c.Field = prefix + c.Field
		return &PolicyError{Err: &c, Where: where}
	}
	msg := "grpcreuse: " + err.Error()
	if where != "" {
		msg += " (" + where + ")"
	}
	return errors.New(msg)
}

// SplitServiceConfig splits a service config document in two: the
// document without its "grpcreuse" key, for grpc.WithDefaultServiceConfig,
// and the parsed policy (nil if the document has none). An empty document
// is returned as is. A duplicate top-level field, or one that is a near
// miss of "grpcreuse" or of gRPC's own fields ("GrpcReuse",
// "methodConfg"), is an error. Errors start with "grpcreuse:" and name the
// field and the value.
func SplitServiceConfig(doc string) (grpcConfig string, policy *Policy, err error) {
	if strings.TrimSpace(doc) == "" {
		return doc, nil, nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &top); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return "", nil, errors.New("grpcreuse: service config is not valid JSON: " + syn.Error() +
				" (offset " + strconv.FormatInt(syn.Offset, 10) + ")")
		}
		return "", nil, errors.New("grpcreuse: service config is " + jsonfield.Clip([]byte(strings.TrimSpace(doc))) + "; must be a JSON object")
	}
	if top == nil { // "null"
		return "", nil, errors.New("grpcreuse: service config is null; must be a JSON object")
	}
	if _, err := jsonfield.Parse("", json.RawMessage(doc)); err != nil { // duplicates
		return "", nil, policyErr(err, "", "")
	}
	names := make([]string, 0, len(top))
	for k := range top {
		names = append(names, k)
	}
	slices.Sort(names)
	known := append([]string{PolicyKey}, grpcTopLevel...)
	for _, k := range names {
		if k == PolicyKey || slices.Contains(grpcTopLevel, k) {
			continue
		}
		if near := jsonfield.Nearest(k, known); near != "" {
			why := "gRPC ignores unknown service-config fields, so this would silently not apply"
			return "", nil, &PolicyError{Err: &ConfigError{Field: k, Rule: "is not a known field; did you mean " + strconv.Quote(near) + "? (" + why + ")"}}
		}
	}
	raw, ok := top[PolicyKey]
	if !ok {
		return doc, nil, nil
	}
	delete(top, PolicyKey)
	out, err := json.Marshal(top)
	if err != nil {
		return "", nil, errors.New("grpcreuse: re-encoding the service config: " + err.Error())
	}
	p, err := ParsePolicy(raw)
	if err != nil {
		return "", nil, err
	}
	return string(out), p, nil
}

// ParsePolicy parses the value of the "grpcreuse" key. null yields nil.
// Errors are *PolicyError values (or name the field in their text).
func ParsePolicy(raw json.RawMessage) (*Policy, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '{' {
		return nil, &PolicyError{Err: jsonfield.Errorf(PolicyKey, raw, "must be a JSON object")}
	}
	obj, err := jsonfield.Parse("", raw)
	if err != nil {
		return nil, policyErr(err, "", "")
	}
	entries, err := obj.Array("methodConfig")
	if err != nil {
		return nil, policyErr(err, "", "")
	}
	if err := obj.Done(); err != nil {
		return nil, policyErr(err, "", "")
	}
	p := &Policy{}
	for i, e := range entries {
		where := "methodConfig[" + strconv.Itoa(i) + "]"
		mp, err := parseMethodPolicy(e, where)
		if err != nil {
			return nil, err
		}
		p.MethodConfig = append(p.MethodConfig, mp)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// Validate checks a Policy built in Go the way ParsePolicy checks JSON.
func (p *Policy) Validate() error {
	seen := map[MethodName]int{}
	for i, e := range p.MethodConfig {
		where := "methodConfig[" + strconv.Itoa(i) + "]"
		if len(e.Name) == 0 {
			return &PolicyError{Err: &ConfigError{Field: "name", Value: "[]", Rule: "must list at least one {service, method} selector"}, Where: where}
		}
		for j, n := range e.Name {
			field := "name[" + strconv.Itoa(j) + "]"
			if n.Service == "" && n.Method != "" {
				return &PolicyError{Err: &ConfigError{Field: field + ".method", Value: strconv.Quote(n.Method),
					Rule: "must be empty when \"service\" is empty"}, Where: where}
			}
			if prev, dup := seen[n]; dup {
				return &PolicyError{Err: &ConfigError{Field: field, Value: nameJSON(n),
					Rule: "must not repeat a name of methodConfig[" + strconv.Itoa(prev) + "]"}, Where: where}
			}
			seen[n] = i
		}
		if e.CircuitBreaker != nil {
			if err := e.CircuitBreaker.Validate(); err != nil {
				return policyErr(err, "circuitBreaker.", where)
			}
		}
		if e.ConcurrencyLimit != nil {
			if err := e.ConcurrencyLimit.Validate(); err != nil {
				return policyErr(err, "concurrencyLimit.", where)
			}
		}
	}
	return nil
}

// MarshalJSON writes p as the value of the "grpcreuse" key, every field
// under its JSON name, so ParsePolicy of the result gives p back (nil
// marshals as null).
func (p *Policy) MarshalJSON() ([]byte, error) {
	if p == nil {
		return []byte("null"), nil
	}
	type nameJ struct {
		Service string `json:"service,omitempty"`
		Method  string `json:"method,omitempty"`
	}
	type entryJ struct {
		Name             []nameJ         `json:"name"`
		CircuitBreaker   *breaker.Config `json:"circuitBreaker,omitempty"`
		ConcurrencyLimit *LimiterConfig  `json:"concurrencyLimit,omitempty"`
	}
	out := struct {
		MethodConfig []entryJ `json:"methodConfig"`
	}{MethodConfig: make([]entryJ, 0, len(p.MethodConfig))}
	for _, e := range p.MethodConfig {
		names := make([]nameJ, 0, len(e.Name))
		for _, n := range e.Name {
			names = append(names, nameJ(n))
		}
		out.MethodConfig = append(out.MethodConfig, entryJ{names, e.CircuitBreaker, e.ConcurrencyLimit})
	}
	return json.Marshal(out)
}

func nameJSON(n MethodName) string {
	b, _ := json.Marshal(struct {
		Service string `json:"service,omitempty"`
		Method  string `json:"method,omitempty"`
	}{n.Service, n.Method})
	return jsonfield.Clip(b)
}

func parseMethodPolicy(raw json.RawMessage, where string) (MethodPolicy, error) {
	var mp MethodPolicy
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return mp, &PolicyError{Err: jsonfield.Errorf(where, raw, "must be a JSON object")}
	}
	obj, err := jsonfield.Parse("", raw)
	if err != nil {
		return mp, policyErr(err, "", where)
	}
	names, err := obj.Array("name")
	if err != nil {
		return mp, policyErr(err, "", where)
	}
	for j, nr := range names {
		field := "name[" + strconv.Itoa(j) + "]"
		nr = bytes.TrimSpace(nr)
		if len(nr) == 0 || nr[0] != '{' {
			return mp, &PolicyError{Err: jsonfield.Errorf(field, nr, "must be a JSON object such as {\"service\": \"pkg.Service\"}"), Where: where}
		}
		nobj, err := jsonfield.Parse(field, nr)
		if err != nil {
			return mp, policyErr(err, "", where)
		}
		var n MethodName
		if err := nobj.String("service", &n.Service); err != nil {
			return mp, policyErr(err, "", where)
		}
		if err := nobj.String("method", &n.Method); err != nil {
			return mp, policyErr(err, "", where)
		}
		if err := nobj.Done(); err != nil {
			return mp, policyErr(err, "", where)
		}
		mp.Name = append(mp.Name, n)
	}
	if obj.Has("circuitBreaker") {
		c, err := parseBreaker(obj)
		if err != nil {
			return mp, policyErr(err, "", where)
		}
		mp.CircuitBreaker = &c
	} else {
		obj.Raw("circuitBreaker") // known, for suggestions
	}
	if obj.Has("concurrencyLimit") {
		c, err := parseLimiter(obj)
		if err != nil {
			return mp, policyErr(err, "", where)
		}
		mp.ConcurrencyLimit = &c
	} else {
		obj.Raw("concurrencyLimit")
	}
	if err := obj.Done(); err != nil {
		return mp, policyErr(err, "", where)
	}
	return mp, nil
}

// maxJSONInt bounds every whole number of the policy before Validate
// applies each field's own range.
const maxJSONInt = 1 << 30

// intField reads a whole number; Validate then applies the field's range,
// so the error names the rule of that field.
func intField(obj *jsonfield.Object, name string, dst *int) error {
	r, ok := obj.Raw(name)
	if !ok {
		return nil
	}
	if len(r) > 0 && (r[0] == '-' || (r[0] >= '0' && r[0] <= '9')) {
		v, err := strconv.ParseInt(string(r), 10, 64)
		if err == nil && v >= -maxJSONInt && v <= maxJSONInt {
			*dst = int(v)
			return nil
		}
		if err == nil || errors.Is(err, strconv.ErrRange) {
			// Beyond every field's range: Validate, which names each field's own
			// range, never sees it.
			return jsonfield.Errorf(obj.Field(name), r, "must be within the field's range (none goes beyond ±"+strconv.Itoa(maxJSONInt)+")")
		}
	}
	return jsonfield.Errorf(obj.Field(name), r, "must be a whole number")
}

func parseBreaker(parent *jsonfield.Object) (breaker.Config, error) {
	c := breaker.DefaultConfig()
	obj, err := parent.Object("circuitBreaker")
	if err != nil {
		return c, err
	}
	scope := c.Scope.String()
	if err := obj.Enum("scope", &scope, "method", "target"); err != nil {
		return c, err
	}
	c.Scope = map[string]breaker.Scope{"method": breaker.ScopeMethod, "target": breaker.ScopeTarget}[scope]
	for _, f := range []struct {
		name string
		dst  *int
	}{
		{"consecutiveFailures", &c.ConsecutiveFailures}, {"minimumRequests", &c.MinimumRequests},
		{"windowBuckets", &c.WindowBuckets}, {"halfOpenProbes", &c.HalfOpenProbes}, {"maxBreakers", &c.MaxBreakers},
	} {
		if err := intField(obj, f.name, f.dst); err != nil {
			return c, err
		}
	}
	if err := obj.Float("failureRatio", &c.FailureRatio); err != nil {
		return c, err
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{{"window", &c.Window}, {"openTimeout", &c.OpenTimeout}, {"probeTimeout", &c.ProbeTimeout}} {
		if err := obj.Duration(f.name, f.dst); err != nil {
			return c, err
		}
	}
	list, err := obj.Array("failureCodes")
	if err != nil {
		return c, err
	}
	if list != nil {
		c.FailureCodes = make([]codes.Code, 0, len(list))
		for i, e := range list {
			var code codes.Code
			e = bytes.TrimSpace(e)
			if string(e) == "null" || code.UnmarshalJSON(e) != nil {
				return c, jsonfield.Errorf(obj.Field("failureCodes["+strconv.Itoa(i)+"]"), e, `must be a gRPC code name such as "UNAVAILABLE"`)
			}
			c.FailureCodes = append(c.FailureCodes, code)
		}
	}
	return c, obj.Done()
}

func parseLimiter(parent *jsonfield.Object) (LimiterConfig, error) {
	c := DefaultLimiterConfig()
	obj, err := parent.Object("concurrencyLimit")
	if err != nil {
		return c, err
	}
	scope := c.Scope.String()
	if err := obj.Enum("scope", &scope, "target", "method"); err != nil {
		return c, err
	}
	c.Scope = map[string]Scope{"target": ScopeTarget, "method": ScopeMethod}[scope]
	if err := readLimit(obj, &c.LimitConfig); err != nil {
		return c, err
	}
	for _, f := range []struct {
		name string
		dst  *int
	}{{"maxQueued", &c.MaxQueued}, {"maxKeys", &c.MaxKeys}} {
		if err := intField(obj, f.name, f.dst); err != nil {
			return c, err
		}
	}
	if err := obj.Duration("maxWait", &c.MaxWait); err != nil {
		return c, err
	}
	return c, obj.Done()
}
