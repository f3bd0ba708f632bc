package interceptors_test

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// TestShedderConfigValidate: every rule of ShedderConfig has a row; each
// error names the field and the value.
func TestShedderConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*interceptors.ShedderConfig)
		wantErr string // "" for valid
	}{
		{name: "defaults", edit: func(*interceptors.ShedderConfig) {}},
		{name: "adaptive defaults", edit: func(c *interceptors.ShedderConfig) { c.Adaptive = true }},
		{name: "adaptive with aimd", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.Algorithm = true, interceptors.AIMD }, wantErr: `"algorithm" is "aimd"`},
		{name: "adaptive min above limit", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.MinLimit = true, 101 }, wantErr: `"minLimit" is 101`},
		{name: "adaptive max below limit", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.MaxLimit = true, 99 }, wantErr: `"maxLimit" is 99`},
		{name: "tolerance below 1", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.Tolerance = true, 0.9 }, wantErr: `"tolerance" is 0.9`},
		{name: "tolerance NaN", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.Tolerance = true, math.NaN() }, wantErr: `"tolerance" is NaN`},
		{name: "zero window", edit: func(c *interceptors.ShedderConfig) { c.Adaptive, c.Window = true, 0 }, wantErr: `"window" is "0s"`},
		{name: "tolerance ignored when not adaptive", edit: func(c *interceptors.ShedderConfig) { c.Tolerance = 0 }},
		{name: "zero stream limit", edit: func(c *interceptors.ShedderConfig) { c.StreamLimit = 0 }, wantErr: `"streamLimit" is 0`},
		{name: "exempt method and service", edit: func(c *interceptors.ShedderConfig) {
			c.Exempt = []string{"/pkg.Service/Watch", "/grpc.reflection.v1.ServerReflection/"}
		}},
		{name: "exempt bad entry", edit: func(c *interceptors.ShedderConfig) { c.Exempt = []string{"pkg.Service/Watch"} },
			wantErr: `"exempt" is "pkg.Service/Watch"`},
		{name: "exempt twice", edit: func(c *interceptors.ShedderConfig) { c.Exempt = []string{"/pkg.S/", "/pkg.S/"} },
			wantErr: `"exempt" is "/pkg.S/"; is listed twice`},
		{name: "criticality bad key", edit: func(c *interceptors.ShedderConfig) {
			c.Criticality = map[string]interceptors.Criticality{"pkg.Service/Method": interceptors.Sheddable}
		}, wantErr: `"criticality" is "pkg.Service/Method"`},
		{name: "criticality bad value", edit: func(c *interceptors.ShedderConfig) {
			c.Criticality = map[string]interceptors.Criticality{"/pkg.Service/": 7}
		}, wantErr: `"criticality" is "Criticality(7)"`},
		{name: "criticality good keys", edit: func(c *interceptors.ShedderConfig) {
			c.Criticality = map[string]interceptors.Criticality{"/pkg.Service/": interceptors.Sheddable, "/pkg.Service/M": interceptors.Critical}
		}},
		{name: "sheddable share zero", edit: func(c *interceptors.ShedderConfig) { c.SheddableShare = 0 }, wantErr: `"sheddableShare" is 0`},
		{name: "sheddable share above 1", edit: func(c *interceptors.ShedderConfig) { c.SheddableShare = 1.5 }, wantErr: `"sheddableShare" is 1.5`},
		{name: "negative maxWait", edit: func(c *interceptors.ShedderConfig) { c.MaxWait = -time.Millisecond }, wantErr: `"maxWait" is "-0.001s"`},
		{name: "maxWait above an hour", edit: func(c *interceptors.ShedderConfig) { c.MaxWait = 2 * time.Hour }, wantErr: `"maxWait" is "7200s"`},
		{name: "zero maxWait", edit: func(c *interceptors.ShedderConfig) { c.MaxWait = 0 }},
		{name: "negative pushback", edit: func(c *interceptors.ShedderConfig) { c.Pushback = -time.Millisecond }, wantErr: `"pushback" is "-0.001s"`},
		{name: "zero pushback", edit: func(c *interceptors.ShedderConfig) { c.Pushback = 0 }},
		{name: "negative log interval", edit: func(c *interceptors.ShedderConfig) { c.LogInterval = -time.Second }, wantErr: `"logInterval" is "-1s"`},
		{name: "min samples", edit: func(c *interceptors.ShedderConfig) { c.MinSamples = 0 }, wantErr: `"minSamples" is 0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := interceptors.DefaultShedderConfig()
			tc.edit(&c)
			_, err := interceptors.NewShedder(interceptors.WithShedderConfig(c))
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("NewShedder = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("NewShedder = %v, want an error containing %s", err, tc.wantErr)
			}
		})
	}
}

// TestCriticalityText: a Criticality reads and writes as the header
// spells it, and anything else is an error naming the value.
func TestCriticalityText(t *testing.T) {
	for _, c := range []interceptors.Criticality{interceptors.Critical, interceptors.Sheddable} {
		b, err := c.MarshalText()
		if err != nil || string(b) != c.String() {
			t.Fatalf("%v.MarshalText() = %q, %v; want %q", c, b, err, c.String())
		}
		var back interceptors.Criticality = 7
		if err := back.UnmarshalText(b); err != nil || back != c {
			t.Fatalf("UnmarshalText(%q) = %v, %v; want %v", b, back, err, c)
		}
	}
	for _, v := range []string{"", "Critical", "SHEDDABLE", " sheddable", "batch"} {
		c := interceptors.Sheddable
		err := c.UnmarshalText([]byte(v))
		if err == nil || !strings.Contains(err.Error(), strconv.Quote(v)) || c != interceptors.Sheddable {
			t.Errorf("UnmarshalText(%q): %v, left %v; want an error naming %q and c unchanged", v, err, c, v)
		}
	}
	if _, err := interceptors.Criticality(5).MarshalText(); err == nil || !strings.Contains(err.Error(), "5") {
		t.Errorf("Criticality(5).MarshalText(): %v; want an error naming 5", err)
	}
	var m map[string]interceptors.Criticality
	if err := json.Unmarshal([]byte(`{"/pkg.S/M":"sheddable"}`), &m); err != nil || m["/pkg.S/M"] != interceptors.Sheddable {
		t.Errorf("JSON map: %v, %v", m, err)
	}
}
