// Package controlplane is a small in-process xDS control plane for the
// examples and tests of grpcreuse under xDS: go-control-plane's snapshot
// cache and ADS server on a loopback listener, resource builders for one
// gRPC service (Listener, RouteConfiguration, Cluster,
// ClusterLoadAssignment), and a record of what clients ACKed and NACKed.
//
// It is not a production control plane: it serves one node ID, keeps
// everything in memory and speaks plaintext on loopback.
//
// # Goroutines
//
// Start starts one goroutine (the gRPC server serving ADS); Close stops
// it, ends every ADS stream and waits for it.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// NodeID is the xDS node ID of Bootstrap; the server serves only it.
const NodeID = "grpcreuse-xds-example"

// Server is a running control plane. Its methods are safe for concurrent
// use.
type Server struct {
	lis   net.Listener
	grpc  *grpc.Server
	cache cachev3.SnapshotCache
	done  chan struct{}

	mu      sync.Mutex
	version int                     // last pushed snapshot version
	sent    map[streamNonce]string  // response nonce → version sent
	results map[typeVersion]*result // what clients answered
	changed chan struct{}           // closed and replaced on every answer
}

type streamNonce struct {
	stream int64
	nonce  string
}

type typeVersion struct {
	typeURL, version string
}

type result struct {
	acks  int
	nacks []string // error details
}

// Start starts a control plane listening on addr ("127.0.0.1:0" for a
// free port). Close it when done.
func Start(addr string) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("controlplane: listen %s: %w", addr, err)
	}
	s := &Server{
		lis:     lis,
		done:    make(chan struct{}),
		sent:    map[streamNonce]string{},
		results: map[typeVersion]*result{},
		changed: make(chan struct{}),
	}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	cbs := serverv3.CallbackFuncs{
		StreamRequestFunc:  s.onRequest,
		StreamResponseFunc: s.onResponse,
	}
	xds := serverv3.NewServer(context.Background(), nackHolder{s.cache}, cbs)
	s.grpc = grpc.NewServer()
	discoverypb.RegisterAggregatedDiscoveryServiceServer(s.grpc, xds)
	go func() {
		defer close(s.done)
		_ = s.grpc.Serve(lis)
	}()
	return s, nil
}

// Addr is the address the server listens on, "127.0.0.1:port".
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Bootstrap returns an xDS bootstrap (the JSON of GRPC_XDS_BOOTSTRAP_CONFIG)
// that points a gRPC client at this server, as node NodeID, over
// plaintext.
func (s *Server) Bootstrap() []byte {
	b, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      s.Addr(),
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": NodeID},
	})
	if err != nil {
		panic(err) // a constant shape of strings cannot fail to marshal
	}
	return b
}

// Push makes r the state served to clients, as a new snapshot version,
// and returns that version.
func (s *Server) Push(ctx context.Context, r Resources) (string, error) {
	res, err := r.build()
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.version++
	v := strconv.Itoa(s.version)
	s.mu.Unlock()
	snap, err := cachev3.NewSnapshot(v, res)
	if err != nil {
		return "", fmt.Errorf("controlplane: snapshot %s: %w", v, err)
	}
	// No snap.Consistent(): it looks for route names in Envoy filter
	// chains, and a gRPC client's Listener is an API listener.
	if err := s.cache.SetSnapshot(ctx, NodeID, snap); err != nil {
		return "", fmt.Errorf("controlplane: snapshot %s: %w", v, err)
	}
	return v, nil
}

// ErrNACK is matched (errors.Is) by Await's error when a client rejected
// the version.
var ErrNACK = errors.New("controlplane: NACK")

// Await waits until a client ACKs or NACKs version of the resource type
// typeURL (resourcev3.ClusterType, ...): nil for an ACK, an error
// wrapping ErrNACK with the client's error detail for a NACK, ctx's error
// if neither comes first.
func (s *Server) Await(ctx context.Context, typeURL, version string) error {
	for {
		s.mu.Lock()
		r := s.results[typeVersion{typeURL, version}]
		changed := s.changed
		var err error
		switch {
		case r == nil:
		case len(r.nacks) > 0:
			err = fmt.Errorf("%w of %s version %s: %s", ErrNACK, typeURL, version, r.nacks[0])
		case r.acks > 0:
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		if err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("controlplane: no answer to %s version %s: %w", typeURL, version, ctx.Err())
		}
	}
}

// Close stops the server and ends every ADS stream. It is idempotent.
func (s *Server) Close() error {
	s.grpc.Stop()
	<-s.done
	return nil
}

// onResponse remembers which version every response nonce carried, so a
// later request can say which version it ACKs or NACKs.
func (s *Server) onResponse(_ context.Context, stream int64, _ *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent[streamNonce{stream, resp.GetNonce()}] = resp.GetVersionInfo()
}

// onRequest records an ACK or a NACK of the response the request answers.
func (s *Server) onRequest(stream int64, req *discoverypb.DiscoveryRequest) error {
	if req.GetResponseNonce() == "" {
		return nil // a first request or a new subscription, no answer
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.sent[streamNonce{stream, req.GetResponseNonce()}]
	if !ok {
		return nil
	}
	k := typeVersion{req.GetTypeUrl(), v}
	r := s.results[k]
	if r == nil {
		r = &result{}
		s.results[k] = r
	}
	if d := req.GetErrorDetail(); d != nil {
		r.nacks = append(r.nacks, d.GetMessage())
	} else {
		r.acks++
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

// nackHolder keeps a NACKed version from being sent again at once. After
// a NACK a client asks again naming its last good version; the snapshot
// cache answers any request whose version differs from the snapshot's, so
// it would send the rejected version straight back, and the client and
// the server would trade the same NACK forever. nackHolder makes the
// cache treat a NACK as up to date: the client hears again on the next
// Push, as a real control plane's next config version would reach it.
type nackHolder struct {
	cachev3.SnapshotCache
}

func (c nackHolder) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	if req.GetErrorDetail() != nil {
		if snap, err := c.GetSnapshot(NodeID); err == nil {
			req = proto.Clone(req).(*discoverypb.DiscoveryRequest)
			req.VersionInfo = snap.GetVersion(req.GetTypeUrl())
		}
	}
	return c.SnapshotCache.CreateWatch(req, sub, out)
}

// Type URLs of the resources Push serves, for Await.
const (
	ListenerType = resourcev3.ListenerType
	RouteType    = resourcev3.RouteType
	ClusterType  = resourcev3.ClusterType
	EndpointType = resourcev3.EndpointType
)
