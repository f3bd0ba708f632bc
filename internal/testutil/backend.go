package testutil

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// CountingListener counts the connections it accepts, so a test can prove
// on the server side how many connections clients really opened.
type CountingListener struct {
	net.Listener
	accepts atomic.Int64
}

// Accept accepts and counts one connection.
func (l *CountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

// Accepts returns how many connections were accepted so far.
func (l *CountingListener) Accepts() int64 { return l.accepts.Load() }

// BackendOptions configures StartBackend. The zero value is a plaintext
// echo server.
type BackendOptions struct {
	// TLS, if set, makes the server speak TLS with this configuration.
	TLS *tls.Config
	// ServerOptions are added to grpc.NewServer.
	ServerOptions []grpc.ServerOption
	// Unary, if set, answers UnaryCall instead of the echo.
	Unary func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error)
	// Addr is the address to listen on; default "127.0.0.1:0".
	Addr string
}

// Backend is a gRPC server on loopback running grpc.testing.TestService
// (unary echo, server and bidi streaming) and the health service.
type Backend struct {
	// Addr is the listening address, "127.0.0.1:port".
	Addr string
	// Listener counts accepted connections.
	Listener *CountingListener
	// Server is the running server.
	Server *grpc.Server
	// Calls counts every TestService call the backend received.
	Calls atomic.Int64

	done chan struct{}
}

// StartBackend starts a backend and stops it (gracefully, bounded by 5s)
// when the test ends.
func StartBackend(tb testing.TB, opts BackendOptions) *Backend {
	tb.Helper()
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("testutil: listen %s: %v", addr, err)
	}
	sopts := append([]grpc.ServerOption(nil), opts.ServerOptions...)
	if opts.TLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	b := &Backend{
		Addr:     lis.Addr().String(),
		Listener: &CountingListener{Listener: lis},
		Server:   grpc.NewServer(sopts...),
		done:     make(chan struct{}),
	}
	testpb.RegisterTestServiceServer(b.Server, &testService{b: b, unary: opts.Unary})
	healthpb.RegisterHealthServer(b.Server, health.NewServer())
	go func() {
		defer close(b.done)
		_ = b.Server.Serve(b.Listener)
	}()
	tb.Cleanup(b.Stop)
	return b
}

// Stop stops the backend: gracefully if its calls end within 5s, hard
// otherwise. It is idempotent and waits for the serving goroutine.
func (b *Backend) Stop() {
	stopped := make(chan struct{})
	go func() { b.Server.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		b.Server.Stop()
		<-stopped
	}
	<-b.done
}

type testService struct {
	testpb.UnimplementedTestServiceServer
	b     *Backend
	unary func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error)
}

func (s *testService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	s.b.Calls.Add(1)
	return &testpb.Empty{}, nil
}

func (s *testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.b.Calls.Add(1)
	if s.unary != nil {
		return s.unary(ctx, req)
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// FullDuplexCall echoes every request's payload until the client closes.
func (s *testService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	s.b.Calls.Add(1)
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// Eventually polls cond every few milliseconds until it returns true or
// timeout passes, then fails the test with msg. It is the bounded
// replacement for sleeping in tests.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, msg string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v: %s", timeout, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
