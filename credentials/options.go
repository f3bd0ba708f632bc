package credentials

import (
	"fmt"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Defaults used when an option is not given.
const (
	// DefaultSessionCacheCapacity is the number of TLS sessions a
	// SessionCache keeps (all tenants together) unless WithCapacity is given.
	DefaultSessionCacheCapacity = 1024
	// DefaultSessionTTL is how long a SessionCache offers a stored session
	// for resumption unless WithTTL is given.
	DefaultSessionTTL = 24 * time.Hour
	// DefaultRotationInterval is how often a TicketKeyRotator with random
	// keys makes a new encryption key unless WithRotationInterval is given.
	DefaultRotationInterval = 24 * time.Hour
	// DefaultPreviousKeys is how many earlier ticket keys a TicketKeyRotator
	// keeps for decryption unless WithPreviousKeys is given; with the default
	// interval, tickets stay valid for 7 days, as in crypto/tls.
	DefaultPreviousKeys = 6
	// DefaultPollInterval is how often key and certificate files are
	// re-read unless WithPollInterval is given.
	DefaultPollInterval = 10 * time.Second
	// MinInterval is the shortest rotation or poll interval accepted: a
	// shorter one would only spin a goroutine re-reading files or making
	// keys (WithRotationInterval(time.Nanosecond) kept a core busy).
	MinInterval = time.Millisecond
)

// checkInterval refuses an interval under MinInterval, naming its option.
func checkInterval(option string, d time.Duration) error {
	if d < MinInterval {
		return fmt.Errorf("credentials: %s is %v; must be at least %v", option, d, MinInterval)
	}
	return nil
}

// ---------------------------------------------------------------------------
// SessionCache options

// SessionCacheOption configures NewSessionCache.
type SessionCacheOption interface {
	applySessionCache(*sessionCacheOptions)
}

type sessionCacheOptions struct {
	capacity int
	ttl      time.Duration
	observer telemetry.SessionCacheObserver
	now      func() time.Time // test hook, see export_test.go
}

func defaultSessionCacheOptions() sessionCacheOptions {
	return sessionCacheOptions{
		capacity: DefaultSessionCacheCapacity,
		ttl:      DefaultSessionTTL,
		observer: telemetry.Nop{},
		now:      time.Now,
	}
}

type sessionCacheOptionFunc func(*sessionCacheOptions)

func (f sessionCacheOptionFunc) applySessionCache(o *sessionCacheOptions) { f(o) }

// WithCapacity bounds the number of sessions the cache holds, across all
// tenants and backends; when full, the least recently used session goes.
// It must be at least 1. Default DefaultSessionCacheCapacity.
func WithCapacity(n int) SessionCacheOption {
	return sessionCacheOptionFunc(func(o *sessionCacheOptions) { o.capacity = n })
}

// WithTTL sets how long a stored session may be offered for resumption,
// counted from when crypto/tls stored it. It must be positive. Expired
// sessions are dropped when next looked up or when capacity pushes them out.
// Default DefaultSessionTTL.
func WithTTL(d time.Duration) SessionCacheOption {
	return sessionCacheOptionFunc(func(o *sessionCacheOptions) { o.ttl = d })
}

// WithObserver reports every lookup (hit or miss) and every eviction (for
// capacity or age) to obs. A nil obs means telemetry.Nop. Default none.
func WithObserver(obs telemetry.SessionCacheObserver) SessionCacheOption {
	return sessionCacheOptionFunc(func(o *sessionCacheOptions) {
		if obs == nil {
			obs = telemetry.Nop{}
		}
		o.observer = obs
	})
}

// ---------------------------------------------------------------------------
// NewTLS options

// TLSOption configures NewTLS.
type TLSOption interface {
	applyTLS(*tlsOptions)
}

type tlsOptions struct {
	cache                  *SessionCache
	tenant                 string
	anyAddr                bool
	observer               telemetry.HandshakeObserver
	serverObs              []telemetry.ServerHandshakeObserver
	allowVerifyPeerCertRes bool
	trust                  *TrustBundle // see WithTrustBundle in trustbundle.go
}

func defaultTLSOptions() tlsOptions {
	return tlsOptions{observer: telemetry.Nop{}}
}

type tlsOptionFunc func(*tlsOptions)

func (f tlsOptionFunc) applyTLS(o *tlsOptions) { f(o) }

// WithSessionCache stores client sessions in c, in the view of the tenant
// chosen by WithTenant, keyed by remote address and server name. Share one
// cache between many credentials to bound memory for a whole process.
// Without it, or with a nil c, and without tls.Config.ClientSessionCache,
// NewTLS makes a private cache with default capacity and TTL.
func WithSessionCache(c *SessionCache) TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) { o.cache = c })
}

