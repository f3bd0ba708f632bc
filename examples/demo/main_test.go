package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the whole demo with short phases, serving its debug page
// and metrics, and checks the facts its summary claims.
func TestDemo(t *testing.T) {
	fetched := make(chan error, 1)
	o := options{phase: 400 * time.Millisecond, rate: 25, debugAddr: "127.0.0.1:0",
		debugServing: func(url string) { go func() { fetched <- fetchDebug(url) }() }}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	rep, err := demo(ctx, o, &out, io.Discard)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, &out)
	}
	t.Logf("demo ran in %v:\n%s", time.Since(start).Round(time.Millisecond), &out)
	if err := <-fetched; err != nil {
		t.Errorf("debug server: %v", err)
	}

	phase := map[string]phaseReport{}
	for _, pr := range rep.phases {
		phase[pr.title] = pr
		for j, s := range pr.sides {
			// No call is lost: each ended exactly one way (demo also
			// checks this), and both sides got the same traffic.
			if sum := s.counts[ok] + s.counts[failed] + s.counts[fastFailed] + s.counts[shed]; sum != s.calls || s.calls == 0 {
				t.Errorf("%s, side %d: %d calls, %d accounted for", pr.title, j, s.calls, sum)
			}
		}
		if pr.sides[0].calls != pr.sides[1].calls {
			t.Errorf("%s: plain made %d calls, grpcreuse %d; want the same traffic", pr.title, pr.sides[0].calls, pr.sides[1].calls)
		}
		if !strings.Contains(out.String(), pr.title) {
			t.Errorf("output lacks phase %q", pr.title)
		}
	}
	if len(rep.phases) != 6 {
		t.Fatalf("%d phases, want 6", len(rep.phases))
	}
	plain, reuse := rep.total[0], rep.total[1]

	// Sharing: the five pool services share a connection per backend.
	if warm := phase["warm-up"]; warm.sides[1].srv.accepts != 4 || warm.sides[0].srv.accepts != 16 {
		t.Errorf("warm-up connections: plain %d, grpcreuse %d; want 16 and 4", warm.sides[0].srv.accepts, warm.sides[1].srv.accepts)
	}
	if reuse.srv.accepts >= plain.srv.accepts {
		t.Errorf("grpcreuse opened %d connections, plain %d; want fewer", reuse.srv.accepts, plain.srv.accepts)
	}
	// The storm: every grpcreuse reconnection resumes its TLS session.
	if st := phase["reconnect storm"].sides[1].srv; st.resumed == 0 || st.full > 0 {
		t.Errorf("reconnect storm, grpcreuse: %d full and %d resumed handshakes; want all resumed", st.full, st.resumed)
	}
	// The failing backend: the ledger's breaker opens and fails calls
	// fast, the balancer ejects b2, and b2 sees fewer doomed attempts.
	fail := phase["a backend failing"]
	if g := fail.sides[1]; g.tk.breakerOpens == 0 || g.tk.breakerRejections == 0 || g.counts[fastFailed] == 0 {
		t.Errorf("backend failing, grpcreuse: breaker opened %d×, rejected %d, %d calls fast-failed; want all > 0",
			g.tk.breakerOpens, g.tk.breakerRejections, g.counts[fastFailed])
	}
	// The balancer ejects b2, or its scores (failures count) keep the
	// pool's calls away from b2 before three fail in a row.
	if g := fail.sides[1].srv.pool; fail.sides[1].tk.ejections == 0 && g[flakyBackend]*10 > g[0]+g[1]+g[2] {
		t.Errorf("backend failing, grpcreuse: no ejection, and b2 got %d of the pool's %d calls", g[flakyBackend], g[0]+g[1]+g[2])
	}
	if p, g := fail.sides[0].srv.failed[flakyBackend], fail.sides[1].srv.failed[flakyBackend]; g >= p {
		t.Errorf("backend failing: b2 failed %d attempts of grpcreuse, %d of plain; want fewer", g, p)
	}
	// Overload: the grpcreuse servers shed; plain grpc-go has no shedding.
	if g := phase["overload"].sides[1]; g.counts[shed] == 0 {
		t.Error("overload, grpcreuse: no call was shed")
	}
	if plain.counts[fastFailed] != 0 || plain.counts[shed] != 0 {
		t.Errorf("plain grpc-go: %d fast-failed, %d shed; it has neither", plain.counts[fastFailed], plain.counts[shed])
	}
	for _, want := range []string{"summary, all 6 phases", "connections opened", "TLS handshakes full / resumed", "p50 / p99"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// fetchDebug polls the debug page until it shows the shared connections,
// then checks that /metrics serves grpcreuse's metrics.
func fetchDebug(url string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var snap struct {
			Connections []struct {
				Target  string `json:"target"`
				Handles int    `json:"handles"`
			} `json:"connections"`
			Server *struct {
				Shedders   []struct{ Limit int } `json:"shedders"`
				Handshakes []struct {
					Full uint64 `json:"full"`
				} `json:"handshakes"`
			} `json:"server"`
		}
		body, err := get(url + "/debug/grpcreuse?format=json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal(body, &snap); err != nil {
			return fmt.Errorf("/debug/grpcreuse?format=json: %v", err)
		}
		handles := 0
		for _, c := range snap.Connections {
			handles += c.Handles
		}
		// The server half: the three backends' Shedders and the handshakes
		// they answered.
		if len(snap.Connections) == 2 && handles == 6 && snap.Server != nil && len(snap.Server.Shedders) == 3 && len(snap.Server.Handshakes) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/debug/grpcreuse shows %+v, server %+v; want 2 connections with 6 handles and the 3 backends' shedders and handshakes", snap.Connections, snap.Server)
		}
		time.Sleep(20 * time.Millisecond)
	}
	body, err := get(url + "/metrics")
	if err != nil {
		return err
	}
	if !bytes.Contains(body, []byte("grpcreuse_pool_gets")) {
		return fmt.Errorf("/metrics lacks grpcreuse_pool_gets:\n%.2000s", body)
	}
	return nil
}

func get(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}

// TestFlagErrors: bad flags are errors naming the flag, never a panic, and
// start nothing.
func TestFlagErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"phase", []string{"-phase", "1ms"}, "-phase is 1ms; must be between 100ms and 10m"},
		{"rate", []string{"-rate", "0"}, "-rate is 0; must be between 1 and 1000"},
		{"hold without debug", []string{"-hold", "1s"}, "-hold keeps the debug server up; it needs -debug-addr"},
		{"negative hold", []string{"-hold", "-1s", "-debug-addr", "127.0.0.1:0"}, "-hold is -1s"},
		{"debug addr", []string{"-debug-addr", "nonsense"}, `-debug-addr "nonsense"`},
		{"public debug addr", []string{"-debug-addr", "0.0.0.0:8080"}, "serve it on loopback"},
		{"debug addr in use", []string{"-phase", "100ms", "-debug-addr", busy.Addr().String()}, "-debug-addr: listen tcp"},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
		{"not a duration", []string{"-phase", "soon"}, `invalid value "soon" for flag -phase`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.wantErr)
			}
		})
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out, io.Discard); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-debug-addr") {
		t.Errorf("run(-h) = %v with output %q; want flag.ErrHelp and the usage", err, &out)
	}
}
