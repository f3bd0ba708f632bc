package testutil

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Faults injects errors and delays into a server's calls, switchable while
// traffic flows. Failures are deterministic (every Nth call), so a test
// that counts them reproduces. The zero value injects nothing.
type Faults struct {
	every atomic.Int64 // fail every Nth call; 0 = never
	code  atomic.Uint32
	delay atomic.Int64
	calls atomic.Int64
}

// FailEvery makes every nth call fail with code (n = 1: all calls, 2: every
// other one); n = 0 stops failing.
func (f *Faults) FailEvery(n int, code codes.Code) {
	f.code.Store(uint32(code))
	f.every.Store(int64(n))
}

// Calls counts every call that reached the server, failed or not: what a
// test counts to prove a client sent nothing (Backend.Calls misses calls
// the faults failed before the handler).
func (f *Faults) Calls() int64 { return f.calls.Load() }

// SetDelay makes every call wait d (or until its deadline) before running.
func (f *Faults) SetDelay(d time.Duration) { f.delay.Store(int64(d)) }

// inject applies the faults to one call.
func (f *Faults) inject(ctx context.Context) error {
	if d := time.Duration(f.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	n := f.calls.Add(1)
	if every := f.every.Load(); every > 0 && n%every == 0 {
		return status.Errorf(codes.Code(f.code.Load()), "testutil: injected fault on call %d", n)
	}
	return nil
}

// UnaryServerInterceptor injects the faults into unary calls.
func (f *Faults) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := f.inject(ctx); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor injects the faults into streams, at their start.
func (f *Faults) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := f.inject(ss.Context()); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// ServerOptions installs both interceptors.
func (f *Faults) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(f.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(f.StreamServerInterceptor())}
}
