package clientconn

import (
	"context"
	"fmt"
	"io"
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
		s.lastAddr.Store(&addr)
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
	if err == nil && c.Info().SecurityProtocol != "insecure" {
		// With TLS 1.3 the server checks the client's certificate after
		// the client's handshake returned, so a refusal (no or a bad
		// client certificate) only shows as the first read failing.
		// (Plaintext connections are left as they are: grpc-go reads a
		// bare *net.TCPConn without pinning a buffer while it is idle, and
		// a wrapper would cost 32 KiB per connection; plaintextProbe
		// explains them when they fail.)
		out = &firstRead{Conn: out, s: c.s}
	}
	return out, info, err
}

// firstRead looks at the first read of a TLS connection after its
// handshake: the connection failing before the server said anything
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
	if n == 0 && err != nil {
		c.s.recordErr(fmt.Errorf("%s ended the TLS connection after the handshake, before HTTP/2 began (%v): does it require a client certificate this client does not have, or reject it?",
			c.Conn.RemoteAddr(), err))
	}
	return n, err
}

// plaintextProbe explains why plaintext connections of s fail: it speaks
// HTTP/2 to the address last dialled, once, and records what the first
// bytes of the answer say (a TLS record, or the connection closing before
// the server sent anything) as the entry's last connection error. It runs
// only while a WithWarmUp Get waits on a connection in TRANSIENT_FAILURE,
// bounded by ctx and probeTimeout, on the Get's own goroutine.
func (f *Factory) plaintextProbe(ctx context.Context, s *shared) {
	addr := s.lastAddr.Load()
	if addr == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	dial := f.opts.dialer
	if dial == nil {
		dial = defaultDial
	}
	conn, err := dial(ctx, *addr)
	if err != nil {
		return // the connection's own dial error is already recorded
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // a dialer's conn may not support deadlines
	defer stop()
	// The client connection preface and an empty SETTINGS frame (RFC 9113 §3.4).
	if _, err := conn.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
		return
	}
	var buf [2]byte
	n, err := io.ReadFull(conn, buf[:])
	switch {
	case ctx.Err() != nil:
	case n == 2 && (buf[0] == 0x15 || buf[0] == 0x16) && buf[1] == 0x03:
		s.recordErr(fmt.Errorf("%s answered with TLS but this connection is plaintext: use WithTLS (or TLS transport credentials)", *addr))
	case n == 0 && err != nil:
		s.recordErr(fmt.Errorf("%s closed the plaintext connection before sending anything (%v): is it a TLS server? then use WithTLS", *addr, err))
	}
}

// probeTimeout bounds plaintextProbe.
const probeTimeout = time.Second

func (c *observedCreds) Clone() credentials.TransportCredentials {
	return &observedCreds{TransportCredentials: c.TransportCredentials.Clone(), s: c.s}
}
