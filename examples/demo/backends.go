package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
)

// The backends model a server with limited capacity: a TestService call
// waits (at most until its deadline) for one of workers slots and then
// works for workTime, which does not stop when the caller gives up, as CPU
// work does not. Health checks skip all of it, but a failing backend fails
// them too.
const (
	workers  = 2
	workTime = 10 * time.Millisecond
	// slowExtra is the slow backend's added latency, spent outside the
	// worker slots (a longer network path, a slow dependency).
	slowExtra = 20 * time.Millisecond
	// shedLimit is the grpcreuse backends' in-flight limit: the working
	// calls and twice as many waiting; the rest are shed.
	shedLimit = 3 * workers
)

// backendNames are the three backends of each side, in order.
var backendNames = [3]string{"b0", "b1", "b2"}

const (
	fastBackend  = 0
	slowBackend  = 1
	flakyBackend = 2 // fails in the "backend failing" phase; the ledger's only backend
)

// backend is one TLS gRPC server on 127.0.0.1.
type backend struct {
	addr    string
	srv     *grpc.Server
	lis     *trackingListener
	served  chan struct{}
	rotator *credentials.TicketKeyRotator // grpcreuse side only
	shedder *interceptors.Shedder         // grpcreuse side only

	extra   time.Duration
	slots   chan struct{}
	failing atomic.Bool
	// attempts counts TestService calls that reached the backend (past
	// shedding), pool those of them from the pool services (UnaryCall);
	// failed counts calls (health checks too) it answered UNAVAILABLE
	// because it was failing.
	attempts, pool, failed atomic.Int64
}

// serverSide is one side's three backends and what they saw, counted on
// the server side so no client can flatter itself: TCP connections
// accepted and TLS handshakes, full or resumed.
type serverSide struct {
	backends            [3]*backend
	accepts             atomic.Int64
	fullTLS, resumedTLS atomic.Int64
	shed                atomic.Int64
	// handshakes records every server handshake (grpcreuse side only), for
	// the debug page's server half.
	handshakes *credentials.ServerHandshakeRecorder
}

// serverCounts is a snapshot of a serverSide's counters.
type serverCounts struct {
	accepts, full, resumed, shed int64
	attempts, pool, failed       [3]int64
}

func (s *serverSide) snapshot() serverCounts {
	c := serverCounts{accepts: s.accepts.Load(), full: s.fullTLS.Load(), resumed: s.resumedTLS.Load(), shed: s.shed.Load()}
	for i, b := range s.backends {
		c.attempts[i], c.pool[i], c.failed[i] = b.attempts.Load(), b.pool.Load(), b.failed.Load()
	}
	return c
}

func (c serverCounts) sub(o serverCounts) serverCounts {
	d := serverCounts{accepts: c.accepts - o.accepts, full: c.full - o.full, resumed: c.resumed - o.resumed, shed: c.shed - o.shed}
	for i := range c.attempts {
		d.attempts[i], d.failed[i], d.pool[i] = c.attempts[i]-o.attempts[i], c.failed[i]-o.failed[i], c.pool[i]-o.pool[i]
	}
	return d
}

// startServerSide starts three backends: b0 fast, b1 slow, b2 the one
// that will fail. Each has its own TLS session-ticket keys, as independent
// servers do. With toolkit, they use grpcreuse's server side: a ticket-key
// rotator, keepalive enforcement matching the clients' preset, and load
// shedding; otherwise they are plain grpc-go servers.
func startServerSide(cert tls.Certificate, toolkit bool) (*serverSide, error) {
	s := &serverSide{}
	if toolkit {
		s.handshakes = credentials.NewServerHandshakeRecorder()
	}
	for i := range s.backends {
		b, err := s.startBackend(cert, toolkit)
		if err != nil {
			s.stop()
			return nil, fmt.Errorf("backend %s: %w", backendNames[i], err)
		}
		if i == slowBackend {
			b.extra = slowExtra
		}
		s.backends[i] = b
	}
	return s, nil
}

