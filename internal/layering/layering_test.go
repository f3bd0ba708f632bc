// Package layering holds the test that keeps grpcreuse's packages in the
// shape DESIGN.md draws: a lower package never imports a higher one.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/grpcreuse/grpcreuse/"

// allowed lists, for each top-level package, the grpcreuse packages its
// non-test code may import ("internal" covers every internal package).
var allowed = map[string][]string{
	"telemetry":    {},
	"internal":     {"telemetry", "internal"},
	"breaker":      {"telemetry", "internal"},
	"balancer":     {"telemetry", "internal"},
	"credentials":  {"telemetry", "internal"},
	"interceptors": {"breaker", "telemetry", "internal"},
	"clientconn":   {"balancer", "credentials", "interceptors", "breaker", "telemetry", "internal"},
	"examples":     {"clientconn", "balancer", "credentials", "interceptors", "breaker", "telemetry"},
}

func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "github.com/grpcreuse/grpcreuse/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		from := top(fields[0])
		rules, ok := allowed[from]
		if !ok {
			t.Errorf("package %s is not in DESIGN.md's layering; add it to the table here", fields[0])
			continue
		}
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			to := top(imp)
			if to == from && from != "internal" {
				continue
			}
			if !contains(rules, to) {
				t.Errorf("%s imports %s: %s may import only %v", fields[0], imp, from, rules)
			}
		}
	}
}

func top(pkg string) string {
	rest := strings.TrimPrefix(pkg, module)
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[:i]
	}
	return rest
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
