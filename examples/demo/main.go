// Command demo shows what grpcreuse changes for a process whose services
// call the same TLS backends, side by side with plain grpc-go, in one run
// on loopback:
//
//	go run ./examples/demo
//	go run ./examples/demo -debug-addr 127.0.0.1:8080 -hold 5m   # /debug/grpcreuse and /metrics while it runs
//
// Six logical services (checkout, search, profile, feed and status call a
// pool of three backends; the ledger calls b2 alone) run the same open-loop
// traffic two ways at once, each against its own three embedded TLS
// backends: b0 is healthy, b1 answers 20 ms slower, b2 fails for a while.
//
//   - plain grpc-go: a grpc.NewClient per service (round_robin, a retry
//     policy, grpc's TLS credentials with tls.NewLRUClientSessionCache) and
//     plain grpc-go servers;
//   - grpcreuse: one clientconn.Factory (grpcreuse_least_loaded, breakers
//     and AIMD limiters from the service config, per-backend TLS session
//     cache) and servers with ticket-key rotation, matching keepalive
//     enforcement and load shedding.
//
// The phases: warm-up, steady traffic, a backend failing, recovery,
// overload and a reconnect storm; a table per phase and a summary. The
// backends count connections and full or resumed TLS handshakes on their
// side (a counting listener and tls.Config.VerifyConnection).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/examples/internal/selfsigned"
	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var progress io.Writer = io.Discard
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		progress = os.Stderr // a terminal: a progress line while phases run
	}
	err := run(ctx, os.Args[1:], os.Stdout, progress)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		stop()
		os.Exit(1)
	}
}

// options are the demo's flags.
type options struct {
	// phase is the length of the steady phase; the others are scaled
	// from it.
	phase time.Duration
	// rate is each service's calls per second at steady load.
	rate      int
	debugAddr string
	hold      time.Duration
	// debugServing, if set, is called with the debug server's base URL
	// once it serves (tests).
	debugServing func(url string)
}

