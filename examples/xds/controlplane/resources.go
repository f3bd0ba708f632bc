package controlplane

import (
	"fmt"
	"net"
	"strconv"

	udpatypepb "github.com/cncf/xds/go/udpa/type/v1"
	xdstypepb "github.com/cncf/xds/go/xds/type/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wrrlocalitypb "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/wrr_locality/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	cachetypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Resources is the state of one gRPC service as Push serves it: a client
// dialling "xds:///" + Service gets the Listener Service, whose route
// sends every call to Cluster, an EDS cluster whose endpoints are
// Localities.
type Resources struct {
	// Service is the Listener's name and the route's domain.
	Service string
	// Cluster is the name of the Cluster and of its ClusterLoadAssignment.
	Cluster string
	// Policy is the Cluster's load_balancing_policy (gRFC A52); nil leaves
	// the field unset (grpc-go then uses round_robin under wrr_locality).
	Policy *clusterpb.LoadBalancingPolicy
	// MaxRequests, if not 0, sets the Cluster's circuit_breakers
	// max_requests threshold: calls in flight above it are dropped by the
	// client's xDS cluster_impl policy before they reach a backend.
	MaxRequests uint32
	// OutlierDetection, if set, is the Cluster's outlier_detection
	// (gRFC A50: grpc-go's outlier_detection policy ejects addresses).
	OutlierDetection *clusterpb.OutlierDetection
	// DropPercent, if not 0, is the share of calls (0 to 100) the
	// ClusterLoadAssignment's drop_overloads tells the client to drop
	// locally, in category "load_shedding".
	DropPercent uint32
	// Localities are the endpoints, grouped by locality.
	Localities []Locality
}

// Locality is one locality (zone) of a ClusterLoadAssignment.
type Locality struct {
	// Zone names the locality (region "local", zone Zone).
	Zone string
	// Weight is the locality's load_balancing_weight; 0 means 1.
	Weight uint32
	// Endpoints are the locality's backends.
	Endpoints []Endpoint
}

// Endpoint is one backend of a locality.
type Endpoint struct {
	// Addr is the backend's "ip:port".
	Addr string
	// Weight is the endpoint's load_balancing_weight; 0 leaves it unset.
	Weight uint32
	// Health is the endpoint's health_status as the control plane sees it;
	// the zero value is UNKNOWN, which clients treat as healthy.
	Health corepb.HealthStatus
}

// TypedStructV3 returns a load_balancing_policy that names the gRPC LB
// policy policyName with config as its JSON config, in an
// xds.type.v3.TypedStruct whose type_url is
// "type.googleapis.com/" + policyName (gRFC A52).
func TypedStructV3(policyName string, config map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
	v, err := structpb.NewStruct(config)
	if err != nil {
		return nil, fmt.Errorf("controlplane: config of %s: %w", policyName, err)
	}
	return policyOf(&xdstypepb.TypedStruct{TypeUrl: "type.googleapis.com/" + policyName, Value: v})
}

// TypedStructV1 is TypedStructV3 with the older udpa.type.v1.TypedStruct.
func TypedStructV1(policyName string, config map[string]any) (*clusterpb.LoadBalancingPolicy, error) {
	v, err := structpb.NewStruct(config)
	if err != nil {
		return nil, fmt.Errorf("controlplane: config of %s: %w", policyName, err)
	}
	return policyOf(&udpatypepb.TypedStruct{TypeUrl: "type.googleapis.com/" + policyName, Value: v})
}

// WrrLocality returns a load_balancing_policy of
// envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality
// with endpointPicking as its endpoint_picking_policy: grpc-go then picks
// a locality by locality weight and runs one endpoint-picking policy per
// locality.
func WrrLocality(endpointPicking *clusterpb.LoadBalancingPolicy) (*clusterpb.LoadBalancingPolicy, error) {
	return policyOf(&wrrlocalitypb.WrrLocality{EndpointPickingPolicy: endpointPicking})
}

func policyOf(m proto.Message) (*clusterpb.LoadBalancingPolicy, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	return &clusterpb.LoadBalancingPolicy{Policies: []*clusterpb.LoadBalancingPolicy_Policy{{
		TypedExtensionConfig: &corepb.TypedExtensionConfig{Name: string(m.ProtoReflect().Descriptor().FullName()), TypedConfig: a},
	}}}, nil
}

// ads is the config source "over this ADS stream".
func ads() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}},
		ResourceApiVersion:    corepb.ApiVersion_V3,
	}
}

