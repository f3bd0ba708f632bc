// Package duration writes the proto-JSON durations ("30s", "0.25s") that
// gRPC service config uses, for configs marshalled back to JSON and for
// error messages. Reading them is jsonfield's (Object.Duration).
package duration

import (
	"bytes"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
)

// String formats d the proto-JSON way ("1.5s"), for error messages and
// for writing configs back out.
func String(d time.Duration) string {
	b, _ := protojson.Marshal(durationpb.New(d))
	return string(bytes.Trim(b, `"`))
}
