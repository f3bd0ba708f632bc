package interceptors_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// TestShedderDocJSONExamplesParse: every ShedderConfig JSON example a
// reader may copy, in UnmarshalJSON's godoc and in docs/overload.md, is
// accepted, and the service config docs/overload.md gives clients is one
// grpc-go accepts. UnmarshalJSON's godoc showed "maxWait": "20ms", which
// it rejects (durations are proto-JSON: "0.02s").
func TestShedderDocJSONExamplesParse(t *testing.T) {
	var examples []string // ShedderConfig objects

	// UnmarshalJSON's godoc: its indented block.
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "shed_json.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Name.Name != "UnmarshalJSON" || fd.Doc == nil {
			continue
		}
		var block []string
		for line := range strings.SplitSeq(fd.Doc.Text(), "\n") {
			if strings.HasPrefix(line, "\t") {
				block = append(block, line)
			}
		}
		if len(block) == 0 {
			t.Fatal("UnmarshalJSON's godoc has no example block")
		}
		examples = append(examples, strings.Join(block, "\n"))
	}
	if len(examples) != 1 {
		t.Fatalf("found %d UnmarshalJSON godoc examples, want 1", len(examples))
	}

	// docs/overload.md: its json blocks, ShedderConfigs and the clients'
	// service config.
	md, err := os.ReadFile("../docs/overload.md")
	if err != nil {
		t.Fatal(err)
	}
	var serviceConfigs []string
	for _, m := range regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(string(md), -1) {
		if strings.Contains(m[1], `"methodConfig"`) {
			serviceConfigs = append(serviceConfigs, m[1])
		} else {
			examples = append(examples, m[1])
		}
	}
	if len(examples) < 2 || len(serviceConfigs) < 1 {
		t.Fatalf("docs/overload.md: %d ShedderConfig and %d service config examples, want at least 1 each", len(examples)-1, len(serviceConfigs))
	}

	for _, ex := range examples {
		var c interceptors.ShedderConfig
		if err := json.Unmarshal([]byte(ex), &c); err != nil {
			t.Errorf("ShedderConfig example\n%s\ndoes not parse: %v", ex, err)
		}
	}
	for _, sc := range serviceConfigs {
		cc, err := grpc.NewClient("passthrough:///127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(sc))
		if err != nil {
			t.Errorf("service config example\n%s\nis refused by grpc-go: %v", sc, err)
			continue
		}
		cc.Close()
	}
}
