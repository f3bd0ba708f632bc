package debugpage_test

import (
	"strings"
	"testing"

	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
)

// TestHTMLClipsHugeServiceConfigs: service configs are per-Get input (a
// tenant's); the HTML page showed each connection's whole document and
// refreshes every 2 s, so 64 connections with a 1 MiB document made a
// 64 MiB page every 2 s. The HTML shows the start of each and its size;
// the JSON keeps the whole document.
func TestHTMLClipsHugeServiceConfigs(t *testing.T) {
	doc := `{"methodConfig":[` + strings.Repeat(`{"name":[{"service":"s"}],"timeout":"1s"},`, 7000) + `{}]}`
	conns := make([]debugpage.Conn, 16)
	for i := range conns {
		conns[i] = debugpage.Conn{Target: "dns:///a:443", ServiceConfig: doc}
	}
	h := debugpage.NewHandler(func() debugpage.Snapshot { return debugpage.Snapshot{Connections: conns} })
	page := get(t, h, "")
	if len(page) > 1<<20 {
		t.Fatalf("HTML page is %d bytes for 16 connections", len(page))
	}
	if !strings.Contains(page, "bytes in all") {
		t.Errorf("the clipped document does not say its size")
	}
	if js := get(t, h, "?format=json"); !strings.Contains(js, strings.Repeat(`{\"name\":[{\"service\":\"s\"}],\"timeout\":\"1s\"},`, 10)) && !strings.Contains(js, doc[:200]) {
		t.Errorf("JSON lost the document")
	}
}
