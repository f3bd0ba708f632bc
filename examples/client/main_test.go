package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/examples/server/exampleserver"
)

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer runs examples/server's logic on 127.0.0.1:0 until the test
// ends, and returns its address and CA file.
func startServer(t *testing.T, extraArgs ...string) (addr, caFile string, out *syncBuffer) {
	t.Helper()
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	ctx, cancel := context.WithCancel(context.Background())
	out = &syncBuffer{}
	ready := make(chan string, 1)
	done := make(chan error, 1)
	args := append([]string{"-addr", "127.0.0.1:0", "-ca-out", caFile}, extraArgs...)
	go func() { done <- exampleserver.Run(ctx, args, out, func(a string) { ready <- a }) }()
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("server: %v\n%s", err, out)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("server did not start in 10s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
		if !strings.Contains(out.String(), "server: stopped after") {
			t.Errorf("server did not report a graceful stop:\n%s", out)
		}
	})
	return addr, caFile, out
}

// TestClientAgainstServer runs examples/server and examples/client in one
// process: both services' calls succeed over one shared connection, and
// the second round resumes TLS sessions instead of full handshakes.
func TestClientAgainstServer(t *testing.T) {
	addr, caFile, _ := startServer(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := run(ctx, []string{"-addr", addr, "-ca", caFile, "-calls", "5"}, &out); err != nil {
		t.Fatalf("client: %v\n%s", err, &out)
	}
	got := out.String()
	for _, want := range []string{
		"grpc.testing.TestService/UnaryCall: 5 OK",
		"grpc.health.v1.Health/Check: 5 OK",
		"2 services got 2 handles on 1 shared *grpc.ClientConn (Factory: 1 miss, 1 hit)",
		"load balancing grpcreuse_least_loaded",
		"breaker (5 failures in a row, open 10s)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("client output lacks %q:\n%s", want, got)
		}
	}
	// Round 2 made its connections again: at least one resumed, none full.
	round2 := got[strings.Index(got, "round 2"):]
	if !strings.Contains(round2, "TLS handshakes: 0 full,") || strings.Contains(round2, " 0 resumed") {
		t.Errorf("round 2 did not resume every TLS session:\n%s", got)
	}
}

// TestServiceConfigFile loads the service config from a file, as
// -service-config does, including the file beside main.go.
func TestServiceConfigFile(t *testing.T) {
	addr, caFile, _ := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-addr", addr, "-ca", caFile, "-calls", "1", "-service-config", "service_config.json"}, &out); err != nil {
		t.Fatalf("client: %v\n%s", err, &out)
	}
	if !strings.Contains(out.String(), "service config service_config.json\n") {
		t.Errorf("client did not say it used the file:\n%s", &out)
	}
}

// TestErrors: every bad input is an error naming it, never a panic.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badConfig, []byte(`{"grpcreuse": {"methodConfig": [{"name": [{}], "circuitBreaker": {"failureRatio": 1.5}}]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	validCA := caFileFor(t)
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"calls", []string{"-calls", "0"}, "-calls is 0; must be between 1 and 1000000"},
		{"unknown flag", []string{"-nope"}, "flag provided but not defined: -nope"},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
		{"timeout", []string{"-timeout", "-1s"}, "-timeout is -1s; must be positive"},
		{"missing CA", []string{"-ca", filepath.Join(dir, "missing.pem")}, "-ca: open "},
		{"CA not PEM", []string{"-ca", notPEM}, "holds no PEM certificate"},
		{"missing service config", []string{"-ca", validCA, "-service-config", filepath.Join(dir, "missing.json")}, "-service-config: open "},
		{"bad service config", []string{"-ca", validCA, "-service-config", badConfig}, `"circuitBreaker.failureRatio" is 1.5`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(context.Background(), tc.args, &out)
			if err == nil {
				t.Fatalf("run(%q) = nil, want an error", tc.args)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("run(%q) = %q, want it to contain %q", tc.args, err, tc.wantErr)
			}
		})
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-service-config") {
		t.Errorf("run(-h) = %v with output %q; want flag.ErrHelp and the usage", err, &out)
	}
}

// caFileFor returns a CA file that loads, from a server that is not kept.
func caFileFor(t *testing.T) string {
	_, caFile, _ := startServer(t)
	return caFile
}

// TestTicketKeyFile runs the server with session-ticket keys from a file,
// as replicas sharing a key do: sessions still resume.
func TestTicketKeyFile(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "ticket.keys")
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, caFile, srvOut := startServer(t, "-ticket-key-file", keyFile)
	if !strings.Contains(srvOut.String(), "session-ticket keys from "+keyFile) {
		t.Errorf("server did not say where its keys come from:\n%s", srvOut)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-addr", addr, "-ca", caFile, "-calls", "2"}, &out); err != nil {
		t.Fatalf("client: %v\n%s", err, &out)
	}
	round2 := out.String()[strings.Index(out.String(), "round 2"):]
	if !strings.Contains(round2, "TLS handshakes: 0 full,") {
		t.Errorf("round 2 did not resume:\n%s", &out)
	}
}
