package clientconn_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// chromium returns the headless browser, or skips the test; in CI a
// missing browser fails instead, so the browser test cannot silently vanish.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium not found, and CI=true: .ci/run installs it with apt-get")
	}
	t.Skip("chromium not installed (apt-get install chromium)")
	return ""
}

// renderDOM loads url in headless Chromium and returns the DOM after
// scripts (if any ran) and rendering.
func renderDOM(t *testing.T, url string) string {
	t.Helper()
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--dump-dom", url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	return string(out)
}

func TestDebugPageInBrowser(t *testing.T) {
	var faults testutil.Faults
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	b := startTLSBackend(t, pki, tls.VersionTLS13, faults.ServerOptions()...)
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0), clientconn.WithServiceConfig(breakerServiceConfig))
	defer f.Close()
	connectOnce(t, f, b.Addr) // full handshake
	connectOnce(t, f, b.Addr) // resumed
	live := get(t, f, b.Addr) // a live shared connection...
	defer live.Close()
	mustUnary(t, live)
	shared := get(t, f, b.Addr) // ...with two handles
	defer shared.Close()
	faults.FailEvery(1, codes.Unavailable) // trip the policy's breaker: 3 failures
	for i := 0; i < 3; i++ {
		_ = unary(context.Background(), live)
	}

	srv := httptest.NewServer(f.DebugHandler())
	defer srv.Close()
	dom := renderDOM(t, srv.URL)
	for _, want := range []string{
		`<td>dns:///` + b.Addr + `</td><td></td><td>2</td><td>READY</td>`, // the connection, 2 handles
		`<td class="open">open</td>`,                                      // the open breaker
		`<td id="hs-full">1</td><td id="hs-resumed">2</td>`,               // full and resumed handshakes
		`<td>WithTLS</td><td>`,                                            // the session cache
		`<td class="service-config"><code>{"methodConfig"`,                // the service config in force
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q\n%s", want, dom)
		}
	}

	// The same data as JSON.
	resp, err := http.Get(srv.URL + "?format=json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var snap debugpage.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatalf("decoding JSON: %v", err)
	}
	if len(snap.Connections) != 1 || snap.Connections[0].Handles != 2 || snap.Handshakes.Resumed != 2 || len(snap.Breakers) != 1 || snap.Breakers[0].State != "open" {
		t.Errorf("JSON snapshot = %+v", snap)
	}
	if br := snap.Breakers[0]; br.NextProbe.Before(time.Now()) || br.Rejections != 0 || !strings.HasSuffix(br.Key, "/grpc.testing.TestService/UnaryCall") {
		t.Errorf("breaker = %+v, want a next probe in the future, no rejections yet, keyed by target and method", br)
	}
	if len(snap.Limiters) != 1 || snap.Limiters[0].Limit != 100 || snap.Limiters[0].InFlight != 0 {
		t.Errorf("limiters = %+v, want the policy's limiter at 100, idle", snap.Limiters)
	}
}

func TestDebugPageEscapesTargets(t *testing.T) {
	f := mustNew(t, clientconn.WithTransportCredentials(insecure.NewCredentials()))
	defer f.Close()
	evil := `passthrough:///x<script>document.title='pwned'</script><img/src=x/onerror=alert(1)>`
	c, err := f.Get(context.Background(), evil, clientconn.WithTenant(`<b>tenant</b>`))
	if err != nil {
		t.Fatalf("Get(%q): %v", evil, err)
	}
	defer c.Close()
	srv := httptest.NewServer(f.DebugHandler())
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "<script>") || strings.Contains(string(body), "<img") || strings.Contains(string(body), "<b>tenant") {
		t.Fatalf("served page contains unescaped markup:\n%s", body)
	}
	dom := renderDOM(t, srv.URL)
	if !strings.Contains(dom, "<title>grpcreuse debug</title>") {
		t.Errorf("the target's script ran: the title changed:\n%s", dom)
	}
	if strings.Contains(dom, "<script>") || strings.Contains(dom, "<img") {
		t.Errorf("rendered DOM has an element from the target:\n%s", dom)
	}
	if !strings.Contains(dom, "&lt;script&gt;document.title='pwned'&lt;/script&gt;") {
		t.Errorf("the target should show as text:\n%s", dom)
	}
}

// TestDebugPageShowsEndpoints renders, in a real browser, what the
// balancer reports per endpoint: its state over its connections, the
// connections open and the calls that finished OK, failed or shed.
func TestDebugPageShowsEndpoints(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	r := manual.NewBuilderWithScheme("grpcreusedebug")
	r.InitialState(resolver.State{Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: b.Addr}}}}})
	f := newFactory(t, clientconn.WithResolvers(r), clientconn.WithServiceConfig(
		`{"loadBalancingConfig":[{"`+balancer.Name+`":{"subchannelsPerEndpoint":2}}]}`))
	c := get(t, f, "grpcreusedebug:///svc", clientconn.WithWarmUp())
	defer c.Close()
	for i := 0; i < 20; i++ {
		mustUnary(t, c)
	}
	srv := httptest.NewServer(f.DebugHandler())
	defer srv.Close()
	var ep debugpage.Endpoint
	testutil.Eventually(t, 10*time.Second, func() bool {
		resp, err := http.Get(srv.URL + "?format=json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var snap debugpage.Snapshot
		if json.NewDecoder(resp.Body).Decode(&snap) != nil || len(snap.Endpoints) != 1 {
			return false
		}
		ep = snap.Endpoints[0]
		return ep.Connections == 2 && ep.CallsOK >= 20
	}, "the endpoint row shows 2 connections and 20 calls OK")
	if ep.State != "READY" || ep.CallsFailed != 0 || ep.CallsShed != 0 {
		t.Errorf("endpoint = %+v, want READY with no failed or shed calls", ep)
	}
	dom := renderDOM(t, srv.URL)
	for _, want := range []string{
		`<td>` + b.Addr + `</td><td>READY</td><td class="endpoint-connections">2</td>`,
		`<td class="calls-failed">0</td><td class="calls-shed">0</td>`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q\n%s", want, dom)
		}
	}
}
