package balancer

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/serviceconfig"
)

// custom is a config with every field away from its default.
const customJSON = `{"subchannelsPerEndpoint":2,"maxSubchannelsPerEndpoint":6,"targetStreamsPerSubchannel":30,` +
	`"choiceCount":3,"subchannelIdleTimeout":"12.500s","ejection":{"consecutiveFailures":9,"baseEjectionTime":"1.500s",` +
	`"maxEjectionTime":"20s","maxEjectionPercent":40,"failureCodes":["UNAVAILABLE","DATA_LOSS"]}}`

func customConfig() *Config {
	return &Config{SubchannelsPerEndpoint: 2, MaxSubchannelsPerEndpoint: 6, TargetStreamsPerSubchannel: 30, ChoiceCount: 3,
		SubchannelIdleTimeout: 12500 * time.Millisecond,
		Ejection: EjectionConfig{ConsecutiveFailures: 9, BaseEjectionTime: 1500 * time.Millisecond, MaxEjectionTime: 20 * time.Second,
			MaxEjectionPercent: 40, FailureCodes: []codes.Code{codes.Unavailable, codes.DataLoss}}}
}

func TestMarshalJSON(t *testing.T) {
	tests := []struct {
		name    string
		cfg     *Config
		want    string
		wantErr string
	}{
		{name: "defaults", cfg: defaultConfig(), want: `{"subchannelsPerEndpoint":1,"maxSubchannelsPerEndpoint":4,"targetStreamsPerSubchannel":50,"choiceCount":2,"subchannelIdleTimeout":"60s","ejection":{"consecutiveFailures":5,"baseEjectionTime":"30s","maxEjectionTime":"300s","maxEjectionPercent":50,"failureCodes":["UNAVAILABLE"]}}`},
		{name: "custom", cfg: customConfig(), want: customJSON},
		{name: "invalid config", cfg: func() *Config { c := defaultConfig(); c.ChoiceCount = 1; return c }(), wantErr: `grpcreuse_least_loaded: "choiceCount" is 1; must be between 2 and 10`},
		{name: "no failure codes", cfg: func() *Config { c := defaultConfig(); c.Ejection.FailureCodes = nil; return c }(), wantErr: `"ejection.failureCodes" is []; must name at least one code`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("json.Marshal error = %v; want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("json.Marshal =\n%s\nwant\n%s", got, tt.want)
			}
			back, err := ParseConfig(got)
			if err != nil {
				t.Fatalf("ParseConfig(%s): %v", got, err)
			}
			if !reflect.DeepEqual(back, tt.cfg) {
				t.Fatalf("round trip = %+v; want %+v", *back, *tt.cfg)
			}
		})
	}
}

// TestRoundTripThroughGRPCRegistry does what grpc-go's xDS client does with
// a TypedStruct config: parse through the registered ConfigParser, marshal
// the parsed config with encoding/json, parse the result again.
func TestRoundTripThroughGRPCRegistry(t *testing.T) {
	parser, ok := grpcbalancer.Get(Name).(grpcbalancer.ConfigParser)
	if !ok {
		t.Fatalf("balancer %q is not registered as a ConfigParser", Name)
	}
	first, err := parser.ParseConfig(json.RawMessage(customJSON))
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(first)
	if err != nil {
		t.Fatal(err)
	}
	second, err := parser.ParseConfig(js)
	if err != nil {
		t.Fatalf("ParseConfig(%s): %v", js, err)
	}
	if !reflect.DeepEqual(second, customConfig()) {
		t.Fatalf("after the round trip: %+v; want %+v", second, *customConfig())
	}
	// A parent that embeds our config as a member re-encodes it the same way.
	wrapped, err := json.Marshal(map[string]any{"childPolicy": []any{map[string]serviceconfig.LoadBalancingConfig{Name: first}}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(wrapped), customJSON) {
		t.Fatalf("embedded config marshalled as %s; want it to contain %s", wrapped, customJSON)
	}
}

// spyBuilder is our builder under another name that records the configs
// its balancers receive, to see what grpc's service-config path delivers.
type spyBuilder struct {
	builder
	mu   sync.Mutex
	cfgs []serviceconfig.LoadBalancingConfig
}

func (s *spyBuilder) Build(cc grpcbalancer.ClientConn, opts grpcbalancer.BuildOptions) grpcbalancer.Balancer {
	return &spyBalancer{Balancer: s.builder.Build(cc, opts), s: s}
}

type spyBalancer struct {
	grpcbalancer.Balancer
	s *spyBuilder
}

func (b *spyBalancer) UpdateClientConnState(ccs grpcbalancer.ClientConnState) error {
	b.s.mu.Lock()
	b.s.cfgs = append(b.s.cfgs, ccs.BalancerConfig)
	b.s.mu.Unlock()
	return b.Balancer.UpdateClientConnState(ccs)
}

// TestRoundTripThroughServiceConfig sends the config through grpc's own
// service-config parsing (grpc.WithDefaultServiceConfig and a resolver's
// service config), and checks that the balancer receives every value.
func TestRoundTripThroughServiceConfig(t *testing.T) {
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	spy := &spyBuilder{builder: builder{name: name}}
	grpcbalancer.Register(spy)
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:%s}]}`, name, customJSON)

	r := manual.NewBuilderWithScheme("rt")
	cc, err := grpc.NewClient("rt:///x", grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(sc))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Connect()
	// Default service config first, then a resolver-provided one whose
	// config was marshalled once more.
	r.UpdateState(resolver.State{Endpoints: endpoints("127.0.0.1:1")})
	js, err := json.Marshal(customConfig())
	if err != nil {
		t.Fatal(err)
	}
	res := r.CC().ParseServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:%s}]}`, name, js))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	r.UpdateState(resolver.State{Endpoints: endpoints("127.0.0.1:2"), ServiceConfig: res})
	deadline := time.Now().Add(10 * time.Second)
	for {
		spy.mu.Lock()
		n := len(spy.cfgs)
		cfgs := append([]serviceconfig.LoadBalancingConfig(nil), spy.cfgs...)
		spy.mu.Unlock()
		if n >= 2 {
			for i, c := range cfgs {
				if !reflect.DeepEqual(c, customConfig()) {
					t.Fatalf("update %d: balancer got %+v; want %+v", i, c, *customConfig())
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("balancer got %d config updates; want 2", n)
		}
		time.Sleep(5 * time.Millisecond) // polling against a deadline
	}
}
