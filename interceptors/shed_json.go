package interceptors

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/grpcreuse/grpcreuse/internal/duration"
	"github.com/grpcreuse/grpcreuse/internal/jsonfield"
)

// MarshalJSON writes c as the JSON object UnmarshalJSON reads: every
// field under its JSON name (the names errors use), durations as
// proto-JSON strings, criticalities as "critical" or "sheddable". Parsing
// the result gives c back.
func (c ShedderConfig) MarshalJSON() ([]byte, error) {
	crit := make(map[string]string, len(c.Criticality))
	for k, v := range c.Criticality {
		crit[k] = v.String()
	}
	exempt := c.Exempt
	if exempt == nil {
		exempt = []string{}
	}
	return json.Marshal(struct {
		limitJSON
		Adaptive       bool              `json:"adaptive"`
		Tolerance      float64           `json:"tolerance"`
		Window         string            `json:"window"`
		MinSamples     int               `json:"minSamples"`
		StreamLimit    int               `json:"streamLimit"`
		Criticality    map[string]string `json:"criticality"`
		Exempt         []string          `json:"exempt"`
		SheddableShare float64           `json:"sheddableShare"`
		MaxWait        string            `json:"maxWait"`
		Pushback       string            `json:"pushback"`
		LogInterval    string            `json:"logInterval"`
	}{c.LimitConfig.toJSON(), c.Adaptive, c.Tolerance, duration.String(c.Window), c.MinSamples, c.StreamLimit, crit, exempt,
		c.SheddableShare, duration.String(c.MaxWait), duration.String(c.Pushback), duration.String(c.LogInterval)})
}

// UnmarshalJSON reads a Shedder configuration from a JSON object (a
// config file's, or a flag's) strictly, as the toolkit's service-config
// policies are read: an absent or null field keeps DefaultShedderConfig's
// value, whatever *c held before; an unknown or repeated field is an error
// naming it (with the nearest known name); and the result is validated, so
// a value out of range is an error naming its field and value (a
// *ConfigError, wrapped). On error *c is left unchanged.
//
// Durations are proto-JSON strings ("0.025s"), as in service configs; Criticality
// maps a method or service to "critical" or "sheddable", and Exempt is a
// list of methods and services:
//
//	{"limit": 64, "maxWait": "0.02s", "exempt": ["/grpc.reflection.v1.ServerReflection/"],
//	 "criticality": {"/shop.Search/": "sheddable"}}
func (c *ShedderConfig) UnmarshalJSON(raw []byte) error {
	out, err := parseShedderConfig(raw)
	if err != nil {
		return err
	}
	*c = out
	return nil
}

func parseShedderConfig(raw []byte) (ShedderConfig, error) {
	c := DefaultShedderConfig()
	obj, err := jsonfield.Parse("", raw)
	if err != nil {
		return c, fieldErr(err)
	}
	if err := readLimit(obj, &c.LimitConfig); err != nil {
		return c, fieldErr(err)
	}
	for _, f := range []struct {
		name string
		dst  *int
	}{{"minSamples", &c.MinSamples}, {"streamLimit", &c.StreamLimit}} {
		if err := intField(obj, f.name, f.dst); err != nil {
			return c, fieldErr(err)
		}
	}
	for _, f := range []struct {
		name string
		dst  *float64
	}{{"tolerance", &c.Tolerance}, {"sheddableShare", &c.SheddableShare}} {
		if err := obj.Float(f.name, f.dst); err != nil {
			return c, fieldErr(err)
		}
	}
	if err := obj.Bool("adaptive", &c.Adaptive); err != nil {
		return c, fieldErr(err)
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{{"window", &c.Window}, {"maxWait", &c.MaxWait}, {"pushback", &c.Pushback}, {"logInterval", &c.LogInterval}} {
		if err := obj.Duration(f.name, f.dst); err != nil {
			return c, fieldErr(err)
		}
	}
	crit, err := obj.Object("criticality")
	if err != nil {
		return c, fieldErr(err)
	}
	if keys := crit.Names(); len(keys) > 0 {
		c.Criticality = make(map[string]Criticality, len(keys))
		for _, k := range keys {
			var s string
			if err := crit.Enum(k, &s, "critical", "sheddable"); err != nil {
				return c, fieldErr(err)
			}
			v := Critical
			if s == "sheddable" {
				v = Sheddable
			}
			c.Criticality[k] = v
		}
	}
	list, err := obj.Array("exempt")
	if err != nil {
		return c, fieldErr(err)
	}
	if list != nil {
		c.Exempt = make([]string, len(list))
		for i, e := range list {
			if json.Unmarshal(e, &c.Exempt[i]) != nil || len(e) == 0 || e[0] != '"' {
				return c, fieldErr(jsonfield.Errorf("exempt["+strconv.Itoa(i)+"]", e, "must be a string"))
			}
		}
	}
	if err := obj.Done(); err != nil {
		return c, fieldErr(err)
	}
	return c, c.Validate()
}

// fieldErr gives a parse error the package's prefix, as Validate's are.
func fieldErr(err error) error {
	if fe, ok := err.(*ConfigError); ok {
		return configError{fe}
	}
	return err
}