func (s *serverSide) startBackend(cert tls.Certificate, toolkit bool) (*backend, error) {
	b := &backend{slots: make(chan struct{}, workers), served: make(chan struct{})}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.DidResume {
				s.resumedTLS.Add(1)
			} else {
				s.fullTLS.Add(1)
			}
			return nil
		},
	}
	var opts []grpc.ServerOption
	unary := []grpc.UnaryServerInterceptor{}
	if toolkit {
		rotator, err := credentials.NewTicketKeyRotator()
		if err != nil {
			return nil, err
		}
		b.rotator = rotator
		if cfg, err = rotator.ServerConfig(cfg); err != nil {
			rotator.Close()
			return nil, err
		}
		shedCfg := interceptors.DefaultShedderConfig()
		shedCfg.Limit = shedLimit
		shedder, err := interceptors.NewShedder(interceptors.WithShedderConfig(shedCfg),
			interceptors.WithShedderObserver(shedCounter{&s.shed}))
		if err != nil {
			rotator.Close()
			return nil, err
		}
		b.shedder = shedder
		creds, err := credentials.NewTLS(cfg, credentials.WithServerHandshakeObserver(s.handshakes))
		if err != nil {
			rotator.Close()
			return nil, err
		}
		opts = append(opts, clientconn.KeepaliveDefault().ServerOptions()...)
		opts = append(opts, shedder.ServerOptions()...) // sheds at the tap, before a stream is made
		opts = append(opts, grpc.Creds(creds))
	} else {
		opts = append(opts, grpc.Creds(grpccreds.NewTLS(cfg)))
	}
	unary = append(unary, b.work)
	opts = append(opts, grpc.ChainUnaryInterceptor(unary...))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		if b.rotator != nil {
			b.rotator.Close()
		}
		return nil, err
	}
	b.addr = lis.Addr().String()
	b.lis = &trackingListener{Listener: lis, accepts: &s.accepts, conns: map[net.Conn]struct{}{}}
	b.srv = grpc.NewServer(opts...)
	testpb.RegisterTestServiceServer(b.srv, testService{})
	healthpb.RegisterHealthServer(b.srv, health.NewServer())
	go func() {
		defer close(b.served)
		_ = b.srv.Serve(b.lis) // returns when stopped
	}()
	return b, nil
}

// work is the backend's capacity, latency and fault model, as a unary
// interceptor in front of TestService (health checks pass through).
func (b *backend) work(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	testService := strings.HasPrefix(info.FullMethod, "/grpc.testing.TestService/")
	if testService {
		b.attempts.Add(1)
		if info.FullMethod == "/grpc.testing.TestService/UnaryCall" {
			b.pool.Add(1)
		}
	}
	if b.failing.Load() {
		b.failed.Add(1)
		return nil, status.Error(codes.Unavailable, "demo: backend failing")
	}
	if !testService {
		return handler(ctx, req)
	}
	select {
	case b.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	time.Sleep(workTime) // work goes on even if the caller has gone
	<-b.slots
	if b.extra > 0 {
		t := time.NewTimer(b.extra)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	return handler(ctx, req)
}

// dropConnections closes every connection of every backend at the TCP
// level, as a crashed load balancer or a network blip would: the clients
// must reconnect.
func (s *serverSide) dropConnections() {
	for _, b := range s.backends {
		b.lis.closeAll()
	}
}

func (s *serverSide) setFailing(i int, failing bool) { s.backends[i].failing.Store(failing) }

func (s *serverSide) stop() {
	for _, b := range s.backends {
		if b == nil {
			continue
		}
		b.srv.Stop()
		<-b.served
		if b.rotator != nil {
			b.rotator.Close()
		}
	}
}

// debugServer is the server half of the debug page: each backend's
// Shedder and the handshakes the backends answered.
func (s *serverSide) debugServer() *debugpage.Server {
	out := &debugpage.Server{}
	for i, b := range s.backends {
		if b == nil || b.shedder == nil {
			continue
		}
		snap := b.shedder.Snapshot()
		maps.DeleteFunc(snap.Shed, func(_ string, n int64) bool { return n == 0 }) // the page lists reasons that shed
		out.Shedders = append(out.Shedders, debugpage.Shedder{Name: backendNames[i] + " " + b.addr,
			Limit: snap.Limit, InFlight: snap.InFlight, Queued: snap.Queued, Reserved: snap.Reserved, Shed: snap.Shed})
	}
	if s.handshakes != nil {
		for _, h := range s.handshakes.Snapshot() {
			out.Handshakes = append(out.Handshakes, debugpage.ServerHandshakes{Server: h.Server, ResumedShare: h.ResumedShare,
				Handshakes: debugpage.Handshakes{Full: h.Full, Resumed: h.Resumed, Failed: h.Failed,
					P50: debugpage.Duration(h.FullP50), P99: debugpage.Duration(h.FullP99)}})
		}
	}
	return out
}

// shedCounter counts the requests a Shedder sheds.
type shedCounter struct{ n *atomic.Int64 }

func (c shedCounter) LimiterLimitChanged(string, string, int) {}
func (c shedCounter) LimiterRejected(_, _, _ string)          { c.n.Add(1) }

// trackingListener counts accepted TCP connections and keeps the live ones
// so they can be dropped.
type trackingListener struct {
	net.Listener
	accepts *atomic.Int64
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepts.Add(1)
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	return tc, nil
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *trackingListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// testService answers TestService's calls; the work happens in
// backend.work.
type testService struct {
	testpb.UnimplementedTestServiceServer
}

func (testService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (testService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}
