package debugpage

import (
	"html/template"
	"strconv"
	"time"
	"unicode/utf8"
)

// maxDocHTML is how much of a service config document the HTML page shows
// per connection: documents are per-Get input, and the page refreshes
// every 2 s. The JSON form carries them whole.
const maxDocHTML = 4096

// clipDoc shortens a document to maxDocHTML bytes (on a character
// boundary) and says how long it is.
func clipDoc(doc string) string {
	if len(doc) <= maxDocHTML {
		return doc
	}
	cut := maxDocHTML
	for cut > 0 && !utf8.RuneStart(doc[cut]) {
		cut--
	}
	return doc[:cut] + " … (" + strconv.Itoa(len(doc)) + " bytes in all; ?format=json has the whole document)"
}

// page is the HTML form of a Snapshot. Class names are stable hooks for
// tests and for operators' scrapers.
var page = template.Must(template.New("debug").Funcs(template.FuncMap{
	"ms":  func(d Duration) string { return time.Duration(d).Round(10 * time.Microsecond).String() },
	"age": func(d Duration) string { return time.Duration(d).Round(time.Second).String() },
	"pct": func(f float64) string { return strconv.FormatFloat(f*100, 'f', 1, 64) + "%" },
	"doc": clipDoc,
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
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.open{color:#b00;font-weight:bold}.ok{color:#070}code{font-size:12px;white-space:pre-wrap;word-break:break-all}</style></head><body>
<h1>grpcreuse</h1><p>Generated {{ts .Generated}}; refreshes every 2 s. <a href="?format=json">JSON</a></p>
<h2 id="connections">Shared connections ({{len .Connections}})</h2>
<table><tr><th>target</th><th>tenant</th><th>handles</th><th>state</th><th>age</th><th>in flight</th><th>service config</th></tr>
{{range .Connections}}<tr class="connection"><td>{{.Target}}</td><td>{{.Tenant}}</td><td>{{.Handles}}</td><td>{{.State}}</td><td>{{age .Age}}</td><td>{{.InFlight}}</td><td class="service-config">{{if .ServiceConfig}}<code>{{doc .ServiceConfig}}</code>{{else}}—{{end}}</td></tr>
{{else}}<tr><td colspan="7">none</td></tr>{{end}}</table>
<h2 id="endpoints">Endpoints ({{len .Endpoints}})</h2>
<table><tr><th>target</th><th>endpoint</th><th>state</th><th>connections</th><th>in flight</th><th>EWMA latency</th><th>calls OK</th><th>calls failed</th><th>calls shed</th><th>ejected</th></tr>
{{range .Endpoints}}<tr class="endpoint"><td>{{.Target}}</td><td>{{.Endpoint}}</td><td>{{.State}}</td><td class="endpoint-connections">{{.Connections}}</td><td>{{.InFlight}}</td><td>{{ms .Latency}}</td><td class="calls-ok">{{.CallsOK}}</td><td class="calls-failed">{{.CallsFailed}}</td><td class="calls-shed">{{.CallsShed}}</td><td>{{if .Ejected}}<span class="open">ejected</span>{{else}}no{{end}}</td></tr>
{{else}}<tr><td colspan="10">none reported</td></tr>{{end}}</table>
<h2 id="breakers">Circuit breakers ({{len .Breakers}})</h2>
<table><tr><th>key</th><th>tenant</th><th>state</th><th>since</th><th>next probe</th><th>requests</th><th>failures</th><th>consecutive failures</th><th>rejections</th></tr>
{{range .Breakers}}<tr class="breaker"><td>{{.Key}}</td><td>{{.Tenant}}</td><td class="{{if eq .State "open"}}open{{else}}ok{{end}}">{{.State}}</td><td>{{ts .Since}}</td><td>{{ts .NextProbe}}</td><td>{{.Requests}}</td><td>{{.Failures}}</td><td>{{.ConsecutiveFailures}}</td><td>{{.Rejections}}</td></tr>
{{else}}<tr><td colspan="9">none</td></tr>{{end}}</table>
<h2 id="limiters">Limiters ({{len .Limiters}})</h2>
<table><tr><th>key</th><th>tenant</th><th>limit</th><th>in flight</th><th>queued</th><th>rejected</th></tr>
{{range .Limiters}}<tr class="limiter"><td>{{.Key}}</td><td>{{.Tenant}}</td><td>{{.Limit}}</td><td>{{.InFlight}}</td><td>{{.Queued}}</td><td>{{.Rejected}}</td></tr>
{{else}}<tr><td colspan="6">none</td></tr>{{end}}</table>
<h2 id="sessions">TLS session caches</h2>
<table><tr><th>cache</th><th>size</th><th>offered</th><th>resumed</th><th>not resumed</th><th>misses</th><th>resumed rate</th></tr>
{{range .SessionCaches}}<tr class="session-cache"><td>{{.Name}}</td><td>{{.Size}}</td><td>{{.Offered}}</td><td>{{.Resumed}}</td><td>{{.NotResumed}}</td><td>{{.Misses}}</td><td>{{pct .ResumedRate}}</td></tr>
{{else}}<tr><td colspan="7">none</td></tr>{{end}}</table>
<h2 id="handshakes">TLS handshakes (client)</h2>
<table><tr><th>full</th><th>resumed</th><th>failed</th><th>p50</th><th>p99</th></tr>
<tr class="handshakes"><td id="hs-full">{{.Handshakes.Full}}</td><td id="hs-resumed">{{.Handshakes.Resumed}}</td><td id="hs-failed">{{.Handshakes.Failed}}</td><td>{{ms .Handshakes.P50}}</td><td>{{ms .Handshakes.P99}}</td></tr></table>
{{with .Server}}<h2 id="shedders">Server load shedding ({{len .Shedders}})</h2>
<table><tr><th>shedder</th><th>limit</th><th>in flight</th><th>queued</th><th>reserved</th><th>shed, by reason</th></tr>
{{range .Shedders}}<tr class="shedder"><td>{{.Name}}</td><td>{{.Limit}}</td><td>{{.InFlight}}</td><td>{{.Queued}}</td><td>{{.Reserved}}</td><td>{{range $reason, $n := .Shed}}{{$reason}}: {{$n}}<br>{{else}}none{{end}}</td></tr>
{{else}}<tr><td colspan="6">none</td></tr>{{end}}</table>
<h2 id="server-handshakes">TLS handshakes (server)</h2>
<table><tr><th>server</th><th>full</th><th>resumed</th><th>resumed share</th><th>failed</th><th>full p50</th><th>full p99</th></tr>
{{range .Handshakes}}<tr class="server-handshakes"><td>{{.Server}}</td><td>{{.Full}}</td><td>{{.Resumed}}</td><td>{{pct .ResumedShare}}</td><td>{{.Failed}}</td><td>{{ms .P50}}</td><td>{{ms .P99}}</td></tr>
{{else}}<tr><td colspan="7">none</td></tr>{{end}}</table>{{end}}
</body></html>
`))
