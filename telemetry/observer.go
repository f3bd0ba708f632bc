package telemetry

import (
	"time"

	"google.golang.org/grpc/connectivity"
)

// Observer is everything grpcreuse reports. A clientconn.Factory hands its
// Observer to every piece it builds; pieces used on their own take the
// narrower interface they need.
type Observer interface {
	PoolObserver
	HandshakeObserver
	SubchannelObserver
	BreakerObserver
	LimiterObserver
	SessionCacheObserver
}

// PoolObserver receives the events of a connection pool (clientconn.Factory).
// Targets are canonical (for example "dns:///backend:443").
type PoolObserver interface {
	// PoolGet reports one Factory.Get; hit says whether an existing
	// connection was shared instead of a new one being created.
	PoolGet(target string, hit bool)
	// PoolEvicted reports that a connection without handles left the pool;
	// reason is one of the Evict* constants.
	PoolEvicted(target string, reason string)
	// ConnOpened reports that a new *grpc.ClientConn was created for target.
	ConnOpened(target string)
	// ConnClosed reports that a *grpc.ClientConn was closed after living for
	// lifetime; reason is one of the Close* constants.
	ConnClosed(target string, reason string, lifetime time.Duration)
}

// Reasons passed to PoolObserver.PoolEvicted.
const (
	// EvictIdle: the connection had no handles for longer than the idle timeout.
	EvictIdle = "idle"
	// EvictCapacity: more connections without handles were kept than allowed;
	// the least recently used one went.
	EvictCapacity = "capacity"
	// EvictWarmUpFailed: a WithWarmUp Get failed and no other handle used
	// the connection, so it was not kept (it may never connect).
	EvictWarmUpFailed = "warm_up_failed"
)

// Reasons passed to PoolObserver.ConnClosed.
const (
	// CloseEvicted: the connection was evicted from the pool.
	CloseEvicted = "evicted"
	// CloseMaxAge: the connection reached its maximum age and was replaced.
	CloseMaxAge = "max_age"
	// CloseShutdown: the Factory was closed.
	CloseShutdown = "shutdown"
	// CloseExternal: the connection was closed behind the Factory's back
	// (Conn.ClientConn().Close()) and replaced.
	CloseExternal = "closed_externally"
)

// HandshakeObserver receives one event per connection attempt phase: the
// TCP connect (reported by clientconn's dialer) and the TLS handshake
// (reported by grpcreuse/credentials).
type HandshakeObserver interface {
	// Dialed reports one TCP connect attempt to addr for the channel target.
	Dialed(target, addr string, d time.Duration, err error)
	// Handshake reports one TLS client handshake.
	Handshake(HandshakeInfo)
}

// HandshakeInfo describes one TLS client handshake.
type HandshakeInfo struct {
	// Target is the channel target the connection is for, when known
	// (clientconn's connections); "" otherwise.
	Target string
	// Authority is the server name the handshake verified; Addr the remote address.
	Authority, Addr string
	// Tenant is the tenant the connection was made for, "" for none.
	Tenant string
	// Duration is how long the TLS handshake took.
	Duration time.Duration
	// Resumed reports whether the handshake resumed a session.
	Resumed bool
	// Version is the negotiated TLS version (tls.VersionTLS13, ...).
	Version uint16
	// Err is the error that failed the handshake, nil on success.
	Err error
}

