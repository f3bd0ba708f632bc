package balancer

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

func TestParseConfig(t *testing.T) {
	def := defaultConfig()
	with := func(f func(c *Config)) *Config {
		c := defaultConfig()
		f(c)
		return c
	}
	tests := []struct {
		name    string
		json    string
		want    *Config
		wantErr string
	}{
		// Defaults.
		{name: "empty object", json: `{}`, want: def},
		{name: "null", json: `null`, want: def},
		{name: "empty input", json: ``, want: def},
		{name: "null fields take defaults", json: `{"choiceCount":null,"ejection":null,"subchannelIdleTimeout":null}`, want: def},
		{name: "unknown field (issue 11)", json: `{"subchannelPerEndpoint":8}`, wantErr: `grpcreuse_least_loaded: "subchannelPerEndpoint" is not a known field; did you mean "subchannelsPerEndpoint"?`},
		{name: "unknown field far from any", json: `{"futureField":{"x":1}}`, wantErr: `grpcreuse_least_loaded: "futureField" is not a known field; known fields: choiceCount, ejection,`},
		{name: "unknown ejection field", json: `{"ejection":{"consecutiveFailure":3}}`, wantErr: `"ejection.consecutiveFailure" is not a known field; did you mean "consecutiveFailures"?`},
		{name: "field names are case-sensitive", json: `{"ChoiceCount":3}`, wantErr: `"ChoiceCount" is not a known field; did you mean "choiceCount"?`},
		{name: "duplicate field", json: `{"choiceCount":3,"choiceCount":4}`, wantErr: `grpcreuse_least_loaded: "choiceCount" appears more than once`},
		{name: "duplicate ejection field", json: `{"ejection":{"maxEjectionPercent":3,"maxEjectionPercent":3}}`, wantErr: `"ejection.maxEjectionPercent" appears more than once`},
		{name: "truncated object", json: `{"choiceCount":3`, wantErr: `"config" is {"choiceCount":3; must be a JSON object`},
		{name: "config not an object", json: `[1]`, wantErr: `grpcreuse_least_loaded: "config" is [1]; must be a JSON object`},
		{name: "config is a number", json: `5`, wantErr: `"config" is 5; must be a JSON object`},

		// subchannelsPerEndpoint.
		{name: "subchannelsPerEndpoint 1", json: `{"subchannelsPerEndpoint":1}`, want: def},
		{name: "subchannelsPerEndpoint 4", json: `{"subchannelsPerEndpoint":4}`, want: with(func(c *Config) { c.SubchannelsPerEndpoint = 4 })},
		{name: "subchannelsPerEndpoint 0", json: `{"subchannelsPerEndpoint":0}`, wantErr: `grpcreuse_least_loaded: "subchannelsPerEndpoint" is 0; must be between 1 and 64`},
		{name: "subchannelsPerEndpoint above max", json: `{"subchannelsPerEndpoint":5}`, wantErr: `grpcreuse_least_loaded: "subchannelsPerEndpoint" is 5; must be between 1 and "maxSubchannelsPerEndpoint" (4)`},
		{name: "subchannelsPerEndpoint string", json: `{"subchannelsPerEndpoint":"2"}`, wantErr: `"subchannelsPerEndpoint" is "2"; must be a whole number between 1 and 64`},
		{name: "subchannelsPerEndpoint fraction", json: `{"subchannelsPerEndpoint":1.5}`, wantErr: `"subchannelsPerEndpoint" is 1.5; must be a whole number between 1 and 64`},

		// maxSubchannelsPerEndpoint.
		{name: "maxSubchannelsPerEndpoint 64", json: `{"maxSubchannelsPerEndpoint":64,"subchannelsPerEndpoint":64}`, want: with(func(c *Config) { c.MaxSubchannelsPerEndpoint, c.SubchannelsPerEndpoint = 64, 64 })},
		{name: "maxSubchannelsPerEndpoint 1", json: `{"maxSubchannelsPerEndpoint":1}`, want: with(func(c *Config) { c.MaxSubchannelsPerEndpoint = 1 })},
		{name: "maxSubchannelsPerEndpoint 0", json: `{"maxSubchannelsPerEndpoint":0}`, wantErr: `"maxSubchannelsPerEndpoint" is 0; must be between 1 and 64`},
		{name: "maxSubchannelsPerEndpoint 65", json: `{"maxSubchannelsPerEndpoint":65}`, wantErr: `"maxSubchannelsPerEndpoint" is 65; must be between 1 and 64`},
		{name: "maxSubchannelsPerEndpoint negative", json: `{"maxSubchannelsPerEndpoint":-3}`, wantErr: `"maxSubchannelsPerEndpoint" is -3; must be between 1 and 64`},
		{name: "maxSubchannelsPerEndpoint huge", json: `{"maxSubchannelsPerEndpoint":99999999999999999999}`, wantErr: `"maxSubchannelsPerEndpoint" is 99999999999999999999; must be a whole number`},

		// targetStreamsPerSubchannel.
		{name: "targetStreamsPerSubchannel 1", json: `{"targetStreamsPerSubchannel":1}`, want: with(func(c *Config) { c.TargetStreamsPerSubchannel = 1 })},
		{name: "targetStreamsPerSubchannel 100000", json: `{"targetStreamsPerSubchannel":100000}`, want: with(func(c *Config) { c.TargetStreamsPerSubchannel = 100000 })},
		{name: "targetStreamsPerSubchannel 0", json: `{"targetStreamsPerSubchannel":0}`, wantErr: `"targetStreamsPerSubchannel" is 0; must be between 1 and 100000`},
		{name: "targetStreamsPerSubchannel 100001", json: `{"targetStreamsPerSubchannel":100001}`, wantErr: `"targetStreamsPerSubchannel" is 100001; must be between 1 and 100000`},
		{name: "targetStreamsPerSubchannel bool", json: `{"targetStreamsPerSubchannel":true}`, wantErr: `"targetStreamsPerSubchannel" is true; must be a whole number`},

		// choiceCount.
		{name: "choiceCount 2", json: `{"choiceCount":2}`, want: def},
		{name: "choiceCount 10", json: `{"choiceCount":10}`, want: with(func(c *Config) { c.ChoiceCount = 10 })},
		{name: "choiceCount 1", json: `{"choiceCount":1}`, wantErr: `grpcreuse_least_loaded: "choiceCount" is 1; must be between 2 and 10`},
		{name: "choiceCount 11 is not clamped", json: `{"choiceCount":11}`, wantErr: `grpcreuse_least_loaded: "choiceCount" is 11; must be between 2 and 10`},

		// subchannelIdleTimeout.
		{name: "subchannelIdleTimeout", json: `{"subchannelIdleTimeout":"0.25s"}`, want: with(func(c *Config) { c.SubchannelIdleTimeout = 250 * time.Millisecond })},
		{name: "subchannelIdleTimeout zero", json: `{"subchannelIdleTimeout":"0s"}`, wantErr: `grpcreuse_least_loaded: "subchannelIdleTimeout" is "0s"; must be greater than 0s`},
		{name: "subchannelIdleTimeout negative", json: `{"subchannelIdleTimeout":"-1s"}`, wantErr: `"subchannelIdleTimeout" is "-1s"; must be greater than 0s`},
		{name: "subchannelIdleTimeout number", json: `{"subchannelIdleTimeout":30}`, wantErr: `grpcreuse_least_loaded: "subchannelIdleTimeout" is 30; must be a duration string`},
		{name: "subchannelIdleTimeout go syntax", json: `{"subchannelIdleTimeout":"1m"}`, wantErr: `"subchannelIdleTimeout" is "1m"; must be a duration string`},

		// ejection.
		{name: "ejection not an object", json: `{"ejection":5}`, wantErr: `grpcreuse_least_loaded: "ejection" is 5; must be a JSON object`},
		{name: "ejection empty", json: `{"ejection":{}}`, want: def},
		{name: "consecutiveFailures 0 disables", json: `{"ejection":{"consecutiveFailures":0}}`, want: with(func(c *Config) { c.Ejection.ConsecutiveFailures = 0 })},
		{name: "consecutiveFailures 1000000", json: `{"ejection":{"consecutiveFailures":1000000}}`, want: with(func(c *Config) { c.Ejection.ConsecutiveFailures = 1000000 })},
		{name: "consecutiveFailures negative", json: `{"ejection":{"consecutiveFailures":-1}}`, wantErr: `grpcreuse_least_loaded: "ejection.consecutiveFailures" is -1; must be between 0 and 1000000`},
		{name: "consecutiveFailures too big", json: `{"ejection":{"consecutiveFailures":1000001}}`, wantErr: `"ejection.consecutiveFailures" is 1000001; must be between 0 and 1000000`},
		{name: "baseEjectionTime", json: `{"ejection":{"baseEjectionTime":"1.5s"}}`, want: with(func(c *Config) { c.Ejection.BaseEjectionTime = 1500 * time.Millisecond })},
		{name: "baseEjectionTime zero", json: `{"ejection":{"baseEjectionTime":"0s"}}`, wantErr: `grpcreuse_least_loaded: "ejection.baseEjectionTime" is "0s"; must be greater than 0s`},
		{name: "baseEjectionTime garbage", json: `{"ejection":{"baseEjectionTime":"soon"}}`, wantErr: `"ejection.baseEjectionTime" is "soon"; must be a duration string`},
		{name: "baseEjectionTime above default max raises the default", json: `{"ejection":{"baseEjectionTime":"600s"}}`, want: with(func(c *Config) {
			c.Ejection.BaseEjectionTime, c.Ejection.MaxEjectionTime = 600*time.Second, 600*time.Second
		})},
		{name: "maxEjectionTime", json: `{"ejection":{"maxEjectionTime":"45s"}}`, want: with(func(c *Config) { c.Ejection.MaxEjectionTime = 45 * time.Second })},
		{name: "maxEjectionTime equal to base", json: `{"ejection":{"baseEjectionTime":"2s","maxEjectionTime":"2s"}}`, want: with(func(c *Config) {
			c.Ejection.BaseEjectionTime, c.Ejection.MaxEjectionTime = 2*time.Second, 2*time.Second
		})},
		{name: "maxEjectionTime below base", json: `{"ejection":{"baseEjectionTime":"10s","maxEjectionTime":"5s"}}`, wantErr: `grpcreuse_least_loaded: "ejection.maxEjectionTime" is "5s"; must be at least "ejection.baseEjectionTime" (10s)`},
		{name: "maxEjectionTime bad", json: `{"ejection":{"maxEjectionTime":true}}`, wantErr: `"ejection.maxEjectionTime" is true; must be a duration string`},
		{name: "maxEjectionPercent 0", json: `{"ejection":{"maxEjectionPercent":0}}`, want: with(func(c *Config) { c.Ejection.MaxEjectionPercent = 0 })},
		{name: "maxEjectionPercent 100", json: `{"ejection":{"maxEjectionPercent":100}}`, want: with(func(c *Config) { c.Ejection.MaxEjectionPercent = 100 })},
		{name: "maxEjectionPercent 101", json: `{"ejection":{"maxEjectionPercent":101}}`, wantErr: `grpcreuse_least_loaded: "ejection.maxEjectionPercent" is 101; must be between 0 and 100`},
		{name: "maxEjectionPercent negative", json: `{"ejection":{"maxEjectionPercent":-1}}`, wantErr: `"ejection.maxEjectionPercent" is -1; must be between 0 and 100`},

		{name: "failureCodes", json: `{"ejection":{"failureCodes":["UNAVAILABLE","INTERNAL","DATA_LOSS"]}}`, want: with(func(c *Config) {
			c.Ejection.FailureCodes = []codes.Code{codes.Unavailable, codes.Internal, codes.DataLoss}
		})},
		{name: "failureCodes unknown name", json: `{"ejection":{"failureCodes":["UNAVAILABEL"]}}`, wantErr: `grpcreuse_least_loaded: "ejection.failureCodes" holds "UNAVAILABEL"; must be status code names such as "UNAVAILABLE"; did you mean "UNAVAILABLE"?`},
		{name: "failureCodes number", json: `{"ejection":{"failureCodes":[14]}}`, wantErr: `"ejection.failureCodes" holds 14; must be status code names`},
		{name: "failureCodes not a list", json: `{"ejection":{"failureCodes":"UNAVAILABLE"}}`, wantErr: `"ejection.failureCodes" is "UNAVAILABLE"; must be a JSON array`},
		{name: "failureCodes empty", json: `{"ejection":{"failureCodes":[]}}`, wantErr: `"ejection.failureCodes" is []; must name at least one code`},
		{name: "failureCodes twice", json: `{"ejection":{"failureCodes":["INTERNAL","INTERNAL"]}}`, wantErr: `"ejection.failureCodes" holds "INTERNAL" twice`},
		{name: "failureCodes back-pressure", json: `{"ejection":{"failureCodes":["RESOURCE_EXHAUSTED"]}}`, wantErr: `"ejection.failureCodes" holds "RESOURCE_EXHAUSTED"; OK, CANCELLED, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED never count`},
		{name: "failureCodes caller deadline", json: `{"ejection":{"failureCodes":["DEADLINE_EXCEEDED"]}}`, wantErr: `holds "DEADLINE_EXCEEDED"; OK, CANCELLED`},
		{name: "failureCodes cancelled", json: `{"ejection":{"failureCodes":["CANCELLED"]}}`, wantErr: `holds "CANCELLED"; OK, CANCELLED`},
		{name: "failureCodes OK", json: `{"ejection":{"failureCodes":["OK"]}}`, wantErr: `holds "OK"; OK, CANCELLED`},

		// Everything at once.
		{name: "full config", json: `{"subchannelsPerEndpoint":2,"maxSubchannelsPerEndpoint":8,"targetStreamsPerSubchannel":80,"choiceCount":3,"subchannelIdleTimeout":"10s","ejection":{"consecutiveFailures":7,"baseEjectionTime":"1s","maxEjectionTime":"9s","maxEjectionPercent":34}}`,
			want: &Config{SubchannelsPerEndpoint: 2, MaxSubchannelsPerEndpoint: 8, TargetStreamsPerSubchannel: 80, ChoiceCount: 3, SubchannelIdleTimeout: 10 * time.Second,
				Ejection: EjectionConfig{ConsecutiveFailures: 7, BaseEjectionTime: time.Second, MaxEjectionTime: 9 * time.Second, MaxEjectionPercent: 34, FailureCodes: []codes.Code{codes.Unavailable}}}},
		{name: "long value is clipped", json: `{"choiceCount":"` + strings.Repeat("x", 200) + `"}`, wantErr: `…; must be a whole number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig(json.RawMessage(tt.json))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseConfig(%s) error = %v; want containing %q", tt.json, err, tt.wantErr)
				}
				if len(err.Error()) > 200 {
					t.Errorf("error is %d bytes long; keep it short: %v", len(err.Error()), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig(%s) error = %v", tt.json, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseConfig(%s) =\n%+v\nwant\n%+v", tt.json, *got, *tt.want)
			}
		})
	}
}

// TestBadServiceConfigFailsNewClient shows the error a user sees when the
// policy's config in a service config is invalid: the channel is not made.
func TestBadServiceConfigFailsNewClient(t *testing.T) {
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"choiceCount":1}}]}`, Name)
	cc, err := grpc.NewClient("passthrough:///127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err == nil {
		cc.Close()
		t.Fatal("NewClient accepted an invalid config")
	}
	if want := `"choiceCount" is 1; must be between 2 and 10`; !strings.Contains(err.Error(), want) {
		t.Fatalf("NewClient error = %v; want containing %q", err, want)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{}`, `null`, `[]`, `{"choiceCount":3}`, `{"subchannelsPerEndpoint":2,"maxSubchannelsPerEndpoint":2}`,
		`{"ejection":{"baseEjectionTime":"1s","maxEjectionTime":"0.5s"}}`, `{"subchannelIdleTimeout":"-0.000000001s"}`,
		`{"targetStreamsPerSubchannel":1e3}`, `{"ejection":{"consecutiveFailures":0,"maxEjectionPercent":100}}`,
		`{"subchannelIdleTimeout":"0.000000001s","ejection":{"baseEjectionTime":"315576000000s","failureCodes":["DATA_LOSS","UNKNOWN"]}}`,
		`{"subchannelIdleTimeout":"1.5s","ejection":{"maxEjectionTime":"1.000000001s","baseEjectionTime":"1s"}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		cfg, err := ParseConfig(json.RawMessage(raw))
		if err != nil {
			if !strings.HasPrefix(err.Error(), Name+": ") {
				t.Fatalf("error %q does not start with the policy name", err)
			}
			return
		}
		// Anything accepted must be safe at pick time.
		if err := cfg.validate(); err != nil {
			t.Fatalf("ParseConfig(%q) accepted an invalid config: %v", raw, err)
		}
		if cfg.ChoiceCount < 2 || cfg.TargetStreamsPerSubchannel < 1 || cfg.SubchannelsPerEndpoint > cfg.MaxSubchannelsPerEndpoint ||
			cfg.Ejection.BaseEjectionTime <= 0 || cfg.SubchannelIdleTimeout <= 0 || len(cfg.Ejection.FailureCodes) == 0 {
			t.Fatalf("ParseConfig(%q) = %+v, unsafe", raw, cfg)
		}
		// Round trip: parse → marshal → parse gives an equal Config, and
		// marshalling again gives the same bytes.
		js, err := json.Marshal(cfg)
		if err != nil {
			t.Fatalf("json.Marshal(ParseConfig(%q)): %v", raw, err)
		}
		again, err := ParseConfig(js)
		if err != nil {
			t.Fatalf("ParseConfig(json.Marshal(ParseConfig(%q))) = %v; marshalled %s", raw, err, js)
		}
		if !reflect.DeepEqual(again, cfg) {
			t.Fatalf("round trip of %q changed the config:\n%+v\n%+v\nvia %s", raw, *cfg, *again, js)
		}
		if js2, _ := json.Marshal(again); string(js2) != string(js) {
			t.Fatalf("second marshal differs:\n%s\n%s", js, js2)
		}
	})
}
