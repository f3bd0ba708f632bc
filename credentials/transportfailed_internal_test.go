package credentials

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestTransportFailed: only a handshake that died on its connection puts
// its session back (SessionCache.restore); a TLS alert, sent or received,
// or a verification failure says something of the session or the server,
// and crypto/tls's drop stands.
func TestTransportFailed(t *testing.T) {
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"reset", reset, true},
		{"reset, wrapped", fmt.Errorf("handshake: %w", reset), true},
		{"EOF", io.EOF, true},
		{"unexpected EOF", io.ErrUnexpectedEOF, true},
		{"broken pipe", &net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)}, true},
		{"closed", net.ErrClosed, true},
		{"deadline", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, true},
		{"context", context.DeadlineExceeded, true},
		{"alert received", &net.OpError{Op: "remote error", Err: tls.AlertError(40)}, false},
		{"alert sent", &net.OpError{Op: "local error", Err: tls.AlertError(80)}, false},
		{"alert", tls.AlertError(42), false},
		{"unknown authority", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, false},
		{"other", fmt.Errorf("tls: bad record MAC"), false},
	} {
		if got := transportFailed(tc.err); got != tc.want {
			t.Errorf("%s (%v): transportFailed = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestRestoreKeepsTheSessionFoundFromOtherAddresses: a session put back
// after a handshake cut on its transport is the latest for its server
// again, so that WithResumptionAcrossAddresses offers it to another
// backend address, as before the cut.
func TestRestoreKeepsTheSessionFoundFromOtherAddresses(t *testing.T) {
	c, err := NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}
	k := sessionKey{tenant: "a", addr: "10.0.0.1:443", name: "backend"}
	c.put(k, new(tls.ClientSessionState), stored{})
	e, _, ok := c.get(k, lookup{})
	if !ok {
		t.Fatal("the session stored is not offered")
	}
	c.put(k, nil, stored{}) // crypto/tls drops it as the handshake fails
	c.restore(k, e)
	other := k
	other.addr = "10.0.0.2:443"
	if _, found, ok := c.get(other, lookup{anyAddr: true}); !ok || found != k {
		t.Errorf("another address after the restore: offered %v from %v, want the session under %v", ok, found, k)
	}
}