// SubchannelObserver receives the events of the grpcreuse load balancer.
type SubchannelObserver interface {
	// SubchannelState reports a subchannel of endpoint moving to state.
	SubchannelState(target, endpoint string, state connectivity.State)
	// EndpointEjected reports an endpoint taken out of picking for d.
	EndpointEjected(target, endpoint string, d time.Duration)
	// EndpointReturned reports an ejected endpoint taken back into picking.
	EndpointReturned(target, endpoint string)
	// EndpointLoad reports an endpoint's calls in flight and its latency
	// estimate (the balancer's peak EWMA), sampled by the balancer's
	// control loop, not per call.
	EndpointLoad(target, endpoint string, inFlight int, latency time.Duration)
	// EndpointState reports an endpoint's state aggregated over its
	// connections (READY if any is READY, else CONNECTING if any is
	// connecting, else TRANSIENT_FAILURE; IDLE with none) and how many
	// connections it has open, whenever either changes. Unlike
	// SubchannelState, the latest report is the endpoint's state.
	EndpointState(target, endpoint string, state connectivity.State, connections int)
	// EndpointCalls reports the calls an endpoint finished since its
	// previous report, sampled by the balancer's control loop, not per
	// call.
	EndpointCalls(target, endpoint string, calls EndpointCalls)
	// EndpointRemoved reports that the resolver no longer lists endpoint;
	// its connections are closing.
	EndpointRemoved(target, endpoint string)
}

// EndpointCalls counts an endpoint's finished calls by outcome, as the
// balancer classifies them.
type EndpointCalls struct {
	// OK counts calls the backend answered, whatever the code, except
	// those below.
	OK uint64
	// Failed counts calls that ended with one of the policy's failure
	// codes (UNAVAILABLE by default); they count toward ejection.
	Failed uint64
	// Shed counts calls the server refused with RESOURCE_EXHAUSTED
	// (back-pressure; never toward ejection).
	Shed uint64
	// Cancelled counts calls the caller cancelled.
	Cancelled uint64
	// TimedOut counts calls that ended with DEADLINE_EXCEEDED.
	TimedOut uint64
}

// BreakerState is the state of a circuit breaker.
type BreakerState int

// Circuit breaker states.
const (
	BreakerClosed BreakerState = iota
	BreakerHalfOpen
	BreakerOpen
)

// String returns "closed", "half_open" or "open".
func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half_open"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// BreakerObserver receives circuit breaker events. Breakers are kept per
// tenant: tenant is the one the breaker belongs to, "" for none.
type BreakerObserver interface {
	// BreakerStateChanged reports the breaker for key moving from one state to another.
	BreakerStateChanged(tenant, key string, from, to BreakerState)
	// BreakerRejected reports a call failed fast by the open breaker for key.
	BreakerRejected(tenant, key string)
}

// LimiterObserver receives concurrency limiter events, client and server
// side. tenant is the client limiter's tenant, "" for none and on servers.
type LimiterObserver interface {
	// LimiterLimitChanged reports a new concurrency limit for key.
	LimiterLimitChanged(tenant, key string, limit int)
	// LimiterRejected reports a call rejected (or shed) by the limiter for key.
	LimiterRejected(tenant, key, reason string)
}

// ShedObserver receives server load-shedding events (interceptors.Shedder,
// which calls it when the observer given to it implements it). Nop
// implements it.
type ShedObserver interface {
	// ServerShed reports one request a server shed (answered without running
	// its handler); method is the full method ("/pkg.Service/Method") and
	// reason one of the interceptors.Reason* constants ("limit",
	// "deadline", "sheddable", "expired", "stream_limit").
	ServerShed(method, reason string)
}

// SessionCacheObserver receives TLS client session cache events.
type SessionCacheObserver interface {
	// SessionCacheLookup reports one lookup for tenant; hit says whether a
	// session was found.
	SessionCacheLookup(tenant string, hit bool)
	// SessionCacheEvicted reports a session of tenant evicted for capacity or age.
	SessionCacheEvicted(tenant string)
	// SessionCacheResumption reports, for caches used through
	// grpcreuse/credentials' NewTLS, one handshake of tenant that was
	// offered a cached session; resumed says whether the server resumed it
	// (false: crypto/tls dropped it, the server refused it, or the
	// handshake failed). A lookup hit is an offer, not a resumption.
	SessionCacheResumption(tenant string, resumed bool)
}

