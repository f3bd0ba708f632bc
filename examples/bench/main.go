// Command bench runs grpcreuse side by side with plain grpc-go in one
// process and prints a markdown table of medians and ratios, with the
// targets of the project and whether this run met them.
//
// Every scenario starts its own servers on 127.0.0.1, gives both sides the
// same servers and the same load, and runs the sides one after the other,
// alternating their order from round to round, so a noisy machine hurts
// both alike. Ratios within one run are what to read; absolute times
// depend on the machine.
//
//	go run ./examples/bench                      # all scenarios, 3 rounds
//	go run ./examples/bench -svg /tmp/bench.svg  # plus a latency chart
//	go run ./examples/bench -scenarios churn,tls -rounds 5
//	go run ./examples/bench -quick -rounds 1     # a smoke run of seconds
//
// Scenarios:
//
//	churn        8 services × 3 TLS backends: grpc.NewClient per service vs one Factory
//	saturation   MaxConcurrentStreams 100, 20 ms handler, 1000 callers: pick_first,
//	             a hand-made pool of 8 ClientConns, the toolkit's balancer
//	slowbackend  one backend of three 20 ms slower, 32 callers: round_robin,
//	             least_request_experimental, the toolkit's balancer
//	tls          full vs resumed handshakes (ECDSA P-256 / RSA-2048, TLS 1.3 / 1.2),
//	             and the resumption rate of three backends behind one name
//	chain        the client interceptor chain's cost per unary call (bufconn)
//	overload     4× and 10× a server's capacity without and with load shedding, twice:
//	             in-process, and isolated (the server in a child process pinned to
//	             one CPU, the callers on another; Linux, 2 CPUs)
//	overload-cpu the same with about 0.6 ms of CPU work per call instead of a 2 ms
//	             timer, the fixed limit sized to the server's one CPU
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

