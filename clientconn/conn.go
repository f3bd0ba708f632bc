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
	err := g.cc.Invoke(ctx, method, args, reply, opts...)
	if err != nil && g.closedBehindOurBack(err) {
		c.f.revive(c.s, g)
	}
	return err
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
	created := false
	defer func() {
		if !created { // an interceptor panicked: no stream, so no OnFinish
			done.finish(nil)
		}
	}()
	cs, err := g.cc.NewStream(ctx, desc, method, opts...)
	created = true
	if err != nil {
		done.finish(err)
		if g.closedBehindOurBack(err) {
			c.f.revive(c.s, g)
		}
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

// discard is Close for the handle of a Get whose warm-up failed.
func (c *Conn) discard() {
	if c.closed.CompareAndSwap(false, true) {
		c.f.releaseAs(c.s, true)
	}
}

// ClientConn returns the underlying *grpc.ClientConn, for APIs that need
// the concrete type. Do not Close it: the Factory owns it.
//
// If it is closed anyway, the calls that meet the closed connection fail
// (codes.Canceled, as in grpc-go) and the Factory replaces it, so the
// other handles sharing it go on.
//
// Calls made directly on it are outside the Factory's guarantees: they
// are not counted as in flight, so a max-age replacement, an eviction or
// Factory.Close does not wait for them and may cancel them (with
// codes.Canceled) when it closes the connection. The breakers and
// limiters of the Factory's policy do apply to them (they are the
// connection's interceptors). With WithMaxConnectionAge the underlying
// connection changes over time, so do not keep the result; make calls
// through the Conn itself wherever the API allows.
func (c *Conn) ClientConn() *grpc.ClientConn { return c.s.cur.Load().cc }

// Target returns the canonical target the connection was made for.
func (c *Conn) Target() string { return c.s.key.target }

// GetState returns the connectivity state of the underlying connection.
func (c *Conn) GetState() connectivity.State { return c.s.cur.Load().cc.GetState() }

// waitReady implements WithWarmUp. A generation replaced for its age
// while it waits shuts down; the wait moves on to its successor.
func (c *Conn) waitReady(ctx context.Context) error {
	var onFailure func()
	if c.s.key.creds.Info().SecurityProtocol == "insecure" {
		probed := false // once per wait: a failing plaintext connection explains itself
		onFailure = func() {
			if !probed {
				probed = true
				c.f.plaintextProbe(ctx, c.s)
			}
		}
	}
	for {
		g := c.s.cur.Load()
		st := waitState(ctx, g.cc, onFailure)
		switch {
		case st == connectivity.Ready:
			return nil
		case ctx.Err() != nil:
			if err := c.s.lastError(); err != nil {
				return fmt.Errorf("clientconn: %q not ready (%v): %w; last connection error: %w", c.s.key.target, st, ctx.Err(), err)
			}
			return fmt.Errorf("clientconn: %q not ready (%v): %w", c.s.key.target, st, ctx.Err())
		case c.s.dead.Load() || c.s.cur.Load() == g: // Shutdown, not replaced: closed
			return fmt.Errorf("clientconn: %q closed while waiting for READY: %w", c.s.key.target, ErrClosed)
		}
	}
}
