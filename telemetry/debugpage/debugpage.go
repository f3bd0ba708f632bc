package debugpage

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"time"
)

// Snapshot is the live state the debug page shows. Durations are
// time.Duration (nanoseconds in JSON).
type Snapshot struct {
	Generated     time.Time      `json:"generated"`
	Connections   []Conn         `json:"connections"`
	Endpoints     []Endpoint     `json:"endpoints"`
	Breakers      []Breaker      `json:"breakers"`
	Limiters      []Limiter      `json:"limiters"`
	SessionCaches []SessionCache `json:"sessionCaches"`
	Handshakes    Handshakes     `json:"handshakes"`
}

// Conn is one shared connection of a pool.
type Conn struct {
	Target   string        `json:"target"`
	Tenant   string        `json:"tenant"`
	Handles  int           `json:"handles"`
	State    string        `json:"state"`
	Age      time.Duration `json:"age"`
	InFlight int64         `json:"inFlight"`
}

// Endpoint is one backend endpoint as the balancer reported it.
type Endpoint struct {
	Target   string `json:"target"`
	Endpoint string `json:"endpoint"`
	State    string `json:"state"` // of its most recent subchannel change
	InFlight int    `json:"inFlight"`
	// Latency is the balancer's peak-EWMA latency estimate.
	Latency time.Duration `json:"latency"`
	Ejected bool          `json:"ejected"`
}

// Breaker is one circuit breaker.
type Breaker struct {
	Key   string    `json:"key"`
	State string    `json:"state"`
	Since time.Time `json:"since"` // of the last state change; zero if never changed
	// NextProbe is when an open breaker lets a probe through; zero otherwise.
	NextProbe time.Time `json:"nextProbe"`
	// Requests, Failures and ConsecutiveFailures are the breaker's counts
	// in its current window (reset on each state change).
	Requests            uint32 `json:"requests"`
	Failures            uint32 `json:"failures"`
	ConsecutiveFailures uint32 `json:"consecutiveFailures"`
	Rejections          uint64 `json:"rejections"` // calls failed fast, since start
}

// Limiter is one concurrency limiter (client or server side).
type Limiter struct {
	Key      string `json:"key"`
	Limit    int    `json:"limit"`
	InFlight int    `json:"inFlight"`
	Queued   int    `json:"queued"`
	Rejected uint64 `json:"rejected"` // since start
}

// SessionCache is one TLS session cache.
type SessionCache struct {
	Name    string  `json:"name"`
	Size    int     `json:"size"`
	Hits    uint64  `json:"hits"`
	Misses  uint64  `json:"misses"`
	HitRate float64 `json:"hitRate"` // 0..1
}

// Handshakes summarises recent client TLS handshakes.
type Handshakes struct {
	Full    uint64        `json:"full"`
	Resumed uint64        `json:"resumed"`
	Failed  uint64        `json:"failed"`
	P50     time.Duration `json:"p50"`
	P99     time.Duration `json:"p99"`
}

// NewHandler serves snapshot() as a plain HTML page that refreshes
// itself every 2 s and needs no JavaScript, or as JSON with ?format=json.
// Every value is escaped by html/template: target names and tenants are
// caller input.
func NewHandler(snapshot func() Snapshot) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := snapshot()
		if r.URL.Query().Get("format") == "json" {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			_ = enc.Encode(s)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := debugPage.Execute(w, s); err != nil {
			http.Error(w, "telemetry: rendering debug page: "+err.Error(), http.StatusInternalServerError)
		}
	})
}

var debugPage = template.Must(template.New("debug").Funcs(template.FuncMap{
	"ms":  func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() },
	"age": func(d time.Duration) string { return d.Round(time.Second).String() },
	"pct": func(f float64) string { return strconv.FormatFloat(f*100, 'f', 1, 64) + "%" },
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.Format(time.RFC3339)
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>grpcreuse debug</title>
<style>body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
.open{color:#b00;font-weight:bold}.ok{color:#070}</style></head><body>
<h1>grpcreuse</h1><p>Generated {{ts .Generated}}; refreshes every 2 s. <a href="?format=json">JSON</a></p>
<h2 id="connections">Shared connections ({{len .Connections}})</h2>
<table><tr><th>target</th><th>tenant</th><th>handles</th><th>state</th><th>age</th><th>in flight</th></tr>
{{range .Connections}}<tr class="connection"><td>{{.Target}}</td><td>{{.Tenant}}</td><td>{{.Handles}}</td><td>{{.State}}</td><td>{{age .Age}}</td><td>{{.InFlight}}</td></tr>
{{else}}<tr><td colspan="6">none</td></tr>{{end}}</table>
<h2 id="endpoints">Endpoints ({{len .Endpoints}})</h2>
<table><tr><th>target</th><th>endpoint</th><th>last subchannel state</th><th>in flight</th><th>EWMA latency</th><th>ejected</th></tr>
{{range .Endpoints}}<tr class="endpoint"><td>{{.Target}}</td><td>{{.Endpoint}}</td><td>{{.State}}</td><td>{{.InFlight}}</td><td>{{ms .Latency}}</td><td>{{if .Ejected}}<span class="open">ejected</span>{{else}}no{{end}}</td></tr>
{{else}}<tr><td colspan="6">none reported</td></tr>{{end}}</table>
<h2 id="breakers">Circuit breakers ({{len .Breakers}})</h2>
<table><tr><th>key</th><th>state</th><th>since</th><th>next probe</th><th>requests</th><th>failures</th><th>consecutive failures</th><th>rejections</th></tr>
{{range .Breakers}}<tr class="breaker"><td>{{.Key}}</td><td class="{{if eq .State "open"}}open{{else}}ok{{end}}">{{.State}}</td><td>{{ts .Since}}</td><td>{{ts .NextProbe}}</td><td>{{.Requests}}</td><td>{{.Failures}}</td><td>{{.ConsecutiveFailures}}</td><td>{{.Rejections}}</td></tr>
{{else}}<tr><td colspan="8">none</td></tr>{{end}}</table>
<h2 id="limiters">Limiters ({{len .Limiters}})</h2>
<table><tr><th>key</th><th>limit</th><th>in flight</th><th>queued</th><th>rejected</th></tr>
{{range .Limiters}}<tr class="limiter"><td>{{.Key}}</td><td>{{.Limit}}</td><td>{{.InFlight}}</td><td>{{.Queued}}</td><td>{{.Rejected}}</td></tr>
{{else}}<tr><td colspan="5">none</td></tr>{{end}}</table>
<h2 id="sessions">TLS session caches</h2>
<table><tr><th>cache</th><th>size</th><th>hits</th><th>misses</th><th>hit rate</th></tr>
{{range .SessionCaches}}<tr class="session-cache"><td>{{.Name}}</td><td>{{.Size}}</td><td>{{.Hits}}</td><td>{{.Misses}}</td><td>{{pct .HitRate}}</td></tr>
{{else}}<tr><td colspan="5">none</td></tr>{{end}}</table>
<h2 id="handshakes">TLS handshakes</h2>
<table><tr><th>full</th><th>resumed</th><th>failed</th><th>p50</th><th>p99</th></tr>
<tr class="handshakes"><td id="hs-full">{{.Handshakes.Full}}</td><td id="hs-resumed">{{.Handshakes.Resumed}}</td><td id="hs-failed">{{.Handshakes.Failed}}</td><td>{{ms .Handshakes.P50}}</td><td>{{ms .Handshakes.P99}}</td></tr></table>
</body></html>
`))
