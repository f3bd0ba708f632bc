// Package layering holds the test that keeps grpcreuse's packages in the
// shape DESIGN.md draws: a lower package never imports a higher one.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/grpcreuse/grpcreuse/"

// allowed lists, for each layer, the grpcreuse layers its non-test code
// may import ("internal" covers every internal package). A layer is a
// top-level package with its subpackages, except telemetry's: the seam
// ("telemetry"), its OpenTelemetry implementation and the debug page are
// layers of their own, so that a package that only reports cannot reach
// OpenTelemetry.
var allowed = map[string][]string{
	"telemetry":               {},
	"telemetry/debugpage":     {},
	"telemetry/opentelemetry": {"telemetry"},
	"internal":                {"telemetry", "internal"},
	"breaker":                 {"telemetry", "internal"},
	"balancer":                {"telemetry", "internal"},
	"credentials":             {"telemetry", "internal"},
	"interceptors":            {"breaker", "telemetry", "internal"},
	"clientconn":              {"balancer", "credentials", "interceptors", "breaker", "telemetry", "telemetry/opentelemetry", "telemetry/debugpage", "internal"},
	"examples":                {"clientconn", "balancer", "credentials", "interceptors", "breaker", "telemetry", "telemetry/opentelemetry", "telemetry/debugpage", "internal"},
}

// noOTel are the layers that must not depend on OpenTelemetry, even
// through another module: they report through the seam only.
var noOTel = []string{"telemetry", "telemetry/debugpage", "breaker", "balancer", "credentials", "interceptors"}

func TestNoOpenTelemetryBelowTheImplementation(t *testing.T) {
	check := func(layer string, deps string) {
		for _, d := range strings.Fields(deps) {
			if strings.HasPrefix(d, "go.opentelemetry.io/") {
				t.Errorf("%s depends on %s: only telemetry/opentelemetry may", layer, d)
			}
		}
	}
	for _, layer := range noOTel {
		pattern := module + layer + "/..."
		if strings.HasPrefix(layer, "telemetry") {
			pattern = module + layer // telemetry/... would take in the implementation
		}
		out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}`, pattern).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", layer, err, out)
		}
		check(layer, string(out))
	}
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
	for _, sub := range []string{"telemetry/opentelemetry", "telemetry/debugpage"} {
		if rest == sub || strings.HasPrefix(rest, sub+"/") {
			return sub
		}
	}
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
