package credentials

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

// CertificateReloader serves a certificate and key read from PEM files and
// re-read every poll interval, for servers (GetCertificate) and for mTLS
// clients (GetClientCertificate). When the files are unreadable or do not
// form a valid pair, the last good certificate stays in use and the error
// is kept for Err and reported to WithErrorHandler.
//
// Its methods are safe for concurrent use. It starts one goroutine,
// stopped by Close.
type CertificateReloader struct {
	certFile, keyFile string
	onError           func(error)

	cert atomic.Pointer[tls.Certificate]

	mu  sync.Mutex // serialises reloads; guards err
	err error

	loop      *loop
	closeOnce sync.Once
}

// NewCertificateReloader loads certFile and keyFile (PEM, as for
// tls.LoadX509KeyPair) and starts re-reading them. It fails if either name
// is empty, the poll interval is not positive, or the files do not load now.
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
	if o.pollInterval <= 0 {
		return nil, fmt.Errorf("credentials: WithPollInterval is %v; must be positive", o.pollInterval)
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r := &CertificateReloader{certFile: certFile, keyFile: keyFile, onError: o.onError}
	r.cert.Store(cert)
	r.loop = startLoop(o.newTicker(o.pollInterval), func() { _ = r.Reload() })
	return r, nil
}

// GetCertificate returns the current certificate; use it as
// tls.Config.GetCertificate on servers.
func (r *CertificateReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// GetClientCertificate returns the current certificate; use it as
// tls.Config.GetClientCertificate on mTLS clients.
func (r *CertificateReloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// Reload re-reads the files now. On failure it keeps the last good
// certificate and returns (and reports, if the error is new) why.
func (r *CertificateReloader) Reload() error {
	cert, err := loadKeyPair(r.certFile, r.keyFile)
	r.mu.Lock()
	prev := r.err
	r.err = err
	if err == nil {
		r.cert.Store(cert)
	}
	r.mu.Unlock()
	if err != nil && (prev == nil || prev.Error() != err.Error()) {
		r.onError(err)
	}
	return err
}

// Err returns why the files were last not taken, or nil if the last
// reading succeeded.
func (r *CertificateReloader) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Close stops the background goroutine and waits for it to exit; the last
// good certificate stays available. Close is idempotent and returns nil.
func (r *CertificateReloader) Close() error {
	r.closeOnce.Do(r.loop.stop)
	return nil
}

func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("credentials: certificate file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("credentials: key file: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("credentials: certificate file %q with key file %q: %w", certFile, keyFile, err)
	}
	return &cert, nil
}
