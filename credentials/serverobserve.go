package credentials

import (
	"crypto/tls"
	"slices"
	"sync"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

var (
	_ telemetry.ServerHandshakeObserver = (*ServerHandshakeRecorder)(nil)
	_ telemetry.ServerHandshakeObserver = serverObserverList(nil)
)

const (
	// serverHandshakeWindow is how many recent full handshakes per server
	// the percentiles of a ServerHandshakeRecorder use.
	serverHandshakeWindow = 512
	// maxRecordedServers bounds the servers a ServerHandshakeRecorder keeps
	// apart; handshakes on further local addresses count under OtherServers.
	maxRecordedServers = 64
)

// OtherServers is the Server of the ServerHandshakeStats that counts
// handshakes on local addresses beyond the first 64 a
// ServerHandshakeRecorder saw.
const OtherServers = "other"

// ServerHandshakeRecorder keeps, per server (the local address connections
// were accepted on), how many TLS handshakes were full, resumed and failed
// and the durations of the recent full handshakes: the numbers that say
// whether clients resume and whether replicas sharing ticket keys resume
// each other's sessions. Give it to NewTLS with WithServerHandshakeObserver
// and read it with Snapshot, for example from a debug page.
//
// Its methods are safe for concurrent use. It records once per handshake,
// never per call, and starts no goroutine.
type ServerHandshakeRecorder struct {
	mu      sync.Mutex // guards servers
	servers map[string]*serverRecord
}

type serverRecord struct {
	full, resumed, failed uint64
	tls12, tls13          uint64
	durations             [serverHandshakeWindow]time.Duration // ring of full-handshake durations
	n                     int                                  // full handshakes written to durations
}

// ServerHandshakeStats is what a ServerHandshakeRecorder knows of one
// server.
type ServerHandshakeStats struct {
	// Server is the local address handshakes were made on
	// ("127.0.0.1:8443"), or OtherServers.
	Server string
	// Full, Resumed and Failed count the handshakes that completed in full,
	// resumed a session, and failed.
	Full, Resumed, Failed uint64
	// ResumedShare is Resumed / (Full + Resumed), 0 before any succeeded.
	ResumedShare float64
	// TLS12 and TLS13 count the successful handshakes by version.
	TLS12, TLS13 uint64
	// FullP50 and FullP99 are the median and 99th percentile duration of
	// the last FullSamples (at most 512) full handshakes; 0 without any.
	FullP50, FullP99 time.Duration
	// FullSamples is how many full handshakes FullP50 and FullP99 cover.
	FullSamples int
}

// NewServerHandshakeRecorder returns an empty recorder.
func NewServerHandshakeRecorder() *ServerHandshakeRecorder {
	return &ServerHandshakeRecorder{servers: make(map[string]*serverRecord)}
}

// ServerHandshake implements telemetry.ServerHandshakeObserver.
func (r *ServerHandshakeRecorder) ServerHandshake(info telemetry.ServerHandshakeInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.servers[info.Server]
	if s == nil {
		name := info.Server
		if len(r.servers) >= maxRecordedServers {
			name = OtherServers
		}
		if s = r.servers[name]; s == nil {
			s = new(serverRecord)
			r.servers[name] = s
		}
	}
	switch {
	case info.Err != nil:
		s.failed++
		return
	case info.Resumed:
		s.resumed++
	default:
		s.full++
		s.durations[s.n%serverHandshakeWindow] = info.Duration
		s.n++
	}
	switch info.Version {
	case tls.VersionTLS12:
		s.tls12++
	case tls.VersionTLS13:
		s.tls13++
	}
}

// Snapshot returns the stats of every server seen, ordered by Server.
func (r *ServerHandshakeRecorder) Snapshot() []ServerHandshakeStats {
	r.mu.Lock()
	out := make([]ServerHandshakeStats, 0, len(r.servers))
	var window []time.Duration
	for name, s := range r.servers {
		st := ServerHandshakeStats{
			Server: name, Full: s.full, Resumed: s.resumed, Failed: s.failed,
			TLS12: s.tls12, TLS13: s.tls13,
		}
		if ok := s.full + s.resumed; ok > 0 {
			st.ResumedShare = float64(s.resumed) / float64(ok)
		}
		n := min(s.n, serverHandshakeWindow)
		window = append(window[:0], s.durations[:n]...)
		st.FullP50, st.FullP99 = quantile(window, 0.50), quantile(window, 0.99)
		st.FullSamples = n
		out = append(out, st)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b ServerHandshakeStats) int {
		switch {
		case a.Server < b.Server:
			return -1
		case a.Server > b.Server:
			return 1
		}
		return 0
	})
	return out
}

// quantile sorts d and returns its q-quantile (nearest rank), 0 if empty.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(q*float64(len(d))+0.999999) - 1
	return d[max(0, min(i, len(d)-1))]
}

// serverObserverList reports to several observers in order.
type serverObserverList []telemetry.ServerHandshakeObserver

// ServerHandshake implements telemetry.ServerHandshakeObserver.
func (l serverObserverList) ServerHandshake(info telemetry.ServerHandshakeInfo) {
	for _, o := range l {
		o.ServerHandshake(info)
	}
}

// serverObservers returns nil for none, the observer for one, a list for
// more.
func serverObservers(obs []telemetry.ServerHandshakeObserver) telemetry.ServerHandshakeObserver {
	switch len(obs) {
	case 0:
		return nil
	case 1:
		return obs[0]
	}
	return serverObserverList(slices.Clone(obs))
}
