package jsonfield

import (
	"bytes"
	"encoding/json"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ParseDuration parses raw, the JSON value of field, as a proto-JSON duration.
// An absent or null value yields def. Errors are *Error values naming the
// field and the value:
//
//	"baseEjectionTime" is "30"; must be a duration string such as "30s" or "0.25s"
func ParseDuration(field string, raw json.RawMessage, def time.Duration) (time.Duration, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return def, nil
	}
	var pb durationpb.Duration
	if raw[0] != '"' || protojson.Unmarshal(raw, &pb) != nil {
		return 0, Errorf(field, raw, `must be a duration string such as "30s" or "0.25s"`)
	}
	if err := pb.CheckValid(); err != nil {
		return 0, Errorf(field, raw, err.Error())
	}
	d := pb.AsDuration()
	// AsDuration saturates out-of-range values instead of failing.
	if time.Duration(pb.GetSeconds())*time.Second/time.Second != time.Duration(pb.GetSeconds()) {
		return 0, Errorf(field, raw, "must be at most "+time.Duration(1<<63-1).String())
	}
	return d, nil
}
