package jsonfield

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    time.Duration
		wantErr string
	}{
		{name: "absent", raw: "", want: 7 * time.Second},
		{name: "null", raw: "null", want: 7 * time.Second},
		{name: "seconds", raw: `"30s"`, want: 30 * time.Second},
		{name: "fraction", raw: `"0.25s"`, want: 250 * time.Millisecond},
		{name: "nanos", raw: `"0.000000001s"`, want: time.Nanosecond},
		{name: "zero", raw: `"0s"`, want: 0},
		{name: "negative", raw: `"-1.5s"`, want: -1500 * time.Millisecond},
		{name: "number", raw: `30`, wantErr: `"f" is 30; must be a duration string`},
		{name: "no unit", raw: `"30"`, wantErr: `"f" is "30"; must be a duration string`},
		{name: "go syntax", raw: `"1m"`, wantErr: `"f" is "1m"`},
		{name: "garbage", raw: `"abc"`, wantErr: `"f" is "abc"`},
		{name: "object", raw: `{}`, wantErr: `"f" is {}`},
		{name: "too big", raw: `"9999999999999s"`, wantErr: `"f" is "9999999999999s"`},
		{name: "long value clipped", raw: `"` + strings.Repeat("9", 100) + `"`, wantErr: `…; must be`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDuration("f", []byte(tt.raw), 7*time.Second)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDuration(%s) error = %v, want containing %q", tt.raw, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDuration(%s) = %v, %v; want %v", tt.raw, got, err, tt.want)
			}
		})
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{`"1s"`, `"0.5s"`, `"-3s"`, `1`, `"x"`, `null`, `"315576000000s"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		d, err := ParseDuration("f", []byte(raw), time.Second)
		if err == nil && d != time.Second && !strings.HasPrefix(strings.TrimSpace(raw), `"`) {
			t.Fatalf("ParseDuration(%q) accepted a non-string: %v", raw, d)
		}
	})
}
