package jsonfield

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ParseDuration parses raw, the JSON value of field, as a proto-JSON duration.
// An absent or null value yields def. Errors name the field and the value:
//
//	"baseEjectionTime" is "30"; must be a duration string such as "30s" or "0.25s"
func ParseDuration(field string, raw json.RawMessage, def time.Duration) (time.Duration, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return def, nil
	}
	var pb durationpb.Duration
	if raw[0] != '"' || protojson.Unmarshal(raw, &pb) != nil {
		return 0, fmt.Errorf("%q is %s; must be a duration string such as \"30s\" or \"0.25s\"", field, Clip(raw))
	}
	if err := pb.CheckValid(); err != nil {
		return 0, fmt.Errorf("%q is %s; %v", field, Clip(raw), err)
	}
	d := pb.AsDuration()
	// AsDuration saturates out-of-range values instead of failing.
	if time.Duration(pb.GetSeconds())*time.Second/time.Second != time.Duration(pb.GetSeconds()) {
		return 0, fmt.Errorf("%q is %s; must be at most %v", field, Clip(raw), time.Duration(1<<63-1))
	}
	return d, nil
}
