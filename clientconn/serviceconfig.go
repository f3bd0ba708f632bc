package clientconn

import (
	"encoding/json"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// checkGRPCServiceConfig asks grpc-go to parse doc (grpc.NewClient parses
// a default service config without connecting) and, when it refuses,
// finds the top-level field it refused, so the error names the field and
// its value as well as grpc's reason.
func checkGRPCServiceConfig(doc string) error {
	err := grpcParses(doc)
	if err == nil {
		return nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal([]byte(doc), &fields) != nil {
		return err
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		one, _ := json.Marshal(map[string]json.RawMessage{k: fields[k]})
		if ferr := grpcParses(string(one)); ferr != nil {
			return fmt.Errorf("%q is %s: %w", k, clip(fields[k]), ferr)
		}
	}
	return err
}

func grpcParses(doc string) error {
	cc, err := grpc.NewClient("passthrough:///grpcreuse-service-config-check",
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(doc))
	if err != nil {
		return err
	}
	return cc.Close()
}

// clip keeps error messages short when a value is large.
func clip(raw json.RawMessage) string {
	const max = 60
	if len(raw) > max {
		return string(raw[:max]) + "…"
	}
	return string(raw)
}
