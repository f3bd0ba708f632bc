package credentials

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/internal/targetctx"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

var (
	_ grpccreds.TransportCredentials = (*tlsCreds)(nil)
	_ grpccreds.AuthInfo             = TLSInfo{}
	_ grpccreds.AuthorityValidator   = TLSInfo{}
	_ telemetry.HandshakeReporter    = TLSInfo{}
)

// TLSInfo is the AuthInfo of a client connection made by NewTLS. It embeds
// grpc's credentials.TLSInfo, so State, SPIFFEID, SecurityLevel, AuthType,
// ValidateAuthority and GetSecurityValue work as with grpc's credentials,
// and adds how the handshake went. Read it from a call's peer:
//
//	var p peer.Peer
//	_, err := client.UnaryCall(ctx, req, grpc.Peer(&p))
//	info, _ := p.AuthInfo.(credentials.TLSInfo) // this package
//
// Code that type-asserts grpc's credentials.TLSInfo gets ok == false for
// it; use GRPCTLSInfo, which accepts both. Server handshakes return grpc's
// own credentials.TLSInfo unchanged (see the package documentation).
type TLSInfo struct {
	grpccreds.TLSInfo
	// Resumed reports whether the handshake resumed an earlier session
	// (the same as State.DidResume).
	Resumed bool
	// HandshakeDuration is how long the TLS handshake took, from the first
	// byte sent to the handshake completing.
	HandshakeDuration time.Duration
}

// HandshakeReport returns Resumed and HandshakeDuration; it lets
// telemetry's stats handler mark calls without importing this package.
func (i TLSInfo) HandshakeReport() (resumed bool, d time.Duration) {
	return i.Resumed, i.HandshakeDuration
}

// GRPCTLSInfo returns the grpc credentials.TLSInfo inside ai, whether ai is
// this package's TLSInfo (value or pointer) or grpc's own.
func GRPCTLSInfo(ai grpccreds.AuthInfo) (grpccreds.TLSInfo, bool) {
	switch v := ai.(type) {
	case TLSInfo:
		return v.TLSInfo, true
	case *TLSInfo:
		if v != nil {
			return v.TLSInfo, true
		}
	case grpccreds.TLSInfo:
		return v, true
	case *grpccreds.TLSInfo:
		if v != nil {
			return *v, true
		}
	}
	return grpccreds.TLSInfo{}, false
}

// instanceIDs numbers credentials whose client identity cannot be
// fingerprinted (tls.Config.GetClientCertificate), so their sessions are
// kept apart from every other credentials'.
var instanceIDs atomic.Uint64

// tlsCreds implements grpc's TransportCredentials.
type tlsCreds struct {
	cfg      *tls.Config                    // the caller's config, cloned; never mutated after NewTLS except by OverrideServerName
	server   grpccreds.TransportCredentials // grpc's TLS credentials over cfg, for ServerHandshake
	cache    *SessionCache                  // nil when a foreign cache or no cache is used
	foreign  tls.ClientSessionCache         // the caller's tls.Config.ClientSessionCache, if any
	tenant   string
	identity string
	anyAddr  bool // WithResumptionAcrossAddresses
	observer telemetry.HandshakeObserver
	// serverObs hears server handshakes; nil when none was given, so
	// ServerHandshake is then exactly grpc's.
	serverObs telemetry.ServerHandshakeObserver
	trust     *TrustBundle // if set, the RootCAs of every client handshake
}

