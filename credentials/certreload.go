package credentials

import (
	"bytes"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// CertificateReloader serves a certificate and key read from PEM files and
// re-read every poll interval, for servers (GetCertificate) and for mTLS
// clients (GetClientCertificate). When the files are unreadable, do not
// form a valid pair, end in a cut-off PEM block, or hold an expired
// certificate, the last good certificate stays in use and the error
// is kept for Err and reported to WithErrorHandler.
//
// Its methods are safe for concurrent use. It starts one goroutine,
// stopped by Close.
type CertificateReloader struct {
	w *watched[tls.Certificate]
}

// NewCertificateReloader loads certFile and keyFile (PEM, as for
// tls.LoadX509KeyPair) and starts re-reading them. It fails if either name
// is empty, the poll interval is not positive, or the files do not load now
// (an expired certificate does not load).
func NewCertificateReloader(certFile, keyFile string, opts ...CertificateReloaderOption) (*CertificateReloader, error) {
	o := defaultReloadOptions()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("credentials: NewCertificateReloader: option %d is nil", i)
		}
		opt.applyCertReload(&o)
	}
	if certFile == "" {
		return nil, errors.New("credentials: NewCertificateReloader: certFile is \"\"; must name a PEM file")
	}
	if keyFile == "" {
		return nil, errors.New("credentials: NewCertificateReloader: keyFile is \"\"; must name a PEM file")
	}
	if err := checkInterval("WithPollInterval", o.pollInterval); err != nil {
		return nil, err
	}
	w, err := newWatched(o, func(data [][]byte, _ *tls.Certificate) (*tls.Certificate, error) {
		return parseKeyPair(certFile, keyFile, data)
	}, nil,
		fileSpec{kind: "certificate file", path: certFile, limit: maxCertFileSize},
		fileSpec{kind: "key file", path: keyFile, limit: maxCertFileSize})
	if err != nil {
		return nil, err
	}
	return &CertificateReloader{w: w}, nil
}

// GetCertificate returns the current certificate; use it as
// tls.Config.GetCertificate on servers.
func (r *CertificateReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.w.val.Load(), nil
}

// GetClientCertificate returns the current certificate; use it as
// tls.Config.GetClientCertificate on mTLS clients.
func (r *CertificateReloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.w.val.Load(), nil
}

// Reload re-reads the files now. On failure it keeps the last good
// certificate and returns (and reports, if the error is new) why.
//
// Both files are read as one consistent pair: bounded in size (1 MiB
// each) and time (WithReadTimeout), regular files only, re-read when
// either was replaced while being read (a Kubernetes secret's "..data"
// swap), and, when they changed, read twice a settle delay apart and
// taken only if both readings agree. A certificate is never served with a
// key from another generation: such a pair fails tls.X509KeyPair and is
// not taken.
func (r *CertificateReloader) Reload() error { return r.w.reload() }

// Err returns why the files were last not taken, or nil if the last
// reading succeeded.
func (r *CertificateReloader) Err() error { return r.w.files.lastErr() }

// Close stops the background goroutine and waits for it to exit; the last
// good certificate stays available. Close is idempotent and returns nil.
func (r *CertificateReloader) Close() error {
	r.w.close()
	return nil
}

func parseKeyPair(certFile, keyFile string, data [][]byte) (*tls.Certificate, error) {
	for i, name := range []string{certFile, keyFile} {
		if n, ok := cutOffPEM(data[i]); ok {
			kind := [...]string{"certificate file", "key file"}[i]
			return nil, fmt.Errorf("credentials: %s %q: the bytes after PEM block %d are not a complete PEM block (truncated file?)", kind, name, n)
		}
	}
	cert, err := tls.X509KeyPair(data[0], data[1])
	if err != nil {
		if bytes.Contains(data[1], []byte("ENCRYPTED")) {
			err = fmt.Errorf("%w (the key is encrypted; the key file must hold an unencrypted PEM key)", err)
		}
		return nil, fmt.Errorf("credentials: certificate file %q with key file %q: %w", certFile, keyFile, err)
	}
	// An expired certificate fails every handshake that verifies it; the
	// last good one may still be valid. (A certificate not valid yet is
	// taken: issuers' clocks run a little ahead, and it soon becomes so.)
	if leaf := cert.Leaf; leaf != nil && time.Now().After(leaf.NotAfter) {
		return nil, fmt.Errorf("credentials: certificate file %q with key file %q: the certificate has expired (not after %s)",
			certFile, keyFile, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &cert, nil
}

// cutOffPEM reports whether data ends in a PEM block that was cut off (a
// BEGIN line after the last complete block), which tls.X509KeyPair would
// silently ignore, and how many complete blocks precede it.
func cutOffPEM(data []byte) (blocks int, cut bool) {
	rest := data
	for {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		blocks++
	}
	return blocks, bytes.Contains(rest, []byte("-----BEGIN"))
}
