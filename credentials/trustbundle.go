package credentials

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// TrustBundleOption configures NewTrustBundle.
type TrustBundleOption interface {
	applyTrustBundle(*reloadOptions)
}

func (f reloadOptionFunc) applyTrustBundle(o *reloadOptions) { f(o) }

// TrustBundle is a set of CA certificates read from a PEM file and re-read
// every poll interval, used to verify peers: client certificates on
// servers (ServerConfig) and server certificates on clients (WithTrustBundle
// for NewTLS). When the file is unreadable or invalid the last good bundle
// stays in use and the error is kept for Err and reported to
// WithErrorHandler. Reads follow the same rules as CertificateReloader:
// bounded in size (4 MiB) and time, regular files only, consistent across
// a Kubernetes secret swap, and a changed file is taken only when two
// readings a settle delay apart agree.
//
// To roll a CA without failed calls: publish a bundle with both CAs, wait
// until every peer has polled, move the peers' certificates to the new
// CA, then publish the new CA alone. A peer whose certificate chains to a
// CA no longer in the bundle is refused from its next handshake on, and
// sessions it made before are not resumed.
//
// Its methods are safe for concurrent use. It starts one goroutine,
// stopped by Close.
type TrustBundle struct {
	w *watched[x509.CertPool]
}

// NewTrustBundle loads file (PEM, one or more CERTIFICATE blocks and
// nothing else, not all of them expired) and starts re-reading it. It fails if file is "", the poll
// interval or read timeout is not positive, or the file does not load now.
func NewTrustBundle(file string, opts ...TrustBundleOption) (*TrustBundle, error) {
	o := defaultReloadOptions()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("credentials: NewTrustBundle: option %d is nil", i)
		}
		opt.applyTrustBundle(&o)
	}
	if file == "" {
		return nil, errors.New("credentials: NewTrustBundle: file is \"\"; must name a PEM file of CA certificates")
	}
	if err := checkInterval("WithPollInterval", o.pollInterval); err != nil {
		return nil, err
	}
	w, err := newWatched(o, func(data [][]byte, _ *x509.CertPool) (*x509.CertPool, error) { return parseTrustBundle(file, data[0]) },
		(*x509.CertPool).Equal, // an unchanged bundle keeps its pool
		fileSpec{kind: "trust bundle file", path: file, limit: maxBundleFileSize})
	if err != nil {
		return nil, err
	}
	return &TrustBundle{w: w}, nil
}

// Pool returns the current CA certificates. The pool is shared: do not
// modify it. A later reload replaces it; it never changes in place.
func (b *TrustBundle) Pool() *x509.CertPool { return b.w.val.Load() }

// Reload re-reads the file now. On failure it keeps the last good bundle
// and returns (and reports, if the error is new) why.
func (b *TrustBundle) Reload() error { return b.w.reload() }

// Err returns why the file was last not taken, or nil if the last reading
// succeeded.
func (b *TrustBundle) Err() error { return b.w.files.lastErr() }

// Close stops the background goroutine and waits for it to exit; the last
// good bundle stays in use. Close is idempotent and returns nil.
func (b *TrustBundle) Close() error {
	b.w.close()
	return nil
}

// ServerConfig returns a copy of base that verifies client certificates
// against the bundle current at each handshake. It works through
// tls.Config.GetConfigForClient (calling base's own first, if set): every
// handshake's config has the current bundle as ClientCAs, so crypto/tls
// verifies the client's chain on full handshakes as usual, and declines
// to resume a session whose client chain no longer leads to a CA in the
// bundle, falling back to a full handshake in which the client presents
// its current certificate. Session ticket keys are not touched: derived
// configs keep base's (or TicketKeyRotator's) keys.
//
// It fails if base is nil, if base.ClientAuth is not
// RequireAndVerifyClientCert or VerifyClientCertIfGiven (the bundle would
// verify nothing), or if base.ClientCAs is set (the bundle replaces it).
// The result composes with TicketKeyRotator.ServerConfig (in either
// order) and with NewTLS.
func (b *TrustBundle) ServerConfig(base *tls.Config) (*tls.Config, error) {
	if base == nil {
		return nil, errors.New("credentials: TrustBundle.ServerConfig: tls.Config is nil")
	}
	if base.ClientAuth != tls.RequireAndVerifyClientCert && base.ClientAuth != tls.VerifyClientCertIfGiven {
		return nil, fmt.Errorf("credentials: TrustBundle.ServerConfig: tls.Config.ClientAuth is %v; "+
			"must be RequireAndVerifyClientCert or VerifyClientCertIfGiven for the bundle to verify client certificates", base.ClientAuth)
	}
	if base.ClientCAs != nil {
		return nil, errors.New("credentials: TrustBundle.ServerConfig: tls.Config.ClientCAs is set; the trust bundle replaces it, so leave it nil")
	}
	return perHandshake(base, b.w.val.Load, func(c *tls.Config, pool *x509.CertPool) { c.ClientCAs = pool }), nil
}

// WithTrustBundle makes NewTLS verify servers against b's current bundle:
// every client handshake uses b.Pool() as tls.Config.RootCAs, so the
// standard verification (chain and host name) applies, and crypto/tls
// declines to resume a session whose chain no longer leads to a CA in the
// bundle. NewTLS fails if tls.Config.RootCAs is also set or
// InsecureSkipVerify is true. A nil b means none. Default none.
func WithTrustBundle(b *TrustBundle) TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) { o.trust = b })
}

// parseTrustBundle parses a PEM file of CA certificates strictly: only
// CERTIFICATE blocks, each a valid certificate, at least one, not all of
// them expired, and nothing after the last block but white space (a
// truncated file fails here).
func parseTrustBundle(path string, data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n, expired := 0, 0
	now := time.Now()
	rest := data
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		n++
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("credentials: trust bundle file %q: PEM block %d is %q; want only CERTIFICATE blocks", path, n, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("credentials: trust bundle file %q: certificate %d: %w", path, n, err)
		}
		if now.After(c.NotAfter) {
			expired++
		}
		pool.AddCert(c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("credentials: trust bundle file %q: %d bytes after certificate %d are not a complete PEM block (truncated file?)", path, len(bytes.TrimSpace(rest)), n)
	}
	if n == 0 {
		return nil, fmt.Errorf("credentials: trust bundle file %q: no certificates; want one or more PEM CERTIFICATE blocks", path)
	}
	if expired == n {
		// crypto/x509 verifies no chain against expired roots: taking
		// the bundle would fail every handshake it verifies.
		return nil, fmt.Errorf("credentials: trust bundle file %q: every certificate has expired (%d of %d); it would verify no peer", path, expired, n)
	}
	return pool, nil
}

// checkTrustBundle validates WithTrustBundle against the config given to NewTLS.
func checkTrustBundle(b *TrustBundle, cfg *tls.Config) error {
	if b == nil {
		return nil
	}
	if cfg.RootCAs != nil {
		return errors.New("credentials: NewTLS: both WithTrustBundle and tls.Config.RootCAs are set; pass only one")
	}
	if cfg.InsecureSkipVerify {
		return errors.New("credentials: NewTLS: WithTrustBundle is set but tls.Config.InsecureSkipVerify is true; the bundle would verify nothing")
	}
	return nil
}