// ServerHandshakeObserver receives the TLS server handshakes of
// grpcreuse/credentials' NewTLS used as a server's grpc.Creds.
type ServerHandshakeObserver interface {
	// ServerHandshake reports one TLS server handshake, successful or not.
	ServerHandshake(ServerHandshakeInfo)
}

// ServerHandshakeInfo describes one TLS server handshake.
type ServerHandshakeInfo struct {
	// Server is the local address the connection was accepted on
	// ("10.0.0.7:8443"): the server, for a process serving several.
	Server string
	// Addr is the client's address.
	Addr string
	// ServerName is the server name the client asked for (SNI), "" if none
	// or if the handshake failed before it was read.
	ServerName string
	// Duration is how long the handshake took, from the server starting it
	// (right after accept, so it includes the wait for the client's first
	// message) to its completion or failure.
	Duration time.Duration
	// Resumed reports whether the handshake resumed a session.
	Resumed bool
	// Version is the negotiated TLS version (tls.VersionTLS13, ...), 0 on
	// failure.
	Version uint16
	// ClientCertificate reports whether the client presented a certificate
	// (on a resumed handshake: in the session it resumed).
	ClientCertificate bool
	// Err is the error that failed the handshake, nil on success.
	Err error
}

// Nop is an Observer that does nothing. Embed it to implement only part of
// Observer.
type Nop struct{}

var (
	_ Observer                = Nop{}
	_ ServerHandshakeObserver = Nop{}
	_ ShedObserver            = Nop{}
)

// PoolGet does nothing.
func (Nop) PoolGet(string, bool) {}

// PoolEvicted does nothing.
func (Nop) PoolEvicted(string, string) {}

// ConnOpened does nothing.
func (Nop) ConnOpened(string) {}

// ConnClosed does nothing.
func (Nop) ConnClosed(string, string, time.Duration) {}

// Dialed does nothing.
func (Nop) Dialed(string, string, time.Duration, error) {}

// Handshake does nothing.
func (Nop) Handshake(HandshakeInfo) {}

// SubchannelState does nothing.
func (Nop) SubchannelState(string, string, connectivity.State) {}

// EndpointEjected does nothing.
func (Nop) EndpointEjected(string, string, time.Duration) {}

// EndpointReturned does nothing.
func (Nop) EndpointReturned(string, string) {}

// EndpointLoad does nothing.
func (Nop) EndpointLoad(string, string, int, time.Duration) {}

// EndpointState does nothing.
func (Nop) EndpointState(string, string, connectivity.State, int) {}

// EndpointCalls does nothing.
func (Nop) EndpointCalls(string, string, EndpointCalls) {}

// EndpointRemoved does nothing.
func (Nop) EndpointRemoved(string, string) {}

// BreakerStateChanged does nothing.
func (Nop) BreakerStateChanged(string, string, BreakerState, BreakerState) {}

// BreakerRejected does nothing.
func (Nop) BreakerRejected(string, string) {}

// LimiterLimitChanged does nothing.
func (Nop) LimiterLimitChanged(string, string, int) {}

// LimiterRejected does nothing.
func (Nop) LimiterRejected(string, string, string) {}

// ServerShed does nothing.
func (Nop) ServerShed(string, string) {}

// SessionCacheLookup does nothing.
func (Nop) SessionCacheLookup(string, bool) {}

// SessionCacheEvicted does nothing.
func (Nop) SessionCacheEvicted(string) {}

// SessionCacheResumption does nothing.
func (Nop) SessionCacheResumption(string, bool) {}

// ServerHandshake does nothing.
func (Nop) ServerHandshake(ServerHandshakeInfo) {}

// HandshakeReporter is implemented by a connection's AuthInfo when it
// knows how its handshake went; grpcreuse/credentials.TLSInfo does.
type HandshakeReporter interface {
	// HandshakeReport returns whether the TLS handshake resumed a session
	// and how long it took.
	HandshakeReport() (resumed bool, d time.Duration)
}
