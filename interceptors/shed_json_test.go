package interceptors_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// TestShedderConfigJSONRoundTrip: marshalling any valid config and reading
// it back gives the same config; "{}" and null fields give the defaults.
func TestShedderConfigJSONRoundTrip(t *testing.T) {
	full := interceptors.DefaultShedderConfig()
	full.Limit, full.MaxLimit, full.MinLimit = 64, 500, 2
	full.Adaptive, full.Tolerance, full.Window = true, 1.5, 40*time.Millisecond
	full.MinSamples, full.StreamLimit, full.SheddableShare = 20, 300, 0.5
	full.MaxWait, full.Pushback, full.LogInterval = 0, 1500*time.Microsecond, time.Minute
	full.Criticality = map[string]interceptors.Criticality{"/shop.Search/": interceptors.Sheddable, "/shop.Search/Buy": interceptors.Critical}
	full.Exempt = []string{"/grpc.reflection.v1.ServerReflection/", "/shop.Admin/Drain"}
	aimd := interceptors.DefaultShedderConfig()
	aimd.Algorithm, aimd.Limit, aimd.MaxLimit, aimd.BackoffRatio, aimd.LatencyThreshold = interceptors.AIMD, 20, 40, 0.8, 30*time.Millisecond
	for name, c := range map[string]interceptors.ShedderConfig{"defaults": interceptors.DefaultShedderConfig(), "full": full, "aimd": aimd} {
		t.Run(name, func(t *testing.T) {
			raw, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			var back interceptors.ShedderConfig
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatalf("reading back %s: %v", raw, err)
			}
			if c.Exempt == nil {
				c.Exempt = []string{} // written as [], read back as an empty list
			}
			if !reflect.DeepEqual(back, c) {
				t.Fatalf("round trip of %s:\n got %+v\nwant %+v", raw, back, c)
			}
		})
	}
	for _, doc := range []string{`{}`, `null`, `{"limit":null,"exempt":null,"criticality":null}`} {
		got := interceptors.ShedderConfig{Adaptive: true, MaxWait: time.Hour} // what *c held before does not matter
		if err := json.Unmarshal([]byte(doc), &got); err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		if !reflect.DeepEqual(got, interceptors.DefaultShedderConfig()) {
			t.Fatalf("%s gave %+v, want the defaults", doc, got)
		}
	}
}

// TestShedderConfigJSONErrors: every bad document is an error naming the
// field and the value (a *ConfigError), and the config is left unchanged.
func TestShedderConfigJSONErrors(t *testing.T) {
	for _, tc := range []struct{ doc, field, want string }{
		{`{"limt": 4}`, "limt", `"limt" is not a known field; did you mean "limit"?`},
		{`{"limit": 4, "limit": 5}`, "limit", `"limit" appears more than once`},
		{`{"limit": "4"}`, "limit", `"limit" is "4"; must be a whole number`},
		{`{"limit": 0}`, "limit", `"limit" is 0; must be between 1 and`},
		{`{"limit": 4.5}`, "limit", `"limit" is 4.5; must be a whole number`},
		{`{"algorithm": "vegas"}`, "algorithm", `"algorithm" is "vegas"; must be "fixed" or "aimd"`},
		{`{"adaptive": "yes"}`, "adaptive", `"adaptive" is "yes"; must be true or false`},
		{`{"adaptive": true, "tolerance": 0.5}`, "tolerance", `"tolerance" is 0.5; must be between 1 and 100`},
		{`{"maxWait": 20}`, "maxWait", `"maxWait" is 20; must be a duration string such as "30s" or "0.25s"`},
		{`{"maxWait": "20ms"}`, "maxWait", `"maxWait" is "20ms"; must be a duration string`},
		{`{"maxWait": "7200s"}`, "maxWait", `"maxWait" is "7200s"; must be between "0s" and "3600s"`},
		{`{"pushback": "-1s"}`, "pushback", `"pushback" is "-1s"`},
		{`{"sheddableShare": 0}`, "sheddableShare", `"sheddableShare" is 0; must be above 0 and at most 1`},
		{`{"criticality": {"/shop.Search/": "low"}}`, "criticality./shop.Search/", `must be "critical" or "sheddable"`},
		{`{"criticality": {"shop.Search": "sheddable"}}`, "criticality", `"criticality" is "shop.Search"; keys must be`},
		{`{"criticality": ["/shop.Search/"]}`, "criticality", `must be a JSON object`},
		{`{"exempt": "/shop.Admin/"}`, "exempt", `"exempt" is "/shop.Admin/"; must be a JSON array`},
		{`{"exempt": [3]}`, "exempt[0]", `"exempt[0]" is 3; must be a string`},
		{`{"exempt": ["/shop.Admin/", "/shop.Admin/"]}`, "exempt", `"exempt" is "/shop.Admin/"; is listed twice`},
		{`[1]`, "config", `"config" is [1]; must be a JSON object`},
	} {
		t.Run(tc.doc, func(t *testing.T) {
			c := interceptors.DefaultShedderConfig()
			c.Limit = 9
			err := c.UnmarshalJSON([]byte(tc.doc))
			var ce *interceptors.ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("error %v (%T), want a *ConfigError for %q", err, err, tc.field)
			}
			if !strings.HasPrefix(err.Error(), "interceptors: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want the prefix and %q", err, tc.want)
			}
			if c.Limit != 9 {
				t.Fatalf("config changed on error: limit %d", c.Limit)
			}
		})
	}
}

// A Shedder configured from a service's own config file: the Shedder's
// object is read strictly, with DefaultShedderConfig for what it leaves
// out.
func ExampleShedderConfig_UnmarshalJSON() {
	var file struct {
		Listen  string                     `json:"listen"`
		Shedder interceptors.ShedderConfig `json:"shedder"`
	}
	doc := `{"listen": ":8443", "shedder": {"limit": 64, "maxWait": "0.02s",
		"criticality": {"/shop.Search/": "sheddable"}, "exempt": ["/grpc.reflection.v1.ServerReflection/"]}}`
	if err := json.Unmarshal([]byte(doc), &file); err != nil {
		fmt.Println(err)
		return
	}
	c := file.Shedder
	fmt.Println(c.Limit, c.MaxWait, c.Criticality["/shop.Search/"], c.Exempt, c.Pushback)
	if _, err := interceptors.NewShedder(interceptors.WithShedderConfig(c)); err != nil {
		fmt.Println(err)
	}

	err := json.Unmarshal([]byte(`{"shedder": {"limit": 64, "maxWiat": "0.02s"}}`), &file)
	fmt.Println(err)
	// Output:
	// 64 20ms sheddable [/grpc.reflection.v1.ServerReflection/] 20ms
	// interceptors: "maxWiat" is not a known field; did you mean "maxWait"?
}
