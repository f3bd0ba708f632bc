package interceptors

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/internal/duration"
	"github.com/grpcreuse/grpcreuse/telemetry"
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
// are proto-JSON strings ("0.25s"). Unknown fields are ignored.
type Policy struct {
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
	Service, Method string
}

// SplitServiceConfig splits a service config document in two: the
// document without its "grpcreuse" key, for grpc.WithDefaultServiceConfig,
// and the parsed policy (nil if the document has none). An empty document
// is returned as is. Errors start with "grpcreuse:" and name the field and
// the value.
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
		return "", nil, errors.New("grpcreuse: service config is " + clip([]byte(strings.TrimSpace(doc))) + "; must be a JSON object")
	}
	if top == nil { // "null"
		return "", nil, errors.New("grpcreuse: service config is null; must be a JSON object")
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
func ParsePolicy(raw json.RawMessage) (*Policy, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	obj, err := object(PolicyKey, raw)
	if err != nil {
		return nil, err
	}
	p := &Policy{}
	var entries []json.RawMessage
	if r, ok := present(obj, "methodConfig"); ok {
		if err := json.Unmarshal(r, &entries); err != nil {
			return nil, fieldErr("methodConfig", r, "must be a list of method configs", "")
		}
	}
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
			return errors.New("grpcreuse: \"name\" is []; must list at least one {service, method} selector (" + where + ")")
		}
		for j, n := range e.Name {
			field := "name[" + strconv.Itoa(j) + "]"
			if n.Service == "" && n.Method != "" {
				return errors.New("grpcreuse: " + strconv.Quote(field+".method") + " is " + strconv.Quote(n.Method) +
					"; must be empty when \"service\" is empty (" + where + ")")
			}
			if prev, dup := seen[n]; dup {
				return errors.New("grpcreuse: " + strconv.Quote(field) + " is " + nameJSON(n) +
					"; must not repeat a name of methodConfig[" + strconv.Itoa(prev) + "] (" + where + ")")
			}
			seen[n] = i
		}
		if e.CircuitBreaker != nil {
			if err := e.CircuitBreaker.Validate(); err != nil {
				return rewrite(err, "circuitBreaker.", where)
			}
		}
		if e.ConcurrencyLimit != nil {
			if err := e.ConcurrencyLimit.Validate(); err != nil {
				return rewrite(err, "concurrencyLimit.", where)
			}
		}
	}
	return nil
}

func nameJSON(n MethodName) string {
	b, _ := json.Marshal(struct {
		Service string `json:"service,omitempty"`
		Method  string `json:"method,omitempty"`
	}{n.Service, n.Method})
	return clip(b)
}

// rewrite turns a package's ConfigError into the policy's spelling.
func rewrite(err error, prefix, where string) error {
	var be *breaker.ConfigError
	if errors.As(err, &be) {
		return errors.New("grpcreuse: " + strconv.Quote(prefix+be.Field) + " is " + be.Value + "; " + be.Rule + " (" + where + ")")
	}
	var ie *ConfigError
	if errors.As(err, &ie) {
		return errors.New("grpcreuse: " + strconv.Quote(prefix+ie.Field) + " is " + ie.Value + "; " + ie.Rule + " (" + where + ")")
	}
	return errors.New("grpcreuse: " + err.Error() + " (" + where + ")")
}

func parseMethodPolicy(raw json.RawMessage, where string) (MethodPolicy, error) {
	var mp MethodPolicy
	obj, err := object(where, raw)
	if err != nil {
		return mp, err
	}
	if r, ok := present(obj, "name"); ok {
		var names []json.RawMessage
		if json.Unmarshal(r, &names) != nil {
			return mp, fieldErr("name", r, "must be a list of {service, method} selectors", where)
		}
		for j, nr := range names {
			field := "name[" + strconv.Itoa(j) + "]"
			nobj, err := object(field, nr)
			if err != nil {
				return mp, withWhere(err, where)
			}
			var n MethodName
			if n.Service, err = str(nobj, field+".service", "service"); err != nil {
				return mp, withWhere(err, where)
			}
			if n.Method, err = str(nobj, field+".method", "method"); err != nil {
				return mp, withWhere(err, where)
			}
			mp.Name = append(mp.Name, n)
		}
	}
	if r, ok := present(obj, "circuitBreaker"); ok {
		c, err := parseBreaker(r)
		if err != nil {
			return mp, withWhere(err, where)
		}
		mp.CircuitBreaker = &c
	}
	if r, ok := present(obj, "concurrencyLimit"); ok {
		c, err := parseLimiter(r)
		if err != nil {
			return mp, withWhere(err, where)
		}
		mp.ConcurrencyLimit = &c
	}
	return mp, nil
}

