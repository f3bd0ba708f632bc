package clientconn

import (
	"context"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	"github.com/grpcreuse/grpcreuse/internal/rpcerr"
)

// Conn is one service's handle on a shared connection. It implements
// grpc.ClientConnInterface, so generated clients take it directly:
//
//	client := pb.NewGreeterClient(conn)
//
// A Conn is safe for concurrent use. Close it when the service is done;
// calls after Close fail with codes.Canceled and unwrap to ErrClosed.
type Conn struct {
	f      *Factory
	s      *shared
	closed atomic.Bool
}

var _ grpc.ClientConnInterface = (*Conn)(nil)

// Invoke performs a unary RPC on the shared connection.
func (c *Conn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	g := c.acquire()
	if g == nil {
		return c.closedErr(method)
	}
	defer g.release()
	return g.cc.Invoke(ctx, method, args, reply, opts...)
}

// NewStream starts a stream on the shared connection. The connection it
// runs on stays open until the stream ends, even if it is replaced or
// evicted meanwhile.
func (c *Conn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	g := c.acquire()
	if g == nil {
		return nil, c.closedErr(method)
	}
	done := &streamDone{g: g}
	opts = append(opts[:len(opts):len(opts)], grpc.OnFinish(done.finish))
	cs, err := g.cc.NewStream(ctx, desc, method, opts...)
	if err != nil {
		done.finish(err)
	}
	return cs, err
}

func (c *Conn) acquire() *generation {
	if c.closed.Load() {
		return nil
	}
	return c.s.acquire()
}

func (c *Conn) closedErr(method string) error {
	return rpcerr.New(codes.Canceled, fmt.Sprintf("clientconn: %s on %q: the Conn or its Factory is closed", method, c.s.key.target), ErrClosed)
}

// Close releases this handle's reference to the shared connection. The
// connection stays open for other handles, or idle in the pool for the
// next Get. Close is idempotent and always returns nil.
func (c *Conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.f.release(c.s)
	}
	return nil
}

// ClientConn returns the underlying *grpc.ClientConn, for APIs that need
// the concrete type. Do not Close it: the Factory owns it. With
// WithMaxConnectionAge the underlying connection changes over time, so do
// not keep the result.
func (c *Conn) ClientConn() *grpc.ClientConn { return c.s.cur.Load().cc }

// Target returns the canonical target the connection was made for.
func (c *Conn) Target() string { return c.s.key.target }

// GetState returns the connectivity state of the underlying connection.
func (c *Conn) GetState() connectivity.State { return c.s.cur.Load().cc.GetState() }

// waitReady implements WithWaitForReady.
func (c *Conn) waitReady(ctx context.Context) error {
	st := waitState(ctx, c.s.cur.Load().cc)
	switch {
	case st == connectivity.Ready:
		return nil
	case ctx.Err() == nil: // Shutdown: the Factory was closed meanwhile
		return fmt.Errorf("clientconn: %q closed while waiting for READY: %w", c.s.key.target, ErrClosed)
	}
	if err := c.s.lastError(); err != nil {
		return fmt.Errorf("clientconn: %q not ready (%v): %w; last connection error: %w", c.s.key.target, st, ctx.Err(), err)
	}
	return fmt.Errorf("clientconn: %q not ready (%v): %w", c.s.key.target, st, ctx.Err())
}
