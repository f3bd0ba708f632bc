package clientconn

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/internal/targetctx"
)

// defaultDial dials like grpc-go's own transport does: TCP with the OS's
// keepalive settings, or a unix socket for "unix:" addresses (grpc passes
// those to custom dialers verbatim).
func defaultDial(ctx context.Context, addr string) (net.Conn, error) {
	network := "tcp"
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", strings.TrimPrefix(path, "//")
	}
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}}
	return d.DialContext(ctx, network, addr)
}

// dialerFor wraps the Factory's dialer for one shared entry: it times each
// connect for telemetry and keeps the last error for WithWarmUp.
func (f *Factory) dialerFor(s *shared) func(context.Context, string) (net.Conn, error) {
	dial := f.opts.dialer
	if dial == nil {
		dial = defaultDial
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		start := time.Now()
		c, err := dial(ctx, addr)
		s.recordErr(err)
		f.obs.Dialed(s.key.target, addr, time.Since(start), err)
		return c, err
	}
}

// observedCreds keeps the last client handshake error of a shared entry,
// so a connection that dials fine but fails TLS explains itself.
type observedCreds struct {
	credentials.TransportCredentials
	s *shared
}

func (c *observedCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ctx = targetctx.With(ctx, c.s.key.target) // for the handshake's telemetry
	out, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, conn)
	c.s.recordErr(err)
	if err == nil && c.Info().SecurityProtocol == "insecure" {
		// Plaintext: nothing checked the peer. Explain a TLS server (or
		// anything that is not a gRPC server) from its first bytes.
		out = &firstRead{Conn: out, s: c.s}
	}
	return out, info, err
}

// firstRead looks at the first bytes a plaintext connection receives: a
// TLS record, or the connection closing before the server said anything,
// becomes the entry's last connection error. Reads after the first pass
// straight through.
type firstRead struct {
	net.Conn
	s    *shared
	done atomic.Bool
}

func (c *firstRead) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.done.Load() || !c.done.CompareAndSwap(false, true) {
		return n, err
	}
	addr := c.Conn.RemoteAddr().String()
	switch {
	case n >= 2 && (p[0] == 0x15 || p[0] == 0x16) && p[1] == 0x03:
		c.s.recordErr(fmt.Errorf("%s answered with TLS but this connection is plaintext: use WithTLS (or TLS transport credentials)", addr))
	case n == 0 && err != nil:
		c.s.recordErr(fmt.Errorf("%s closed the plaintext connection before sending anything (%v): is it a TLS server? then use WithTLS", addr, err))
	}
	return n, err
}

func (c *observedCreds) Clone() credentials.TransportCredentials {
	return &observedCreds{TransportCredentials: c.TransportCredentials.Clone(), s: c.s}
}
