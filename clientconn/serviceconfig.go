package clientconn

import (
	"encoding/json"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// serviceConfig is one service config document split in two: what grpc
// reads, and the interceptors built from its "grpcreuse" policy.
type serviceConfig struct {
	grpc         string
	interceptors []grpc.DialOption
	chain        *interceptors.Chain // nil without a policy
}

// serviceConfig splits and validates doc once; every connection made with
// it shares the result, so its breakers and limiters keep their state when
// a connection is replaced.
func (f *Factory) serviceConfig(doc string) (*serviceConfig, error) {
	f.cfgMu.Lock()
	defer f.cfgMu.Unlock()
	if sc, ok := f.configs[doc]; ok {
		return sc, nil
	}
	grpcDoc, policy, err := interceptors.SplitServiceConfig(doc)
	if err != nil {
		return nil, fmt.Errorf("clientconn: service config: %w", err)
	}
	if grpcDoc != "" {
		if err := checkGRPCServiceConfig(grpcDoc); err != nil {
			return nil, fmt.Errorf("clientconn: service config: %w", err)
		}
	}
	sc := &serviceConfig{grpc: grpcDoc}
	if policy != nil {
		if sc.chain, err = policy.Build(interceptors.ClientTelemetry{},
			interceptors.PolicyObservers{Breaker: f.obs, Limiter: f.obs}); err != nil {
			return nil, fmt.Errorf("clientconn: service config: %w", err)
		}
		sc.interceptors = sc.chain.DialOptions()
	}
	if len(f.configs) < maxCanonCache {
		f.configs[doc] = sc
	}
	return sc, nil
}

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
