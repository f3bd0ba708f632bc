package jsonfield

import (
	"strings"
	"testing"
	"time"
)

// parseSample reads the shape the toolkit's configs have: numbers, a
// duration, a nested object, then Done.
func parseSample(raw string) error {
	o, err := Parse("", []byte(raw))
	if err != nil {
		return err
	}
	n, d := 1, time.Second
	var f float64
	var b bool
	var s string
	if err := o.Int("subchannelsPerEndpoint", &n, 1, 64); err != nil {
		return err
	}
	if err := o.Duration("idleTimeout", &d); err != nil {
		return err
	}
	if err := o.Float("ratio", &f); err != nil {
		return err
	}
	if err := o.Bool("enabled", &b); err != nil {
		return err
	}
	if err := o.Enum("algorithm", &s, "fixed", "aimd"); err != nil {
		return err
	}
	sub, err := o.Object("ejection")
	if err != nil {
		return err
	}
	if err := sub.Int("consecutiveFailures", &n, 0, 10); err != nil {
		return err
	}
	if err := sub.Done(); err != nil {
		return err
	}
	if _, err := o.Array("codes"); err != nil {
		return err
	}
	return o.Done()
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, raw, wantErr string
	}{
		{name: "empty", raw: ``},
		{name: "null", raw: `null`},
		{name: "all fields", raw: `{"subchannelsPerEndpoint": 3, "idleTimeout": "2s", "ratio": 0.5, "enabled": true, "algorithm": "aimd", "ejection": {"consecutiveFailures": 2}, "codes": []}`},
		{name: "null member is absent", raw: `{"subchannelsPerEndpoint": null}`},
		{name: "not an object", raw: `[1]`, wantErr: `"config" is [1]; must be a JSON object`},
		{name: "trailing data", raw: `{} {}`, wantErr: `must be a JSON object`},
		{name: "duplicate", raw: `{"ratio": 1, "ratio": 2}`, wantErr: `"ratio" appears more than once`},
		{name: "nested duplicate", raw: `{"ejection": {"consecutiveFailures": 1, "consecutiveFailures": 1}}`, wantErr: `"ejection.consecutiveFailures" appears more than once`},
		{name: "typo suggests", raw: `{"subchannelPerEndpoint": 8}`, wantErr: `"subchannelPerEndpoint" is not a known field; did you mean "subchannelsPerEndpoint"?`},
		{name: "case differs suggests", raw: `{"SubchannelsPerEndpoint": 8}`, wantErr: `did you mean "subchannelsPerEndpoint"?`},
		{name: "nested typo", raw: `{"ejection": {"consecutiveFailure": 1}}`, wantErr: `"ejection.consecutiveFailure" is not a known field; did you mean "consecutiveFailures"?`},
		{name: "far name lists known", raw: `{"zzz": 1}`, wantErr: `"zzz" is not a known field; known fields: algorithm, codes, ejection, enabled, idleTimeout, ratio, subchannelsPerEndpoint`},
		{name: "int range", raw: `{"subchannelsPerEndpoint": 65}`, wantErr: `"subchannelsPerEndpoint" is 65; must be between 1 and 64`},
		{name: "int type", raw: `{"subchannelsPerEndpoint": "3"}`, wantErr: `"subchannelsPerEndpoint" is "3"; must be a whole number between 1 and 64`},
		{name: "int fraction", raw: `{"subchannelsPerEndpoint": 1.5}`, wantErr: `must be a whole number`},
		{name: "duration", raw: `{"idleTimeout": 30}`, wantErr: `"idleTimeout" is 30; must be a duration string`},
		{name: "float", raw: `{"ratio": "x"}`, wantErr: `"ratio" is "x"; must be a number`},
		{name: "bool", raw: `{"enabled": 1}`, wantErr: `"enabled" is 1; must be true or false`},
		{name: "enum", raw: `{"algorithm": "vegas"}`, wantErr: `"algorithm" is "vegas"; must be "fixed" or "aimd"`},
		{name: "nested not object", raw: `{"ejection": 3}`, wantErr: `"ejection" is 3; must be a JSON object`},
		{name: "array", raw: `{"codes": {}}`, wantErr: `"codes" is {}; must be a JSON array`},
		{name: "huge value clipped", raw: `{"ratio": "` + strings.Repeat("a", 100) + `"}`, wantErr: `aaaa…; must be a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := parseSample(tt.raw)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("parse(%s) = %v, want nil", tt.raw, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("parse(%s) = %v, want error containing %q", tt.raw, err, tt.wantErr)
			}
		})
	}
}

func TestDoneExtraIsAccepted(t *testing.T) {
	o, err := Parse("", []byte(`{"comment": "x"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Done("comment"); err != nil {
		t.Fatalf("Done(comment) = %v, want nil", err)
	}
}

func TestNearest(t *testing.T) {
	known := []string{"circuitBreaker", "concurrencyLimit", "name"}
	for in, want := range map[string]string{"circuitBreakr": "circuitBreaker", "mehtod": "", "nmae": "name", "x": ""} {
		if got := Nearest(in, known); got != want {
			t.Errorf("Nearest(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{}`, `{"ratio": 1}`, `{"ejection": {"consecutiveFailures": 1}}`, `{"a":1,"a":2}`, `[`, `{"idleTimeout": "1.5s"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		_ = parseSample(raw) // must not panic
	})
}