// WithTenant sets the tenant whose sessions these credentials store and
// offer. Sessions of one tenant are never offered on behalf of another.
// Default "" (the cache's own, tenant-less view).
func WithTenant(name string) TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) { o.tenant = name })
}

// WithHandshakeObserver reports every client TLS handshake (duration,
// resumed or full, version, error) to obs. A nil obs means telemetry.Nop.
// Server handshakes are reported by WithServerHandshakeObserver. obs runs
// on the goroutine that connects, after the handshake and before the
// connection is used, so it must return quickly (while it blocks, that
// connection attempt waits). Default none.
func WithHandshakeObserver(obs telemetry.HandshakeObserver) TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) {
		if obs == nil {
			obs = telemetry.Nop{}
		}
		o.observer = obs
	})
}

// WithServerHandshakeObserver reports every TLS server handshake of these
// credentials used as grpc.Creds (server address, client address, SNI,
// duration, resumed or full, version, client certificate, error) to obs,
// once per handshake and never per call. It may be given more than once;
// every observer hears every handshake, in order. A nil obs is ignored. A
// ServerHandshakeRecorder is one such observer.
//
// obs runs on the connection's handshake goroutine, after the handshake
// and before grpc serves the connection, so it must return quickly: while
// it blocks, that connection serves nothing and grpc.Server.Stop and
// GracefulStop wait for it (grpc counts the handshake goroutine as
// serving); a panic in it ends the program, as in any grpc callback.
// Default none.
func WithServerHandshakeObserver(obs telemetry.ServerHandshakeObserver) TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) {
		if obs != nil {
			o.serverObs = append(o.serverObs, obs)
		}
	})
}

// WithResumptionAcrossAddresses lets a client resume, at a backend address
// it has no session for, the session it stored last for another address
// of the same server name, tenant and client identity: replicas behind DNS
// that share ticket keys (WithTicketKeyFile) then resume each other's
// sessions instead of making a full handshake at every new address.
// Sessions still never cross tenants or client identities, and an address
// that has its own session uses it.
//
// The trade-off: a replica that does not share the keys receives a
// ticket it cannot decrypt and makes a full handshake (a few hundred
// bytes more than without a ticket, no failure); and every replica sees
// the same ticket, which links the client's connections across them
// (they share keys, so they could decrypt the ticket anyway). It needs
// this package's SessionCache (WithSessionCache, a SessionCache or one of
// its views as tls.Config.ClientSessionCache, or none: the private one),
// not another tls.ClientSessionCache.
// Default off: sessions are offered only to the address that issued them.
func WithResumptionAcrossAddresses() TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) { o.anyAddr = true })
}

// WithVerifyPeerCertificateSkippedOnResumption accepts a tls.Config whose
// VerifyPeerCertificate callback would be skipped on resumed handshakes.
//
// crypto/tls does not call VerifyPeerCertificate when a session is resumed,
// so any check it makes is silently bypassed by every resumed connection.
// NewTLS therefore refuses such a configuration unless session tickets are
// disabled. Prefer moving the check to tls.Config.VerifyConnection, which
// runs on every handshake; use this option only when the callback merely
// observes or its check is also enforced elsewhere.
func WithVerifyPeerCertificateSkippedOnResumption() TLSOption {
	return tlsOptionFunc(func(o *tlsOptions) { o.allowVerifyPeerCertRes = true })
}

// ---------------------------------------------------------------------------
// TicketKeyRotator and CertificateReloader options

// TicketKeyOption configures NewTicketKeyRotator.
type TicketKeyOption interface {
	applyTicketKey(*ticketKeyOptions)
}

// CertificateReloaderOption configures NewCertificateReloader.
type CertificateReloaderOption interface {
	applyCertReload(*reloadOptions)
}

