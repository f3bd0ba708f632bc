package interceptors_test

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// randomShedderConfig draws every field from ordinary values and edge
// ones (NaN, infinities, negatives, huge numbers), valid or not: the
// caller keeps those Validate accepts.
func randomShedderConfig(r *rand.Rand) interceptors.ShedderConfig {
	pick := func(vs ...any) any { return vs[r.IntN(len(vs))] }
	ints := func() int { return pick(0, 1, 2, 3, 10, 64, 100, 1<<30, 1<<30+1, -1, 1<<40, -(1 << 40)).(int) }
	floats := func() float64 {
		return pick(0.0, 0.5, 0.9, 1.0, 1.5, 2.0, 100.0, 1e308, -1.0, math.NaN(), math.Inf(1), math.Inf(-1), 5e-324).(float64)
	}
	durs := func() time.Duration {
		return pick(time.Duration(0), time.Nanosecond, 1500*time.Microsecond, 20*time.Millisecond, time.Second, time.Hour, time.Hour+1, -time.Second, time.Duration(math.MaxInt64)).(time.Duration)
	}
	c := interceptors.DefaultShedderConfig()
	if r.IntN(2) == 0 {
		c.Algorithm = interceptors.AIMD
	}
	c.Limit, c.MinLimit, c.MaxLimit = ints(), ints(), ints()
	if r.IntN(2) == 0 { // often coherent, so that AIMD and adaptive configs pass too
		c.Limit, c.MinLimit, c.MaxLimit = 10+r.IntN(50), 1+r.IntN(10), 60+r.IntN(100)
	}
	c.BackoffRatio, c.LatencyThreshold = floats(), durs()
	c.Adaptive = r.IntN(2) == 0
	c.Tolerance, c.Window = floats(), durs()
	c.MinSamples, c.StreamLimit = ints(), ints()
	if r.IntN(2) == 0 {
		c.MinSamples, c.StreamLimit = 1+r.IntN(100), 1+r.IntN(1000)
		c.BackoffRatio, c.Tolerance, c.Window = 0.9, 2, 50*time.Millisecond
	}
	c.SheddableShare = floats()
	if r.IntN(2) == 0 {
		c.SheddableShare = 0.25
	}
	c.MaxWait, c.Pushback, c.LogInterval = durs(), durs(), durs()
	if r.IntN(2) == 0 {
		c.Criticality = map[string]interceptors.Criticality{"/a.B/": interceptors.Sheddable, "/a.B/C": interceptors.Critical}
	}
	if r.IntN(2) == 0 {
		c.Exempt = []string{"/a.B/D", "/x.Y/"}
	}
	return c
}

// TestShedderConfigJSONRoundTripRandom: every config Validate accepts
// marshals, and reads back as itself (a parsed config marshals back to the
// JSON it came from: DESIGN), whatever its fields an algorithm ignores hold.
func TestShedderConfigJSONRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	valid := 0
	for i := 0; i < 20000 && valid < 2000; i++ {
		c := randomShedderConfig(r)
		if c.Validate() != nil {
			continue
		}
		valid++
		raw, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("a valid config does not marshal: %v\n%+v", err, c)
		}
		var back interceptors.ShedderConfig
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("a valid config's JSON does not read back: %v\n%s", err, raw)
		}
		if c.Exempt == nil {
			c.Exempt = []string{}
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip of %s:\n got %+v\nwant %+v", raw, back, c)
		}
	}
	if valid < 100 {
		t.Fatalf("only %d valid configs drawn", valid)
	}
}

// TestShedderConfigJSONHostile: hostile documents are errors naming the
// field (a *ConfigError), never a panic nor a default.
func TestShedderConfigJSONHostile(t *testing.T) {
	long := strings.Repeat("9", 1<<20)
	for _, tc := range []struct{ doc, field string }{
		{`{"tolerance": 1e400}`, "tolerance"},
		{`{"tolerance": "NaN"}`, "tolerance"},
		{`{"sheddableShare": "Infinity"}`, "sheddableShare"},
		{`{"limit": 1e3}`, "limit"},
		{`{"limit": ` + long + `}`, "limit"},
		{`{"limit": {"a": 1}}`, "limit"},
		{`{"adaptive": {"a": 1}}`, "adaptive"},
		{`{"window": {"seconds": 1}}`, "window"},
		{`{"window": "` + long + `s"}`, "window"},
		{`{"pushback": "-1s"}`, "pushback"},
		{`{"criticality": {"/a.B/": "sheddable", "/a.B/": "critical"}}`, "criticality./a.B/"},
		{`{"criticality": {"": "sheddable"}}`, "criticality"},
		{`{"criticality": {"/a.B/": {"x": 1}}}`, "criticality./a.B/"},
		{`{"criticality": ["/a.B/"]}`, "criticality"},
		{`{"exempt": [{"a": 1}]}`, "exempt[0]"},
		{`{"exempt": "/a.B/"}`, "exempt"},
		{`{"": 1}`, ""},
	} {
		var c interceptors.ShedderConfig
		err := json.Unmarshal([]byte(tc.doc), &c)
		var ce *interceptors.ConfigError
		if err == nil || !errors.As(err, &ce) {
			t.Errorf("%.60s: %v, want a *ConfigError", tc.doc, err)
			continue
		}
		if ce.Field != tc.field {
			t.Errorf("%.60s: field %q (%v), want %q", tc.doc, ce.Field, err, tc.field)
		}
		if len(err.Error()) > 300 {
			t.Errorf("%.60s: error of %d bytes, want it clipped", tc.doc, len(err.Error()))
		}
	}
}