func main() {
	if spec := os.Getenv(overloadChildEnv); spec != "" { // the isolated overload scenario's server
		os.Exit(overloadChild(spec))
	}
	var cfg config
	var names string
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds per scenario; the table shows medians over rounds")
	flag.BoolVar(&cfg.quick, "quick", false, "shrink every scenario (for tests and smoke runs)")
	flag.StringVar(&names, "scenarios", strings.Join(scenarioNames(), ","), "comma-separated scenarios to run")
	flag.StringVar(&cfg.svg, "svg", "", "write a latency-distribution chart (SVG) to this file")
	flag.Parse()
	cfg.scenarios = splitList(names)
	cfg.progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// config is what the flags set.
type config struct {
	rounds    int
	quick     bool
	scenarios []string
	svg       string
	// progress receives one line per scenario round; nil discards them.
	progress io.Writer
}

// scenario is one comparison. run starts its servers, runs every side for
// cfg.rounds rounds and returns the table rows and latency distributions.
type scenario struct {
	name  string
	title string
	run   func(ctx context.Context, env *env) (*result, error)
}

func scenarios() []scenario {
	return []scenario{
		{"churn", "1. Churn: 8 services × 3 TLS backends", runChurn},
		{"saturation", "2. Stream saturation", runSaturation},
		{"slowbackend", "3. Slow backend", runSlowBackend},
		{"tls", "4. TLS", runTLS},
		{"chain", "5. Interceptor chain", runChain},
		{"overload", "6. Overload", runOverload},
		{"shedding", "7. Shedding backends", runShedding},
		{"overload-cpu", "8. Overload, CPU-bound work", runOverloadCPU},
	}
}

func scenarioNames() []string {
	var n []string
	for _, s := range scenarios() {
		n = append(n, s.name)
	}
	return n
}

// env is what a scenario gets: sizes, rounds and where to report progress.
type env struct {
	sizes
	rounds   int
	title    string
	progress io.Writer
}

// logf reports progress; it never goes to the table.
func (e *env) logf(format string, args ...any) {
	if e.progress != nil {
		fmt.Fprintf(e.progress, "bench: "+format+"\n", args...)
	}
}

// result is what a scenario reports.
type result struct {
	rows  []row
	dists []dist
}

// row is one line of the table. plain and toolkit hold the medians of
// each side (several baselines share the plain cell), ratio compares them,
// target is the project's goal and verdict says whether this run met it.
type row struct {
	scenario, measure, plain, toolkit, ratio, target, verdict string
}

// dist is one side's latency distribution, for the chart.
type dist struct {
	scenario, side string
	toolkit        bool
	p50, p90, p99  time.Duration
	n              int
}

// run runs the selected scenarios and writes the table to w. A scenario
// that fails gets an error row; run goes on with the others and returns
// every failure at the end.
func run(ctx context.Context, cfg config, w io.Writer) error {
	if cfg.rounds < 1 || cfg.rounds > 100 {
		return fmt.Errorf("-rounds is %d; must be between 1 and 100", cfg.rounds)
	}
	all := scenarios()
	var selected []scenario
	for _, name := range cfg.scenarios {
		i := slices.IndexFunc(all, func(s scenario) bool { return s.name == name })
		if i < 0 {
			return fmt.Errorf("-scenarios: unknown scenario %q; choose from %s", name, strings.Join(scenarioNames(), ","))
		}
		if !slices.ContainsFunc(selected, func(s scenario) bool { return s.name == name }) {
			selected = append(selected, all[i])
		}
	}
	if len(selected) == 0 {
		return errors.New("-scenarios is empty; choose from " + strings.Join(scenarioNames(), ","))
	}
	sz := defaultSizes()
	if cfg.quick {
		sz = quickSizes()
	}
	start := time.Now()
	var rows []row
	var dists []dist
	var errs []error
	for _, s := range selected {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		e := &env{sizes: sz, rounds: cfg.rounds, title: s.title, progress: cfg.progress}
		t0 := time.Now()
		e.logf("%s: starting", s.name)
		res, err := s.run(ctx, e)
		if err != nil {
			err = fmt.Errorf("%s: %w", s.name, err)
			errs = append(errs, err)
			rows = append(rows, row{scenario: s.title, measure: "—", plain: "—", toolkit: "—", ratio: "—", target: "—",
				verdict: "error: " + err.Error()})
			continue
		}
		e.logf("%s: done in %v", s.name, time.Since(t0).Round(time.Millisecond))
		rows = append(rows, res.rows...)
		dists = append(dists, res.dists...)
	}
	writeTable(w, cfg, rows, time.Since(start))
	if cfg.svg != "" {
		if err := os.WriteFile(cfg.svg, []byte(renderSVG(dists)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("-svg: %w", err))
		}
	}
	return errors.Join(errs...)
}

func writeTable(w io.Writer, cfg config, rows []row, took time.Duration) {
	mode := ""
	if cfg.quick {
		mode = ", -quick"
	}
	fmt.Fprintf(w, "grpcreuse vs plain grpc-go, one process, 127.0.0.1, %d round(s)%s, medians over rounds; %s, grpc-go %s, GOMAXPROCS %d; took %v\n\n",
		cfg.rounds, mode, runtime.Version(), grpc.Version, gomaxprocs(), took.Round(100*time.Millisecond))
	fmt.Fprintln(w, "| Scenario | Measure | plain grpc-go | grpcreuse | Ratio | Target | Result |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n",
			cell(r.scenario), cell(r.measure), cell(r.plain), cell(r.toolkit), cell(r.ratio), cell(r.target), cell(r.verdict))
	}
	met, missed := 0, 0
	for _, r := range rows {
		switch {
		case strings.HasPrefix(r.verdict, "met"):
			met++
		case strings.HasPrefix(r.verdict, "missed"):
			missed++
		}
	}
	fmt.Fprintf(w, "\nTargets: %d met, %d missed.\n", met, missed)
}

// cell keeps a value from breaking the markdown table.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
