package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
)

// TestMain lets the test binary be the isolated overload scenario's
// server, as the bench binary is (the scenario re-executes its own
// binary).
func TestMain(m *testing.M) {
	if spec := os.Getenv(overloadChildEnv); spec != "" {
		os.Exit(overloadChild(spec))
	}
	os.Exit(m.Run())
}

// TestQuickRun runs every scenario once with -quick sizes and checks the
// table: every scenario has its rows, every row has all seven cells and a
// result, none is an error, the targets are counted, and the SVG chart is
// well-formed XML with a bar per side. It proves the tool runs end to end
// and reports; it does not judge the numbers, which a loaded test machine
// (and -race) makes meaningless.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every scenario (about 10 s under -race)")
	}
	defer leakcheck.VerifyNone(t)
	svg := filepath.Join(t.TempDir(), "bench.svg")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	err := run(ctx, config{rounds: 1, quick: true, scenarios: scenarioNames(), svg: svg}, &out)
	t.Logf("run took %v\n%s", time.Since(start), out.String())
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	table := out.String()

	var rows [][]string
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| Scenario") || strings.HasPrefix(line, "| ---") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 7 {
			t.Errorf("row has %d cells, want 7: %s", len(cells), line)
			continue
		}
		rows = append(rows, cells)
	}
	for _, s := range scenarios() {
		prefix := s.title[:2] // "1.", "2.", ...
		n, targets := 0, 0
		for _, r := range rows {
			if !strings.HasPrefix(r[0], prefix) {
				continue
			}
			n++
			for i, c := range r {
				if strings.TrimSpace(c) == "" {
					t.Errorf("%s: empty cell %d in %q", s.name, i, r)
				}
			}
			if strings.HasPrefix(r[6], "error") {
				t.Errorf("%s: error row: %q", s.name, r)
			}
			if r[5] != "—" {
				targets++
				if !strings.HasPrefix(r[6], "met") && !strings.HasPrefix(r[6], "missed") {
					t.Errorf("%s: row with target %q has result %q, want met or missed", s.name, r[5], r[6])
				}
			}
		}
		if n == 0 {
			t.Errorf("no row for scenario %s (%s)", s.name, s.title)
		}
		if targets == 0 {
			t.Errorf("scenario %s states no target", s.name)
		}
	}
	if !strings.Contains(table, "Targets: ") {
		t.Error("table has no targets summary")
	}

	data, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	rects := 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	// Background + 6 legend swatches + 3 bars per side: churn 2,
	// saturation 3, slow backend 3, TLS 4×4, chain 2, overload 3 (the side
	// without shedding may have no admitted call to draw).
	if bars := rects - 7; bars%3 != 0 || bars/3 < 28 || bars/3 > 29 {
		t.Errorf("SVG has %d rects, want 7 + 3 per side for 28 or 29 sides", rects)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     config
		wantErr string
	}{
		{"zero rounds", config{rounds: 0, scenarios: []string{"chain"}}, "-rounds is 0"},
		{"unknown scenario", config{rounds: 1, scenarios: []string{"churn", "nope"}}, `unknown scenario "nope"`},
		{"no scenario", config{rounds: 1}, "-scenarios is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.cfg, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("run: %v; want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestSplitList(t *testing.T) {
	got := strings.Join(splitList(" churn, ,tls,"), "|")
	if got != "churn|tls" {
		t.Errorf("splitList = %q, want churn|tls", got)
	}
}
