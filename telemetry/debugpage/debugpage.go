package debugpage

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Duration is a time.Duration that JSON spells as Go does ("1.5s",
// "250ms"), so the page's JSON needs no unit guessing.
type Duration time.Duration

// MarshalJSON returns the duration as a quoted string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads the string MarshalJSON writes.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("debugpage: duration %s: must be a string such as \"1.5s\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("debugpage: duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// String returns the duration as Go formats it.
func (d Duration) String() string { return time.Duration(d).String() }

// Snapshot is the live state the page shows. Unset times are left out of
// the JSON, and every list is a list ([] when empty, never null).
type Snapshot struct {
	Generated     time.Time      `json:"generated"`
	Connections   []Conn         `json:"connections"`
	Endpoints     []Endpoint     `json:"endpoints"`
	Breakers      []Breaker      `json:"breakers"`
	Limiters      []Limiter      `json:"limiters"`
	SessionCaches []SessionCache `json:"sessionCaches"`
	Handshakes    Handshakes     `json:"handshakes"`
	// Server is the server half (load shedders, server handshakes), when
	// the process serves too: fill it from interceptors.Shedder.Snapshot
	// and credentials.ServerHandshakeRecorder.Snapshot, as examples/demo
	// does. Nil leaves it off the page.
	Server *Server `json:"server,omitempty"`
}

// Conn is one shared connection of a pool.
type Conn struct {
	Target   string   `json:"target"`
	Tenant   string   `json:"tenant"`
	Handles  int      `json:"handles"`
	State    string   `json:"state"`
	Age      Duration `json:"age"`
	InFlight int64    `json:"inFlight"`
	// ServiceConfig is the document the connection was made with (gRPC's
	// part and the grpcreuse policy), compacted; "" if none. A resolver
	// (xDS, DNS TXT) may push a gRPC part that takes precedence.
	ServiceConfig string `json:"serviceConfig"`
}

// Endpoint is one backend endpoint as the balancer reported it.
type Endpoint struct {
	Target   string `json:"target"`
	Endpoint string `json:"endpoint"`
	// State is aggregated over the endpoint's connections: READY if any is.
	State string `json:"state"`
	// Connections is how many connections to the endpoint are open.
	Connections int `json:"connections"`
	InFlight    int `json:"inFlight"`
	// Latency is the balancer's peak-EWMA latency estimate.
	Latency Duration `json:"latency"`
	Ejected bool     `json:"ejected"`
	// CallsOK, CallsFailed and CallsShed count finished calls since the
	// endpoint appeared; shed calls (ResourceExhausted from the server)
	// are not failures.
	CallsOK     uint64 `json:"callsOk"`
	CallsFailed uint64 `json:"callsFailed"`
	CallsShed   uint64 `json:"callsShed"`
}

// Breaker is one circuit breaker.
type Breaker struct {
	Key    string `json:"key"`
	Tenant string `json:"tenant"`
	State  string `json:"state"`
	// Since is the last state change; left out if it never changed.
	Since time.Time `json:"since,omitzero"`
	// NextProbe is when an open breaker lets a probe through; left out
	// otherwise.
	NextProbe time.Time `json:"nextProbe,omitzero"`
	// Requests, Failures and ConsecutiveFailures are the breaker's counts
	// in its current window (reset on each state change).
	Requests            uint32 `json:"requests"`
	Failures            uint32 `json:"failures"`
	ConsecutiveFailures uint32 `json:"consecutiveFailures"`
	Rejections          uint64 `json:"rejections"` // calls failed fast, since start
}

// Limiter is one client concurrency limiter.
type Limiter struct {
	Key      string `json:"key"`
	Tenant   string `json:"tenant"`
	Limit    int    `json:"limit"`
	InFlight int    `json:"inFlight"`
	Queued   int    `json:"queued"`
	Rejected uint64 `json:"rejected"` // since start
}

// SessionCache is one TLS client session cache. A lookup that finds a
// session is an offer; the server decides whether it resumes.
type SessionCache struct {
	Name       string `json:"name"`
	Size       int    `json:"size"`
	Offered    uint64 `json:"offered"`
	Resumed    uint64 `json:"resumed"`
	NotResumed uint64 `json:"notResumed"`
	Misses     uint64 `json:"misses"`
	// ResumedRate is Resumed over the handshakes that were offered a
	// session, 0..1.
	ResumedRate float64 `json:"resumedRate"`
}

// Handshakes summarises recent TLS handshakes of one side.
type Handshakes struct {
	Full    uint64   `json:"full"`
	Resumed uint64   `json:"resumed"`
	Failed  uint64   `json:"failed"`
	P50     Duration `json:"p50"` // of full handshakes where the side knows them apart
	P99     Duration `json:"p99"`
}

// NewHandler serves snapshot() as a plain HTML page that refreshes
// itself every 2 s and needs no JavaScript, or as JSON with ?format=json.
// Every value is escaped by html/template: target names and tenants are
// caller input. snapshot is called once per request.
func NewHandler(snapshot func() Snapshot) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := snapshot()
		s.normalize()
		if r.URL.Query().Get("format") == "json" {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(s)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := page.Execute(w, s); err != nil {
			http.Error(w, "debugpage: rendering: "+err.Error(), http.StatusInternalServerError)
		}
	})
}

// normalize turns nil lists into empty ones, so JSON says [] not null.
func (s *Snapshot) normalize() {
	empty(&s.Connections)
	empty(&s.Endpoints)
	empty(&s.Breakers)
	empty(&s.Limiters)
	empty(&s.SessionCaches)
	if s.Server != nil {
		s.Server.normalize()
	}
}

func empty[T any](s *[]T) {
	if *s == nil {
		*s = []T{}
	}
}
