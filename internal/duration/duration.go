// Package duration reads the proto-JSON durations ("30s", "0.25s") that
// gRPC service config uses, with errors that name the JSON field.
//
// Config parsers keep duration fields as json.RawMessage and call FromJSON
// for each one, because encoding/json cannot tell an Unmarshaler which field
// it is decoding.
package duration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
)

// FromJSON parses raw, the JSON value of field, as a proto-JSON duration.
// An absent or null value yields def. Errors name the field and the value:
//
//	"baseEjectionTime" is "30"; must be a duration string such as "30s" or "0.25s"
func FromJSON(field string, raw json.RawMessage, def time.Duration) (time.Duration, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return def, nil
	}
	var pb durationpb.Duration
	if raw[0] != '"' || protojson.Unmarshal(raw, &pb) != nil {
		return 0, fmt.Errorf("%q is %s; must be a duration string such as \"30s\" or \"0.25s\"", field, clip(raw))
	}
	if err := pb.CheckValid(); err != nil {
		return 0, fmt.Errorf("%q is %s; %v", field, clip(raw), err)
	}
	d := pb.AsDuration()
	// AsDuration saturates out-of-range values instead of failing.
	if time.Duration(pb.GetSeconds())*time.Second/time.Second != time.Duration(pb.GetSeconds()) {
		return 0, fmt.Errorf("%q is %s; must be at most %v", field, clip(raw), time.Duration(1<<63-1))
	}
	return d, nil
}

// String formats d the proto-JSON way ("1.5s"), for error messages and
// for writing configs back out.
func String(d time.Duration) string {
	b, _ := protojson.Marshal(durationpb.New(d))
	return string(bytes.Trim(b, `"`))
}

// clip keeps error messages short when a caller sends a huge value.
func clip(raw []byte) string {
	const max = 40
	if len(raw) > max {
		return string(raw[:max]) + "…"
	}
	return string(raw)
}