// NewTLS returns gRPC transport credentials over cfg that resume TLS
// sessions per tenant and per backend address, observe every client
// handshake, and report in each connection's AuthInfo (a TLSInfo) whether
// it resumed and how long its handshake took.
//
// Client sessions go to the cache given by WithSessionCache; failing that,
// to cfg.ClientSessionCache: this package's SessionCache there is used
// exactly as with WithSessionCache, and a view from SessionCache.ForTenant
// as WithSessionCache plus WithTenant of its tenant; any other cache is
// partitioned the same way by key prefixes (without the TTL since
// verification, the client-certificate check and the resumption counters,
// which need a SessionCache); failing that, to a private SessionCache with
// default capacity and TTL.
// Set cfg.SessionTicketsDisabled to turn resumption off. Sessions are
// keyed by tenant, client identity (a fingerprint of cfg.Certificates, or
// these credentials alone when cfg.GetClientCertificate is set), remote
// address and server name, so backends behind one name each resume their
// own session and no session crosses tenants or client certificates.
//
// The same credentials serve grpc.Creds on a server: ServerHandshake is
// grpc's TLS server handshake over cfg.
//
// NewTLS fails if cfg is nil, if both WithSessionCache and
// cfg.ClientSessionCache are given, if cfg.ClientSessionCache is the view
// of one tenant and WithTenant names another, or if cfg.VerifyPeerCertificate is set
// while resumption is possible (crypto/tls skips that callback on resumed
// handshakes; move the check to VerifyConnection or pass
// WithVerifyPeerCertificateSkippedOnResumption).
func NewTLS(cfg *tls.Config, opts ...TLSOption) (grpccreds.TransportCredentials, error) {
	if cfg == nil {
		return nil, errors.New("credentials: NewTLS: tls.Config is nil; pass a config with at least RootCAs or Certificates")
	}
	o := defaultTLSOptions()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("credentials: NewTLS: option %d is nil", i)
		}
		opt.applyTLS(&o)
	}
	if cfg.VerifyPeerCertificate != nil && !cfg.SessionTicketsDisabled && !o.allowVerifyPeerCertRes {
		return nil, errors.New("credentials: NewTLS: tls.Config.VerifyPeerCertificate is set, " +
			"but crypto/tls skips it on resumed handshakes; move the check to VerifyConnection " +
			"(called on every handshake), set SessionTicketsDisabled, or pass " +
			"WithVerifyPeerCertificateSkippedOnResumption()")
	}
	if err := checkTrustBundle(o.trust, cfg); err != nil {
		return nil, err
	}
	if o.cache != nil && cfg.ClientSessionCache != nil {
		return nil, errors.New("credentials: NewTLS: both WithSessionCache and tls.Config.ClientSessionCache are set; pass only one")
	}
	foreign := cfg.ClientSessionCache
	// This package's own cache set as tls.Config.ClientSessionCache is used
	// as if given with WithSessionCache (and a tenant's view as WithTenant
	// too): treated as a foreign cache, it would lose the client-certificate
	// check, the TTL since verification and the resumption counters.
	switch v := foreign.(type) {
	case *SessionCache:
		if v == nil {
			return nil, errors.New("credentials: NewTLS: tls.Config.ClientSessionCache is a nil *SessionCache; set a cache from NewSessionCache or leave it nil")
		}
		o.cache, foreign = v, nil
	case sessionView:
		if o.tenant != "" && o.tenant != v.tenant {
			return nil, fmt.Errorf("credentials: NewTLS: tls.Config.ClientSessionCache is the view of tenant %q, "+
				"but WithTenant is %q; pass one of them", v.tenant, o.tenant)
		}
		o.cache, o.tenant, foreign = v.c, v.tenant, nil
	}
	if o.anyAddr && foreign != nil {
		return nil, errors.New("credentials: NewTLS: WithResumptionAcrossAddresses needs this package's SessionCache, " +
			"but tls.Config.ClientSessionCache is set; pass the cache with WithSessionCache or leave both unset")
	}
	if o.anyAddr && cfg.SessionTicketsDisabled {
		return nil, errors.New("credentials: NewTLS: WithResumptionAcrossAddresses is given, " +
			"but tls.Config.SessionTicketsDisabled is true; sessions would never be resumed")
	}
	c := &tlsCreds{
		cfg:       cfg.Clone(),
		cache:     o.cache,
		foreign:   foreign,
		tenant:    o.tenant,
		identity:  clientIdentity(cfg),
		anyAddr:   o.anyAddr,
		observer:  o.observer,
		serverObs: serverObservers(o.serverObs),
		trust:     o.trust,
	}
	if c.cache == nil && c.foreign == nil && !cfg.SessionTicketsDisabled {
		cache, err := NewSessionCache()
		if err != nil {
			return nil, err
		}
		c.cache = cache
	}
	c.server = grpccreds.NewTLS(c.cfg)
	return c, nil
}

// clientIdentity names the client certificates cfg presents, so that a
// session established with one certificate is never resumed by credentials
// presenting another.
func clientIdentity(cfg *tls.Config) string {
	if cfg.GetClientCertificate != nil {
		return "instance:" + strconv.FormatUint(instanceIDs.Add(1), 10)
	}
	if len(cfg.Certificates) == 0 {
		return ""
	}
	h := sha256.New()
	for i := range cfg.Certificates {
		hashCert(h, &cfg.Certificates[i])
	}
	return "cert:" + hex.EncodeToString(h.Sum(nil))
}

// certFingerprint names one client certificate chain; "" for none.
func certFingerprint(cert *tls.Certificate) string {
	if cert == nil || len(cert.Certificate) == 0 {
		return ""
	}
	h := sha256.New()
	hashCert(h, cert)
	return hex.EncodeToString(h.Sum(nil))
}

func hashCert(h hash.Hash, cert *tls.Certificate) {
	for _, der := range cert.Certificate {
		var n [8]byte
		l := len(der)
		for i := range n {
			n[i] = byte(l >> (8 * i))
		}
		h.Write(n[:])
		h.Write(der)
	}
	h.Write([]byte{0xff})
}

// Info implements credentials.TransportCredentials. It fills the same
// fields as grpc's TLS credentials, deprecated ones included, because
// grpc-go still reads ServerName to pick a channel's default authority.
func (c *tlsCreds) Info() grpccreds.ProtocolInfo {
	return grpccreds.ProtocolInfo{
		SecurityProtocol: "tls",
		//lint:ignore SA1019 parity with grpc-go's own TLS credentials
		SecurityVersion: "1.2",
		//lint:ignore SA1019 grpc-go still reads it for the default authority
		ServerName: c.cfg.ServerName,
	}
}

