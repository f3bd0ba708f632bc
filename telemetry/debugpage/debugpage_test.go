package debugpage_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
)

func get(t *testing.T, h http.Handler, query string) string {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestJSONShape proves what operators' tools read: durations as strings,
// unset times left out, empty lists as [] (never null).
func TestJSONShape(t *testing.T) {
	h := debugpage.NewHandler(func() debugpage.Snapshot {
		return debugpage.Snapshot{
			Generated:   time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
			Connections: []debugpage.Conn{{Target: "dns:///a:443", Age: debugpage.Duration(1500 * time.Millisecond)}},
			Breakers:    []debugpage.Breaker{{Key: "k", State: "closed"}},
			Handshakes:  debugpage.Handshakes{P99: debugpage.Duration(250 * time.Millisecond)},
			Server:      &debugpage.Server{Shedders: []debugpage.Shedder{{Name: "s"}}},
		}
	})
	body := get(t, h, "?format=json")
	for _, want := range []string{`"age": "1.5s"`, `"p99": "250ms"`, `"endpoints": []`, `"limiters": []`, `"sessionCaches": []`, `"shed": {}`, `"handshakes": []`} {
		if !strings.Contains(body, want) {
			t.Errorf("JSON lacks %s:\n%s", want, body)
		}
	}
	for _, bad := range []string{"null", "0001-01-01", `"since"`, `"nextProbe"`} {
		if strings.Contains(body, bad) {
			t.Errorf("JSON has %s:\n%s", bad, body)
		}
	}
	var back debugpage.Snapshot
	if err := json.Unmarshal([]byte(body), &back); err != nil {
		t.Fatalf("the JSON does not read back: %v", err)
	}
	if back.Connections[0].Age != debugpage.Duration(1500*time.Millisecond) {
		t.Errorf("age read back as %v", back.Connections[0].Age)
	}
}

func TestHTMLShowsServerHalfOnlyWhenPresent(t *testing.T) {
	client := get(t, debugpage.NewHandler(func() debugpage.Snapshot { return debugpage.Snapshot{} }), "")
	if strings.Contains(client, `id="shedders"`) {
		t.Error("a client-only page shows a server section")
	}
	server := get(t, debugpage.NewHandler(func() debugpage.Snapshot {
		return debugpage.Snapshot{Server: &debugpage.Server{
			Shedders:   []debugpage.Shedder{{Name: "api", Limit: 64, InFlight: 3, Queued: 2, Reserved: 1, Shed: map[string]int64{"limit": 7}}},
			Handshakes: []debugpage.ServerHandshakes{{Server: "127.0.0.1:8443", Handshakes: debugpage.Handshakes{Full: 1, Resumed: 3}, ResumedShare: 0.75}},
		}}
	}), "")
	for _, want := range []string{`<tr class="shedder"><td>api</td><td>64</td><td>3</td><td>2</td><td>1</td><td>limit: 7<br></td>`, `<td>75.0%</td>`} {
		if !strings.Contains(server, want) {
			t.Errorf("server page lacks %q:\n%s", want, server)
		}
	}
}
