package testutil

import (
	"context"
	"crypto/tls"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	grpccreds "google.golang.org/grpc/credentials"
)

// TLSServer is a loopback TLS server without gRPC on top, for tests and
// benchmarks of handshakes and resumption: on every connection it completes
// the server handshake, records what the client presented, writes one byte
// (so a TLS 1.3 client has its session tickets once it has read it) and
// reads until the client closes. Pair it with HandshakeTLS.
//
// Its methods are safe for concurrent use.
type TLSServer struct {
	// Addr is the listening address, "127.0.0.1:port".
	Addr string

	lis net.Listener
	wg  sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open connections, closed by the cleanup
	seen  []tlsRecord           // in the order the handshakes completed
	res   int                   // how many of seen resumed
	done  bool                  // cleanup ran: new connections are closed at once
}

// tlsRecord keeps what a handshake showed without allocating on the
// server's path (benchmarks report the server's allocations too): the
// address and serial already exist, they become strings in Handshakes.
type tlsRecord struct {
	remote  net.Addr
	resumed bool
	serial  *big.Int // nil: no client certificate
}

// TLSHandshake is what a TLSServer saw of one completed handshake.
type TLSHandshake struct {
	// Remote is the client's address, "127.0.0.1:port" (the local address
	// HandshakeTLS returns).
	Remote string
	// Resumed reports whether the client resumed a session (DidResume).
	Resumed bool
	// PeerSerial is the serial number, in decimal, of the client's leaf
	// certificate (on resumption, the one the resumed session carries);
	// "" when the client presented none.
	PeerSerial string
}

// StartTLSServer serves TLS with cfg on a new loopback port until the test
// ends. cfg is cloned, and "h2" is added to its NextProtos when missing, as
// grpc's credentials.NewTLS does, so gRPC clients (which insist on ALPN)
// and plain crypto/tls clients can both connect; change the server's
// behaviour after the start through cfg's callbacks (GetConfigForClient,
// VerifyConnection), not its fields. The cleanup closes the listener and
// every open connection and waits for the server's goroutines.
func StartTLSServer(tb testing.TB, cfg *tls.Config) *TLSServer {
	tb.Helper()
	cfg = cfg.Clone()
	if !slices.Contains(cfg.NextProtos, "h2") {
		cfg.NextProtos = append(slices.Clip(cfg.NextProtos), "h2")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testutil: tls server listen: %v", err)
	}
	s := &TLSServer{Addr: lis.Addr().String(), lis: lis, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			raw, err := lis.Accept()
			if err != nil {
				return
			}
			if !s.track(raw) {
				raw.Close()
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.untrack(raw)
				s.serve(tls.Server(raw, cfg), raw.RemoteAddr())
			}()
		}
	}()
	tb.Cleanup(s.close)
	return s
}

func (s *TLSServer) serve(conn *tls.Conn, remote net.Addr) {
	defer conn.Close()
	if err := conn.Handshake(); err != nil {
		return
	}
	cs := conn.ConnectionState()
	r := tlsRecord{remote: remote, resumed: cs.DidResume}
	if len(cs.PeerCertificates) > 0 {
		r.serial = cs.PeerCertificates[0].SerialNumber
	}
	// Recorded before the byte is written: once a client has read it, the
	// server's record of its handshake is there.
	s.mu.Lock()
	s.seen = append(s.seen, r)
	if r.resumed {
		s.res++
	}
	s.mu.Unlock()
	if _, err := conn.Write([]byte{1}); err != nil {
		return
	}
	var buf [64]byte
	for {
		if _, err := conn.Read(buf[:]); err != nil {
			return
		}
	}
}

func (s *TLSServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *TLSServer) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// close stops the server: a client that never closes its connection cannot
// hold the test's end up.
func (s *TLSServer) close() {
	s.lis.Close()
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Handshakes returns what the server saw of every completed handshake so
// far, in the order they completed.
func (s *TLSServer) Handshakes() []TLSHandshake {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TLSHandshake, len(s.seen))
	for i, r := range s.seen {
		out[i] = TLSHandshake{Remote: r.remote.String(), Resumed: r.resumed}
		if r.serial != nil {
			out[i].PeerSerial = r.serial.String()
		}
	}
	return out
}

// Counts returns how many handshakes completed so far and how many of them
// resumed a session.
func (s *TLSServer) Counts() (resumed, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.res, len(s.seen)
}

// HandshakeTLS dials addr (a TLSServer's), runs creds' client handshake for
// authority within 10 s, reads the server's byte (so TLS 1.3 session
// tickets have arrived) and closes the connection: one handshake without
// gRPC's HTTP/2 on top. It returns the client's local address (the
// server's TLSHandshake.Remote) and the handshake's AuthInfo. It returns
// its error, so it may run off the test goroutine.
func HandshakeTLS(creds grpccreds.TransportCredentials, addr, authority string) (local net.Addr, ai grpccreds.AuthInfo, err error) {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, ai, err := creds.ClientHandshake(ctx, authority, raw)
	if err != nil {
		raw.Close()
		return nil, nil, err
	}
	defer conn.Close()
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return nil, nil, err
	}
	return raw.LocalAddr(), ai, nil
}