func parseBreaker(raw json.RawMessage) (breaker.Config, error) {
	const p = "circuitBreaker."
	c := breaker.DefaultConfig()
	obj, err := object("circuitBreaker", raw)
	if err != nil {
		return c, err
	}
	if s, ok := present(obj, "scope"); ok {
		v, err := enum(s, p+"scope", "method", "target")
		if err != nil {
			return c, err
		}
		c.Scope = map[string]breaker.Scope{"method": breaker.ScopeMethod, "target": breaker.ScopeTarget}[v]
	}
	ints := []struct {
		name string
		dst  *int
	}{
		{"consecutiveFailures", &c.ConsecutiveFailures}, {"minimumRequests", &c.MinimumRequests},
		{"windowBuckets", &c.WindowBuckets}, {"halfOpenProbes", &c.HalfOpenProbes}, {"maxBreakers", &c.MaxBreakers},
	}
	for _, f := range ints {
		if err := intField(obj, f.name, p+f.name, f.dst); err != nil {
			return c, err
		}
	}
	if err := floatField(obj, "failureRatio", p+"failureRatio", &c.FailureRatio); err != nil {
		return c, err
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{{"window", &c.Window}, {"openTimeout", &c.OpenTimeout}} {
		if err := durField(obj, f.name, p+f.name, f.dst); err != nil {
			return c, err
		}
	}
	if r, ok := present(obj, "failureCodes"); ok {
		var list []json.RawMessage
		if json.Unmarshal(r, &list) != nil {
			return c, fieldErr(p+"failureCodes", r, `must be a list of gRPC code names such as "UNAVAILABLE"`, "")
		}
		c.FailureCodes = make([]codes.Code, 0, len(list))
		for i, e := range list {
			var code codes.Code
			e = bytes.TrimSpace(e)
			if string(e) == "null" || code.UnmarshalJSON(e) != nil {
				return c, fieldErr(p+"failureCodes["+strconv.Itoa(i)+"]", e, `must be a gRPC code name such as "UNAVAILABLE"`, "")
			}
			c.FailureCodes = append(c.FailureCodes, code)
		}
	}
	return c, nil
}

func parseLimiter(raw json.RawMessage) (LimiterConfig, error) {
	const p = "concurrencyLimit."
	c := DefaultLimiterConfig()
	obj, err := object("concurrencyLimit", raw)
	if err != nil {
		return c, err
	}
	if s, ok := present(obj, "scope"); ok {
		v, err := enum(s, p+"scope", "target", "method")
		if err != nil {
			return c, err
		}
		c.Scope = map[string]Scope{"target": ScopeTarget, "method": ScopeMethod}[v]
	}
	if s, ok := present(obj, "algorithm"); ok {
		v, err := enum(s, p+"algorithm", "fixed", "aimd")
		if err != nil {
			return c, err
		}
		c.Algorithm = map[string]Algorithm{"fixed": Fixed, "aimd": AIMD}[v]
	}
	for _, f := range []struct {
		name string
		dst  *int
	}{{"limit", &c.Limit}, {"minLimit", &c.MinLimit}, {"maxLimit", &c.MaxLimit}, {"maxQueued", &c.MaxQueued}, {"maxKeys", &c.MaxKeys}} {
		if err := intField(obj, f.name, p+f.name, f.dst); err != nil {
			return c, err
		}
	}
	if err := floatField(obj, "backoffRatio", p+"backoffRatio", &c.BackoffRatio); err != nil {
		return c, err
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{{"latencyThreshold", &c.LatencyThreshold}, {"maxWait", &c.MaxWait}} {
		if err := durField(obj, f.name, p+f.name, f.dst); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Chain is a Policy built into interceptors, keeping hold of the breakers
// and limiters behind them so their state can be shown.
type Chain struct {
	Unary    []grpc.UnaryClientInterceptor
	Stream   []grpc.StreamClientInterceptor
	breakers []*breaker.Registry
	limiters []*Limiter
}

// DialOptions returns the chain as dial options.
func (c *Chain) DialOptions() []grpc.DialOption { return dialOptions(c.Unary, c.Stream) }

// Breakers describes every breaker of the chain.
func (c *Chain) Breakers() []breaker.Status {
	var out []breaker.Status
	for _, r := range c.breakers {
		out = append(out, r.Snapshot()...)
	}
	return out
}

// Limiters describes every limiter of the chain.
func (c *Chain) Limiters() []LimiterStatus {
	var out []LimiterStatus
	for _, l := range c.limiters {
		out = append(out, l.Snapshot()...)
	}
	return out
}

// ClientChain returns the interceptors of Build.
func (p *Policy) ClientChain(tel ClientTelemetry, obs PolicyObservers) ([]grpc.UnaryClientInterceptor, []grpc.StreamClientInterceptor, error) {
	c, err := p.Build(tel, obs)
	if err != nil {
		return nil, nil, err
	}
	return c.Unary, c.Stream, nil
}

// DialOptions returns the interceptors of Build as dial options.
func (p *Policy) DialOptions(tel ClientTelemetry, obs PolicyObservers) ([]grpc.DialOption, error) {
	c, err := p.Build(tel, obs)
	if err != nil {
		return nil, err
	}
	return c.DialOptions(), nil
}

// Build validates the policy and builds its breakers, limiters and the
// recommended chain (telemetry, breaker, limiter), routing each call by
// gRPC's methodConfig matching rules.
func (p *Policy) Build(tel ClientTelemetry, obs PolicyObservers) (*Chain, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	bobs, lobs := obs.Breaker, obs.Limiter
	if bobs == nil {
		bobs = telemetry.Nop{}
	}
	if lobs == nil {
		lobs = telemetry.Nop{}
	}
	regs := make([]*breaker.Registry, len(p.MethodConfig))
	lims := make([]*Limiter, len(p.MethodConfig))
	anyB, anyL := false, false
	r := router{exact: map[string]int{}, service: map[string]int{}, def: -1}
	for i, e := range p.MethodConfig {
		var err error
		if e.CircuitBreaker != nil {
			if regs[i], err = breaker.New(breaker.WithConfig(*e.CircuitBreaker), breaker.WithObserver(bobs)); err != nil {
				return nil, err
			}
			anyB = true
		}
		if e.ConcurrencyLimit != nil {
			if lims[i], err = NewLimiter(WithLimiterConfig(*e.ConcurrencyLimit), WithLimiterObserver(lobs)); err != nil {
				return nil, err
			}
			anyL = true
		}
		for _, n := range e.Name {
			switch {
			case n.Service == "":
				r.def = i
			case n.Method == "":
				r.service[n.Service] = i
			default:
				r.exact["/"+n.Service+"/"+n.Method] = i
			}
		}
	}
	var b func(string) *breaker.Registry
	if anyB {
		b = func(method string) *breaker.Registry {
			if i := r.match(method); i >= 0 {
				return regs[i]
			}
			return nil
		}
	}
	var l func(string) *Limiter
	if anyL {
		l = func(method string) *Limiter {
			if i := r.match(method); i >= 0 {
				return lims[i]
			}
			return nil
		}
	}
	c := &Chain{}
	c.Unary, c.Stream = chain(tel, b, l)
	for _, r := range regs {
		if r != nil {
			c.breakers = append(c.breakers, r)
		}
	}
	for _, l := range lims {
		if l != nil {
			c.limiters = append(c.limiters, l)
		}
	}
	return c, nil
}

// PolicyObservers are where the breakers and limiters built from a Policy
// report; nil means telemetry.Nop.
type PolicyObservers struct {
	Breaker telemetry.BreakerObserver
	Limiter telemetry.LimiterObserver
}

// router finds the methodConfig entry of a full method name.
type router struct {
	exact   map[string]int // "/service/method"
	service map[string]int
	def     int // -1: none

	// memo holds match's answer per method seen, copy-on-write, so the
	// breaker and limiter interceptors of a call, which each route it,
	// share one lock-free lookup instead of resolving the rules twice.
	memo   atomic.Pointer[map[string]int]
	memoMu sync.Mutex
}

// maxMemoMethods bounds the memo: method names are caller input.
const maxMemoMethods = 1024

// match returns the index of the methodConfig entry for method, or -1.
func (r *router) match(method string) int {
	if m := r.memo.Load(); m != nil {
		if i, ok := (*m)[method]; ok {
			return i
		}
	}
	i := r.resolve(method)
	r.memoMu.Lock()
	defer r.memoMu.Unlock()
	old := r.memo.Load()
	if old == nil || len(*old) < maxMemoMethods {
		next := make(map[string]int, 1)
		if old != nil {
			next = make(map[string]int, len(*old)+1)
			for k, v := range *old {
				next[k] = v
			}
		}
		next[method] = i
		r.memo.Store(&next)
	}
	return i
}

// resolve applies gRPC's methodConfig rules: exact method, then service,
// then the default.
func (r *router) resolve(method string) int {
	if i, ok := r.exact[method]; ok {
		return i
	}
	svc := strings.TrimPrefix(method, "/")
	if j := strings.LastIndexByte(svc, '/'); j >= 0 {
		svc = svc[:j]
	}
	if i, ok := r.service[svc]; ok {
		return i
	}
	return r.def
}

// JSON helpers. Every error names the field's path and the value.

func fieldErr(field string, raw []byte, rule, where string) error {
	msg := "grpcreuse: " + strconv.Quote(field) + " is " + clip(bytes.TrimSpace(raw)) + "; " + rule
	if where != "" {
		msg += " (" + where + ")"
	}
	return errors.New(msg)
}

func withWhere(err error, where string) error {
	return errors.New(err.Error() + " (" + where + ")")
}

func clip(raw []byte) string {
	const max = 40
	if len(raw) > max {
		return string(raw[:max]) + "…"
	}
	return string(raw)
}

// present returns obj[name] unless it is absent or null.
func present(obj map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	r, ok := obj[name]
	if !ok {
		return nil, false
	}
	r = bytes.TrimSpace(r)
	if string(r) == "null" {
		return nil, false
	}
	return r, true
}

func object(field string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	var obj map[string]json.RawMessage
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &obj) != nil {
		return nil, fieldErr(field, raw, "must be a JSON object", "")
	}
	return obj, nil
}

func str(obj map[string]json.RawMessage, path, name string) (string, error) {
	r, ok := present(obj, name)
	if !ok {
		return "", nil
	}
	var s string
	if json.Unmarshal(r, &s) != nil {
		return "", fieldErr(path, r, "must be a string", "")
	}
	return s, nil
}

func enum(raw json.RawMessage, path string, allowed ...string) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		for _, a := range allowed {
			if s == a {
				return s, nil
			}
		}
	}
	return "", fieldErr(path, raw, "must be "+quoteAll(allowed), "")
}

func quoteAll(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, " or ")
}