// ReloadOption configures NewTicketKeyRotator, NewCertificateReloader and
// NewTrustBundle.
type ReloadOption interface {
	TicketKeyOption
	CertificateReloaderOption
	TrustBundleOption
}

// reloadOptions are shared by everything that re-reads files.
type reloadOptions struct {
	pollInterval time.Duration
	onError      func(error)
	readTimeout  time.Duration
	newTicker    func(time.Duration) ticker // test hook, see export_test.go
	fileHooks    fileHooks                  // test hooks, see export_files_test.go
}

func defaultReloadOptions() reloadOptions {
	return reloadOptions{
		pollInterval: DefaultPollInterval,
		onError:      func(error) {},
		readTimeout:  DefaultReadTimeout,
		newTicker:    newRealTicker,
	}
}

type ticketKeyOptions struct {
	reloadOptions
	interval     time.Duration
	previousKeys int
	keyFile      string
	keyFileSet   bool
	// randomOnly names an option given that only applies to random keys,
	// so combining it with WithTicketKeyFile can be refused by name.
	randomOnly string
}

func defaultTicketKeyOptions() ticketKeyOptions {
	return ticketKeyOptions{
		reloadOptions: defaultReloadOptions(),
		interval:      DefaultRotationInterval,
		previousKeys:  DefaultPreviousKeys,
	}
}

type ticketKeyOptionFunc func(*ticketKeyOptions)

func (f ticketKeyOptionFunc) applyTicketKey(o *ticketKeyOptions) { f(o) }

type reloadOptionFunc func(*reloadOptions)

func (f reloadOptionFunc) applyTicketKey(o *ticketKeyOptions) { f(&o.reloadOptions) }
func (f reloadOptionFunc) applyCertReload(o *reloadOptions)   { f(o) }

// WithRotationInterval sets how often a rotator with random keys makes a
// new encryption key (from crypto/rand); the previous one moves into the
// decryption window. It must be at least MinInterval and cannot be combined with
// WithTicketKeyFile, whose keys the fleet rotates. Default
// DefaultRotationInterval.
func WithRotationInterval(d time.Duration) TicketKeyOption {
	return ticketKeyOptionFunc(func(o *ticketKeyOptions) { o.interval, o.randomOnly = d, "WithRotationInterval" })
}

// WithPreviousKeys sets how many earlier random keys are still accepted for
// decrypting tickets after a rotation (0: only the current key). Tickets
// stay resumable for about (k+1) rotation intervals. It must be between 0
// and 100 and cannot be combined with WithTicketKeyFile. Default
// DefaultPreviousKeys.
func WithPreviousKeys(k int) TicketKeyOption {
	return ticketKeyOptionFunc(func(o *ticketKeyOptions) { o.previousKeys, o.randomOnly = k, "WithPreviousKeys" })
}

// WithTicketKeyFile takes the ticket keys from a file instead of generating
// them, so that replicas reading the same file (for example a mounted
// Kubernetes secret) resume each other's sessions. The file is re-read
// every poll interval; see the package documentation for its format.
func WithTicketKeyFile(path string) TicketKeyOption {
	return ticketKeyOptionFunc(func(o *ticketKeyOptions) { o.keyFile, o.keyFileSet = path, true })
}

// WithPollInterval sets how often key or certificate files are re-read to
// pick up changes. It must be at least MinInterval. Default
// DefaultPollInterval.
func WithPollInterval(d time.Duration) ReloadOption {
	return reloadOptionFunc(func(o *reloadOptions) { o.pollInterval = d })
}

// WithErrorHandler calls fn with every new error met while re-reading
// files (the last good keys, certificate or bundle stay in use); an error
// equal to the previous one is not reported again. fn runs outside any
// lock on the goroutine that read the files: the background goroutine on a
// tick, the caller of Reload, Rotate or Revoke otherwise, so it may be
// called concurrently and must be safe for that. It must return quickly
// (Close waits for the background goroutine, and with it for fn). Errors
// never contain key material. Default: errors are only kept for Err.
func WithErrorHandler(fn func(error)) ReloadOption {
	return reloadOptionFunc(func(o *reloadOptions) {
		if fn == nil {
			fn = func(error) {}
		}
		o.onError = fn
	})
}