// ClientHandshake implements credentials.TransportCredentials. It runs
// grpc's TLS client handshake with a copy of the config whose session cache
// is the view for this tenant, identity and remote address.
func (c *tlsCreds) ClientHandshake(ctx context.Context, authority string, rawConn net.Conn) (net.Conn, grpccreds.AuthInfo, error) {
	addr := ""
	if ra := rawConn.RemoteAddr(); ra != nil {
		addr = ra.String()
	}
	cfg := c.cfg.Clone()
	if c.trust != nil {
		cfg.RootCAs = c.trust.Pool()
	}
	var hv *handshakeView
	switch {
	case cfg.SessionTicketsDisabled:
	case c.cache != nil:
		hv = newHandshakeView(c.cache, sessionKey{tenant: c.tenant, identity: c.identity, addr: addr},
			c.anyAddr, c.cfg.GetClientCertificate)
		cfg.ClientSessionCache = hv
		// crypto/tls calls VerifyConnection on every handshake, full or
		// resumed, before it stores a ticket: the view learns there
		// whether the server was verified now or the session resumed.
		userVerify := cfg.VerifyConnection
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if userVerify != nil {
				if err := userVerify(cs); err != nil {
					return err
				}
			}
			hv.verified(cs)
			return nil
		}
		if getCert := cfg.GetClientCertificate; getCert != nil {
			cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
				cert, err := getCert(cri)
				if err == nil {
					hv.sentCert(cri, cert)
				}
				return cert, err
			}
		}
	case c.foreign != nil:
		cfg.ClientSessionCache = newPrefixView(c.foreign, c.tenant, c.identity, addr)
	}

	start := time.Now()
	conn, ai, err := grpccreds.NewTLS(cfg).ClientHandshake(ctx, authority, rawConn)
	d := time.Since(start)

	serverName, _, splitErr := net.SplitHostPort(authority)
	if splitErr != nil {
		serverName = authority
	}
	hi := telemetry.HandshakeInfo{
		Target:    targetctx.From(ctx),
		Authority: serverName,
		Addr:      addr,
		Tenant:    c.tenant,
		Duration:  d,
		Err:       err,
	}
	if err != nil {
		if hv != nil && transportFailed(err) {
			hv.keepDropped()
		}
		if hv != nil && hv.wasOffered() {
			c.cache.handshakeResult(c.tenant, false)
		}
		c.observer.Handshake(hi)
		return nil, nil, err
	}
	info := TLSInfo{HandshakeDuration: d}
	if ti, ok := ai.(grpccreds.TLSInfo); ok {
		info.TLSInfo = ti
		info.Resumed = ti.State.DidResume
		hi.Resumed = ti.State.DidResume
		hi.Version = ti.State.Version
	}
	if hv != nil && hv.wasOffered() {
		c.cache.handshakeResult(c.tenant, info.Resumed)
	}
	c.observer.Handshake(hi)
	return conn, info, nil
}

// ServerHandshake implements credentials.TransportCredentials with grpc's
// own TLS server handshake; its AuthInfo is grpc's credentials.TLSInfo, so
// grpc/authz and other code asserting that type keep working. With
// WithServerHandshakeObserver, every handshake is reported once it ends;
// the connection returned is grpc's, unwrapped, so calls on it cost
// nothing more.
func (c *tlsCreds) ServerHandshake(rawConn net.Conn) (net.Conn, grpccreds.AuthInfo, error) {
	if c.serverObs == nil {
		return c.server.ServerHandshake(rawConn)
	}
	start := time.Now()
	conn, ai, err := c.server.ServerHandshake(rawConn)
	info := telemetry.ServerHandshakeInfo{Duration: time.Since(start), Err: err}
	if la := rawConn.LocalAddr(); la != nil {
		info.Server = la.String()
	}
	if ra := rawConn.RemoteAddr(); ra != nil {
		info.Addr = ra.String()
	}
	if ti, ok := ai.(grpccreds.TLSInfo); ok && err == nil {
		st := &ti.State
		info.Resumed, info.Version, info.ServerName = st.DidResume, st.Version, st.ServerName
		info.ClientCertificate = len(st.PeerCertificates) > 0
	}
	c.serverObs.ServerHandshake(info)
	return conn, ai, err
}

// Clone implements credentials.TransportCredentials. The clone shares the
// session cache, tenant, identity and observer.
func (c *tlsCreds) Clone() grpccreds.TransportCredentials {
	cc := *c
	cc.cfg = c.cfg.Clone()
	cc.server = grpccreds.NewTLS(cc.cfg)
	return &cc
}

// OverrideServerName implements credentials.TransportCredentials.
//
// Deprecated: use grpc.WithAuthority instead, as grpc-go does.
func (c *tlsCreds) OverrideServerName(serverNameOverride string) error {
	c.cfg.ServerName = serverNameOverride
	c.server = grpccreds.NewTLS(c.cfg)
	return nil
}

// transportFailed reports whether a handshake's error is its connection's
// (reset, closed, timed out, or its context ended) rather than TLS's: a
// TLS alert, sent or received, or a verification failure says something
// of the session or the server, and none of them wraps these errors.
func transportFailed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