func isNumber(r []byte) bool { return len(r) > 0 && (r[0] == '-' || (r[0] >= '0' && r[0] <= '9')) }

func intField(obj map[string]json.RawMessage, name, path string, dst *int) error {
	r, ok := present(obj, name)
	if !ok {
		return nil
	}
	if isNumber(r) {
		v, err := strconv.ParseInt(string(r), 10, 64)
		if err == nil && v >= -maxLimitValue && v <= maxLimitValue {
			*dst = int(v)
			return nil
		}
		if err == nil || errors.Is(err, strconv.ErrRange) {
			return fieldErr(path, r, "must be a whole number between 0 and "+strconv.Itoa(maxLimitValue), "")
		}
	}
	return fieldErr(path, r, "must be a whole number", "")
}

func floatField(obj map[string]json.RawMessage, name, path string, dst *float64) error {
	r, ok := present(obj, name)
	if !ok {
		return nil
	}
	if isNumber(r) {
		if v, err := strconv.ParseFloat(string(r), 64); err == nil {
			*dst = v
			return nil
		}
	}
	return fieldErr(path, r, "must be a number", "")
}

func durField(obj map[string]json.RawMessage, name, path string, dst *time.Duration) error {
	r, ok := present(obj, name)
	if !ok {
		return nil
	}
	d, err := duration.FromJSON(path, r, *dst)
	if err != nil {
		return errors.New("grpcreuse: " + err.Error())
	}
	*dst = d
	return nil
}
