package spiffe

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/grpcreuse/grpcreuse/credentials"
)

var _ tls.ClientSessionCache = (*svidSessions)(nil)

// ClientConfig returns a copy of base (nil means an empty config) for a
// client that presents svid's current X509-SVID and accepts a server only
// if its X509-SVID verifies against bundle and authorize allows its SPIFFE
// ID, on every handshake, resumed ones included.
//
// The copy sets GetClientCertificate (the SVID current at each full
// handshake), InsecureSkipVerify (host-name verification is replaced by
// SPIFFE ID authorization, as in go-spiffe's tlsconfig) and
// VerifyConnection (the SPIFFE check, then base's own VerifyConnection, if
// any), and raises MinVersion to TLS 1.2. Unless base.SessionTicketsDisabled
// is set, its ClientSessionCache keeps sessions in base.ClientSessionCache
// (or in a new credentials.SessionCache with default capacity and TTL when
// that is nil) under keys that also name the SVID current when the
// session was stored, so that after an SVID rotation the client does not
// resume a session in which it authenticated with the old SVID. Give the
// result to credentials.NewTLS (without WithSessionCache; to share a cache,
// set it as base.ClientSessionCache), which partitions those sessions by
// tenant and backend address as usual.
//
// It fails if svid, bundle or authorize is nil, or if base sets
// Certificates, GetClientCertificate, RootCAs or VerifyPeerCertificate
// (each would conflict with or bypass the SPIFFE checks).
func ClientConfig(base *tls.Config, svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) (*tls.Config, error) {
	cfg, err := prepare("ClientConfig", base, svid, bundle, authorize, func(b *tls.Config) []conflict {
		return []conflict{
			{len(b.Certificates) != 0, "Certificates", "; the SVID source supplies the client certificate"},
			{b.GetClientCertificate != nil, "GetClientCertificate", "; the SVID source supplies the client certificate"},
			{b.RootCAs != nil, "RootCAs", "; the bundle source verifies the server"},
		}
	})
	if err != nil {
		return nil, err
	}
	cfg.GetClientCertificate = tlsconfig.GetClientCertificate(svid)
	cfg.InsecureSkipVerify = true // replaced by the SPIFFE check in VerifyConnection
	cfg.VerifyConnection = verifyConnection("server", bundle, authorize, cfg.VerifyConnection)
	if !cfg.SessionTicketsDisabled {
		inner := cfg.ClientSessionCache
		if inner == nil {
			c, err := credentials.NewSessionCache()
			if err != nil {
				return nil, err
			}
			inner = c
		}
		cfg.ClientSessionCache = &svidSessions{inner: inner, svid: svid}
	}
	return cfg, nil
}

// ServerConfig returns a copy of base (nil means an empty config) for a
// server that presents svid's current X509-SVID and accepts a client only
// if it presents an X509-SVID that verifies against bundle and whose
// SPIFFE ID authorize allows, on every handshake, resumed ones included: a
// session made by a client that the policy or the bundle no longer allows
// is refused when the client tries to resume it.
//
// The copy sets GetCertificate (the SVID current at each full handshake),
// ClientAuth to RequireAnyClientCert (the chain is verified by the SPIFFE
// check, not by crypto/tls), VerifyConnection (the SPIFFE check, then
// base's own, if any) and raises MinVersion to TLS 1.2. Apply
// credentials.TicketKeyRotator.ServerConfig to the result for shared or
// rotated ticket keys, and serve it with credentials.NewTLS or grpc's.
//
// It fails if svid, bundle or authorize is nil, or if base sets
// Certificates, GetCertificate, ClientCAs, VerifyPeerCertificate or
// GetConfigForClient (a config returned by the latter would carry its own
// VerifyConnection and could bypass the SPIFFE check).
func ServerConfig(base *tls.Config, svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer) (*tls.Config, error) {
	cfg, err := prepare("ServerConfig", base, svid, bundle, authorize, func(b *tls.Config) []conflict {
		return []conflict{
			{len(b.Certificates) != 0, "Certificates", "; the SVID source supplies the server certificate"},
			{b.GetCertificate != nil, "GetCertificate", "; the SVID source supplies the server certificate"},
			{b.ClientCAs != nil, "ClientCAs", "; the bundle source verifies clients"},
			{b.GetConfigForClient != nil, "GetConfigForClient", "; apply it (for example TicketKeyRotator.ServerConfig) to the result instead"},
		}
	})
	if err != nil {
		return nil, err
	}
	cfg.GetCertificate = tlsconfig.GetCertificate(svid)
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = verifyConnection("client", bundle, authorize, cfg.VerifyConnection)
	return cfg, nil
}