func parseFlags(args []string, stdout io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints the error; -h prints the usage below
	fs.DurationVar(&o.phase, "phase", 1500*time.Millisecond, "length of the steady phase; the others are scaled from it (warm-up ½×, failing 1.25×, recovery 2×)")
	fs.IntVar(&o.rate, "rate", 40, "calls per second per service at steady load (overload is 6×)")
	fs.StringVar(&o.debugAddr, "debug-addr", "", "serve the Factory's debug page at /debug/grpcreuse and OpenTelemetry metrics at /metrics on this address (e.g. 127.0.0.1:8080)")
	fs.DurationVar(&o.hold, "hold", 0, "with -debug-addr, keep serving this long after the phases (Ctrl-C stops)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "Usage: go run ./examples/demo [flags]")
			fs.PrintDefaults()
		}
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	case o.phase < 100*time.Millisecond || o.phase > 10*time.Minute:
		return o, fmt.Errorf("-phase is %v; must be between 100ms and 10m", o.phase)
	case o.rate < 1 || o.rate > 1000:
		return o, fmt.Errorf("-rate is %d; must be between 1 and 1000", o.rate)
	case o.hold < 0:
		return o, fmt.Errorf("-hold is %v; must not be negative", o.hold)
	case o.hold > 0 && o.debugAddr == "":
		return o, errors.New("-hold keeps the debug server up; it needs -debug-addr")
	}
	if o.debugAddr != "" {
		host, _, err := net.SplitHostPort(o.debugAddr)
		if err != nil {
			return o, fmt.Errorf("-debug-addr %q: %v", o.debugAddr, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return o, fmt.Errorf("-debug-addr %q: the debug page shows targets; serve it on loopback (127.0.0.1:PORT)", o.debugAddr)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, progress io.Writer) error {
	o, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	_, err = demo(ctx, o, stdout, progress)
	return err
}

// phase is one act of the demo.
type phase struct {
	title, what string
	dur         time.Duration
	rate        int // calls per second per service
	begin       func()
	storms      int // connection cuts, evenly spaced from the phase's start
}

// sideResult is what one side did in a phase (or in all of them).
type sideResult struct {
	calls    int64
	counts   [4]int64 // by outcome
	okLat    []time.Duration
	p50, p99 time.Duration
	srv      serverCounts
	tk       toolkitCounts // grpcreuse only
}

type phaseReport struct {
	title string
	sides [2]sideResult // plain grpc-go, grpcreuse
}

// report is everything the demo measured, for its test.
type report struct {
	phases []phaseReport
	total  [2]sideResult
}

func demo(ctx context.Context, o options, stdout, progress io.Writer) (*report, error) {
	self, err := selfsigned.New("grpcreuse demo", time.Hour)
	if err != nil {
		return nil, err
	}
	cert, roots := self.TLS, self.Pool
	plainServers, err := startServerSide(cert, false)
	if err != nil {
		return nil, err
	}
	defer plainServers.stop()
	reuseServers, err := startServerSide(cert, true)
	if err != nil {
		return nil, err
	}
	defer reuseServers.stop()

	// The Factory records OpenTelemetry metrics: the demo reads its
	// breaker and balancer counts from them, and -debug-addr serves them.
	reader := sdkmetric.NewManualReader()
	mpOpts := []sdkmetric.Option{sdkmetric.WithReader(reader)}
	var metricsHandler http.Handler
	if o.debugAddr != "" {
		reg := prometheus.NewRegistry()
		exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			return nil, fmt.Errorf("prometheus exporter: %w", err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(exporter))
		metricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	mp := sdkmetric.NewMeterProvider(mpOpts...)
	defer mp.Shutdown(context.Background())

	pool := poolResolver("grpcreuse-demo", reuseServers)
	f, err := clientconn.New(
		clientconn.WithResolvers(pool), // the Factory's own resolver, no global registration
		clientconn.WithTLS(&tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13}),
		clientconn.WithKeepalive(clientconn.KeepaliveDefault()),
		clientconn.WithServiceConfig(grpcreuseServiceConfig),
		clientconn.WithMeterProvider(mp),
	)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	if o.debugAddr != "" {
		// One page for both halves: the Factory's client state and, since
		// this process also runs the servers, theirs.
		page := debugpage.NewHandler(func() debugpage.Snapshot {
			s := f.DebugSnapshot()
			s.Server = reuseServers.debugServer()
			return s
		})
		stopDebug, err := serveDebug(o, page, metricsHandler, stdout)
		if err != nil {
			return nil, err
		}
		defer stopDebug()
		var addrs []string
		for i, b := range reuseServers.backends {
			addrs = append(addrs, backendNames[i]+" "+b.addr)
		}
		fmt.Fprintf(stdout, "the grpcreuse side's backends there: %s\n", strings.Join(addrs, ", "))
	}

	capacity := len(reuseServers.backends) * int(time.Second/workTime) * workers
	printHeader(stdout, o, capacity)

	var plain, reuse *clientSide
	defer func() {
		for _, s := range []*clientSide{plain, reuse} {
			if s != nil {
				s.close()
			}
		}
	}()
	sides := func() [2]*clientSide { return [2]*clientSide{plain, reuse} }
	setFailing := func(failing bool) {
		plainServers.setFailing(flakyBackend, failing)
		reuseServers.setFailing(flakyBackend, failing)
	}
	phases := []phase{
		{title: "warm-up", what: "each service makes its client and first calls", dur: o.phase / 2, rate: o.rate},
		{title: "steady traffic", what: "b1 answers 20ms slower than b0 and b2", dur: o.phase, rate: o.rate},
		{title: "a backend failing", what: "b2 answers every call with UNAVAILABLE", dur: o.phase * 5 / 4, rate: o.rate,
			begin: func() { setFailing(true) }},
		{title: "recovery", what: "b2 is healthy again", dur: 2 * o.phase, rate: o.rate, begin: func() { setFailing(false) }},
		{title: "overload", what: fmt.Sprintf("6× the calls: %d TestService calls/s for backends that serve %d/s", 6*o.rate*5, capacity),
			dur: o.phase, rate: 6 * o.rate},
		{title: "reconnect storm", what: "every connection is cut 3 times, as by a load balancer restart", dur: o.phase, rate: o.rate, storms: 3},
	}

	rep := &report{}
	var prevTK toolkitCounts
	for i, ph := range phases {
		before := [2]serverCounts{plainServers.snapshot(), reuseServers.snapshot()}
		if i == 0 {
			// The clients are made in the warm-up, so that their
			// connections and handshakes count there.
			if plain, err = newPlainSide(plainServers, roots); err != nil {
				return nil, err
			}
			if reuse, err = newGrpcreuseSide(ctx, reuseServers, f, pool.Scheme()+":///pool", reader); err != nil {
				return nil, err
			}
		}
		if ph.begin != nil {
			ph.begin()
		}
		label := fmt.Sprintf("%d/%d %s", i+1, len(phases), ph.title)
		if err := drive(ctx, sides(), ph, label, progress); err != nil {
			return nil, fmt.Errorf("interrupted in phase %q: %w", ph.title, err)
		}
		after := [2]serverCounts{plainServers.snapshot(), reuseServers.snapshot()}
		tk, err := readToolkitCounts(ctx, reader)
		if err != nil {
			return nil, err
		}
		pr := phaseReport{title: ph.title}
		for j, s := range sides() {
			r := &pr.sides[j]
			r.calls, r.counts, r.okLat = s.tally.take()
			r.srv = after[j].sub(before[j])
			if s == reuse {
				r.tk = tk.sub(prevTK)
			}
			r.finish()
			if sum := r.counts[ok] + r.counts[failed] + r.counts[fastFailed] + r.counts[shed]; sum != r.calls {
				return nil, fmt.Errorf("%s, %s: %d calls issued but %d ended", ph.title, s.name, r.calls, sum)
			}
		}
		prevTK = tk
		rep.phases = append(rep.phases, pr)
		printPhase(stdout, i+1, len(phases), ph, pr)
	}

	for j := range rep.total {
		t := &rep.total[j]
		for _, pr := range rep.phases {
			s := pr.sides[j]
			t.calls += s.calls
			for k := range t.counts {
				t.counts[k] += s.counts[k]
			}
			t.okLat = append(t.okLat, s.okLat...)
			t.srv = t.srv.add(s.srv)
			t.tk = t.tk.add(s.tk)
		}
		t.finish()
	}
	printSummary(stdout, rep)

	if o.hold > 0 {
		fmt.Fprintf(stdout, "\nholding the debug server for %v (Ctrl-C stops)\n", o.hold)
		select {
		case <-time.After(o.hold):
		case <-ctx.Done():
		}
	}
	return rep, nil
}

// finish sorts the OK latencies and takes the percentiles.
func (r *sideResult) finish() {
	sortDurations(r.okLat)
	r.p50, r.p99 = percentile(r.okLat, 0.50), percentile(r.okLat, 0.99)
}

func (c serverCounts) add(o serverCounts) serverCounts {
	d := serverCounts{accepts: c.accepts + o.accepts, full: c.full + o.full, resumed: c.resumed + o.resumed, shed: c.shed + o.shed}
	for i := range c.attempts {
		d.attempts[i], d.failed[i], d.pool[i] = c.attempts[i]+o.attempts[i], c.failed[i]+o.failed[i], c.pool[i]+o.pool[i]
	}
	return d
}

// drive runs a phase's traffic on every side at once: each service issues
// rate×dur calls at fixed times (open loop, the same on both sides), each
// with callTimeout, and drive returns when every call has ended.
func drive(ctx context.Context, sides [2]*clientSide, ph phase, label string, progress io.Writer) error {
	n := max(1, int(float64(ph.rate)*ph.dur.Seconds()))
	interval := ph.dur / time.Duration(n)
	start := time.Now()
	var issuing, calls sync.WaitGroup
	for _, s := range sides {
		for i, call := range s.services {
			// Services are staggered so their calls do not arrive in
			// bursts; both sides use the same schedule.
			offset := interval * time.Duration(i) / time.Duration(len(s.services))
			timed := i != statusService // latencies are of TestService calls
			issuing.Add(1)
			go func() {
				defer issuing.Done()
				for k := 0; k < n; k++ {
					if !sleepUntil(ctx, start.Add(offset+time.Duration(k)*interval)) {
						return
					}
					s.tally.issued.Add(1)
					calls.Add(1)
					go func() {
						defer calls.Done()
						cctx, cancel := context.WithTimeout(ctx, callTimeout)
						t0 := time.Now()
						err := call(cctx)
						d := time.Since(t0)
						cancel()
						s.tally.record(classify(err), d, timed)
					}()
				}
			}()
		}
	}
	var storms sync.WaitGroup
	storms.Add(1)
	go func() {
		defer storms.Done()
		for k := 0; k < ph.storms; k++ {
			if !sleepUntil(ctx, start.Add(time.Duration(k)*ph.dur/time.Duration(ph.storms))) {
				return
			}
			for _, s := range sides {
				s.servers.dropConnections()
			}
		}
	}()
	stopProgress := showProgress(progress, label, start, ph.dur, sides)
	issuing.Wait()
	calls.Wait()
	storms.Wait()
	stopProgress()
	return ctx.Err()
}

// sleepUntil waits until t; it reports false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// showProgress rewrites one line on w every 200ms until the returned stop
// is called, which clears it.
func showProgress(w io.Writer, label string, start time.Time, dur time.Duration, sides [2]*clientSide) (stop func()) {
	if w == io.Discard {
		return func() {}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			el := min(time.Since(start), dur)
			fmt.Fprintf(w, "\r  %-26s %4.1fs/%.1fs  calls: plain grpc-go %d, grpcreuse %d   ", label, el.Seconds(), dur.Seconds(),
				sides[0].tally.issued.Load(), sides[1].tally.issued.Load())
			select {
			case <-done:
				fmt.Fprintf(w, "\r%s\r", strings.Repeat(" ", 100))
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-exited }
}

// toolkitCounts are the grpcreuse side's own counts, read from its metrics.
type toolkitCounts struct {
	breakerOpens, breakerRejections, limiterRejections, ejections int64
}

func (c toolkitCounts) sub(o toolkitCounts) toolkitCounts {
	return toolkitCounts{c.breakerOpens - o.breakerOpens, c.breakerRejections - o.breakerRejections,
		c.limiterRejections - o.limiterRejections, c.ejections - o.ejections}
}

func (c toolkitCounts) add(o toolkitCounts) toolkitCounts {
	return toolkitCounts{c.breakerOpens + o.breakerOpens, c.breakerRejections + o.breakerRejections,
		c.limiterRejections + o.limiterRejections, c.ejections + o.ejections}
}

// readToolkitCounts collects the Factory's cumulative counters.
func readToolkitCounts(ctx context.Context, reader *sdkmetric.ManualReader) (toolkitCounts, error) {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return toolkitCounts{}, fmt.Errorf("collect metrics: %w", err)
	}
	var c toolkitCounts
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				switch m.Name {
				case opentelemetry.MetricBreakerTransitions:
					if to, _ := dp.Attributes.Value(opentelemetry.AttrTo); to.AsString() == telemetry.BreakerOpen.String() {
						c.breakerOpens += dp.Value
					}
				case opentelemetry.MetricBreakerRejections:
					c.breakerRejections += dp.Value
				case opentelemetry.MetricLimiterRejections:
					c.limiterRejections += dp.Value
				case opentelemetry.MetricEjections:
					c.ejections += dp.Value
				}
			}
		}
	}
	return c, nil
}

// serveDebug serves the Factory's debug page and the metrics on
// o.debugAddr until the returned stop is called.
func serveDebug(o options, debug, metrics http.Handler, stdout io.Writer) (stop func(), err error) {
	lis, err := net.Listen("tcp", o.debugAddr)
	if err != nil {
		return nil, fmt.Errorf("-debug-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/debug/grpcreuse", debug)
	mux.Handle("/metrics", metrics)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis) // ErrServerClosed after Shutdown
	}()
	url := "http://" + lis.Addr().String()
	fmt.Fprintf(stdout, "debug page: %s/debug/grpcreuse (JSON: ?format=json), metrics: %s/metrics\n", url, url)
	if o.debugServing != nil {
		o.debugServing(url)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-served
	}, nil
}