func (r Resources) build() (map[resourcev3.Type][]cachetypes.Resource, error) {
	if r.Service == "" || r.Cluster == "" {
		return nil, fmt.Errorf("controlplane: Resources need a Service and a Cluster name")
	}
	route := r.Service + "-route"
	router, err := anypb.New(&routerpb.Router{})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	hcm, err := anypb.New(&hcmpb.HttpConnectionManager{
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{ConfigSource: ads(), RouteConfigName: route}},
		HttpFilters: []*hcmpb.HttpFilter{{
			Name: "envoy.filters.http.router", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	lis := &listenerpb.Listener{Name: r.Service, ApiListener: &listenerpb.ApiListener{ApiListener: hcm}}
	rc := &routepb.RouteConfiguration{Name: route, VirtualHosts: []*routepb.VirtualHost{{
		Name:    r.Service,
		Domains: []string{r.Service},
		Routes: []*routepb.Route{{
			Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: r.Cluster}}},
		}},
	}}}
	cl := &clusterpb.Cluster{
		Name:                 r.Cluster,
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: r.Cluster},
		LoadBalancingPolicy:  r.Policy,
		OutlierDetection:     r.OutlierDetection,
	}
	if r.MaxRequests > 0 {
		cl.CircuitBreakers = &clusterpb.CircuitBreakers{Thresholds: []*clusterpb.CircuitBreakers_Thresholds{{
			Priority:    corepb.RoutingPriority_DEFAULT,
			MaxRequests: wrapperspb.UInt32(r.MaxRequests),
		}}}
	}
	cla := &endpointpb.ClusterLoadAssignment{ClusterName: r.Cluster}
	if r.DropPercent > 0 {
		cla.Policy = &endpointpb.ClusterLoadAssignment_Policy{DropOverloads: []*endpointpb.ClusterLoadAssignment_Policy_DropOverload{{
			Category:       "load_shedding",
			DropPercentage: &typepb.FractionalPercent{Numerator: r.DropPercent, Denominator: typepb.FractionalPercent_HUNDRED},
		}}}
	}
	for _, l := range r.Localities {
		w := l.Weight
		if w == 0 {
			w = 1
		}
		ll := &endpointpb.LocalityLbEndpoints{
			Locality:            &corepb.Locality{Region: "local", Zone: l.Zone},
			LoadBalancingWeight: wrapperspb.UInt32(w),
		}
		for _, e := range l.Endpoints {
			host, portStr, err := net.SplitHostPort(e.Addr)
			if err != nil {
				return nil, fmt.Errorf("controlplane: endpoint %q: %w", e.Addr, err)
			}
			port, err := strconv.ParseUint(portStr, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("controlplane: endpoint %q: port: %w", e.Addr, err)
			}
			lb := &endpointpb.LbEndpoint{HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
				Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
					Protocol: corepb.SocketAddress_TCP, Address: host,
					PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: uint32(port)},
				}}},
			}}}
			lb.HealthStatus = e.Health
			if e.Weight > 0 {
				lb.LoadBalancingWeight = wrapperspb.UInt32(e.Weight)
			}
			ll.LbEndpoints = append(ll.LbEndpoints, lb)
		}
		cla.Endpoints = append(cla.Endpoints, ll)
	}
	return map[resourcev3.Type][]cachetypes.Resource{
		resourcev3.ListenerType: {lis},
		resourcev3.RouteType:    {rc},
		resourcev3.ClusterType:  {cl},
		resourcev3.EndpointType: {cla},
	}, nil
}