// conflict is a field of the base config that the SPIFFE config would
// override or bypass: set says base sets it, why (with its leading
// punctuation) what to do instead.
type conflict struct {
	set        bool
	field, why string
}

// prepare checks fn's arguments and returns a copy of base (nil means an
// empty config) with MinVersion at least TLS 1.2, or an error naming the
// first of conflicts(base) that base sets. VerifyPeerCertificate always
// conflicts: crypto/tls skips it on resumed handshakes.
func prepare(fn string, base *tls.Config, svid x509svid.Source, bundle x509bundle.Source, authorize tlsconfig.Authorizer,
	conflicts func(*tls.Config) []conflict) (*tls.Config, error) {
	switch {
	case svid == nil:
		return nil, fmt.Errorf("spiffe: %s: the X509-SVID source is nil", fn)
	case bundle == nil:
		return nil, fmt.Errorf("spiffe: %s: the X.509 bundle source is nil", fn)
	case authorize == nil:
		return nil, fmt.Errorf("spiffe: %s: the authorizer is nil; pass one of tlsconfig.AuthorizeID, AuthorizeMemberOf, ... (AuthorizeAny to allow every ID of the bundle's trust domains)", fn)
	}
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	for _, c := range append(conflicts(cfg), conflict{cfg.VerifyPeerCertificate != nil, "VerifyPeerCertificate",
		", but crypto/tls skips it on resumed handshakes; use VerifyConnection"}) {
		if c.set {
			return nil, fmt.Errorf("spiffe: %s: tls.Config.%s is set%s", fn, c.field, c.why)
		}
	}
	cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS12)
	return cfg, nil
}

// verifyConnection verifies the peer's X509-SVID against the bundle source
// as it is now and authorizes its SPIFFE ID, then runs next. crypto/tls
// calls it on every handshake; on a resumed one PeerCertificates are those
// of the original handshake, so the check is made again against today's
// bundle and policy.
func verifyConnection(peer string, bundle x509bundle.Source, authorize tlsconfig.Authorizer, next func(tls.ConnectionState) error) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("spiffe: the %s presented no X509-SVID", peer)
		}
		id, chains, err := x509svid.Verify(cs.PeerCertificates, bundle)
		if err != nil {
			return fmt.Errorf("spiffe: the %s's X509-SVID: %w", peer, err)
		}
		if err := authorize(id, chains); err != nil {
			return fmt.Errorf("spiffe: the %s's SPIFFE ID %q is not authorized (resumed: %t): %w", peer, id.String(), cs.DidResume, err)
		}
		if next != nil {
			return next(cs)
		}
		return nil
	}
}

// svidSessions is a tls.ClientSessionCache over inner whose keys name the
// client's current SVID, so a session is offered only while the SVID it was
// made with is still current. (crypto/tls stores a session after the
// handshake; if the SVID rotates in between, the session is filed under
// the new one and may be resumed once, while the old SVID is still valid.)
type svidSessions struct {
	inner tls.ClientSessionCache
	svid  x509svid.Source
	last  atomic.Pointer[svidKey]
}

type svidKey struct {
	leaf   *x509.Certificate
	suffix string
}

func (c *svidSessions) suffix() (string, bool) {
	s, err := c.svid.GetX509SVID()
	if err != nil || s == nil || len(s.Certificates) == 0 {
		return "", false
	}
	leaf := s.Certificates[0]
	if k := c.last.Load(); k != nil && k.leaf == leaf {
		return k.suffix, true
	}
	sum := sha256.Sum256(leaf.Raw)
	k := &svidKey{leaf: leaf, suffix: "|svid:" + hex.EncodeToString(sum[:16])}
	c.last.Store(k)
	return k.suffix, true
}

// Get implements tls.ClientSessionCache.
func (c *svidSessions) Get(key string) (*tls.ClientSessionState, bool) {
	suffix, ok := c.suffix()
	if !ok {
		return nil, false
	}
	return c.inner.Get(key + suffix)
}

// Put implements tls.ClientSessionCache.
func (c *svidSessions) Put(key string, cs *tls.ClientSessionState) {
	if suffix, ok := c.suffix(); ok {
		c.inner.Put(key+suffix, cs)
	}
}
