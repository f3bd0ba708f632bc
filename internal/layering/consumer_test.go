package layering

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsumerModuleGraph builds a throwaway module that imports only
// clientconn, as a service adopting the Factory would, and checks which
// modules its graph holds: none that only the examples, benchmarks or
// tests need (those live in the examples module or are internal).
func TestConsumerModuleGraph(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go mod tidy in a temporary module")
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/grpcreuse/grpcreuse").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/consumer\n\ngo 1.26.0\n\nrequire github.com/grpcreuse/grpcreuse v0.0.0\n\nreplace github.com/grpcreuse/grpcreuse => "+strings.TrimSpace(string(root))+"\n")
	write("main.go", `package main

import (
	"log"

	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/clientconn"
)

func main() {
	f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
}
`)
	run := func(args ...string) string {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("mod", "tidy")
	graph := strings.Fields(run("list", "-m", "-f", "{{.Path}}", "all"))
	linked := strings.Fields(run("list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", "."))
	t.Logf("consumer importing only clientconn: %d modules in go list -m all, %d linked", len(graph), len(unique(linked)))
	forbidden := []string{
		"github.com/prometheus/",                       // the demo's metrics endpoint
		"go.opentelemetry.io/otel/exporters/",          // likewise
		"go.uber.org/goleak",                           // tests use internal/leakcheck
		"github.com/failsafe-go/",                      // a benchmark peer
		"github.com/grpc-ecosystem/go-grpc-middleware", // composition is proven in the examples module
	}
	// go-control-plane and its kin come with grpc-go itself (its xds
	// packages), so they are in every grpc-go user's graph and not listed.
	for _, m := range graph {
		for _, f := range forbidden {
			if strings.HasPrefix(m, f) {
				t.Errorf("a consumer of clientconn inherits %s", m)
			}
		}
	}
}

func unique(s []string) map[string]bool {
	m := map[string]bool{}
	for _, v := range s {
		m[v] = true
	}
	return m
}
