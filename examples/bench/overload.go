package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// runOverload: a server that can work on 4 calls at once, 2 ms each,
// offered about 4× and 10× its capacity by 16 and 40 closed-loop callers
// whose deadline is 5 ms and who back off 1 ms after a failure. Without
// shedding the server queues every call and works on it even after its
// caller gave up, so goodput collapses. The sides, same servers and load:
// the toolkit's Shedder installed as recommended (ServerOptions: the tap
// path and the interceptors) with a fixed limit of 4 (the server's slots),
// and with the Adaptive limit starting at its default 100 and driven by
// the server's own measured service time; and failsafe-go's adaptive
// limiter (its defaults, its tap.ServerInHandle and interceptor).
//
// Capacity is measured, not assumed: the work is a 2 ms timer, and Go's
// timers fire late (the runtime sleeps in whole milliseconds), so 4 slots
// do 4 / (the work's measured time) calls/s, about 1.6k/s rather than the
// nominal 2k/s. The work time is measured while one caller runs alone,
// before the overload, so the overload's own cost is not excused: the
// callers share this process, and under the overload the same timer fires
// later still (the table shows both times).
//
// Every round starts fresh servers (no side inherits an earlier episode's
// state); one caller alone runs before the overload (the unloaded p99 and
// work time) and after it (does the server admit calls again once the
// overload is over?).
func runOverload(ctx context.Context, e *env) (*result, error) {
	const slots, work = 4, 2 * time.Millisecond
	const deadline, backoff = 5 * time.Millisecond, time.Millisecond

	type server struct {
		b        *backend
		cc       *grpc.ClientConn
		inFlight atomic.Int64
		busy     atomic.Int64 // nanoseconds the slots spent working
		works    atomic.Int64 // calls worked on
	}
	// workTime starts a measurement: the function it returns reports the
	// mean time the work took since workTime was called.
	workTime := func(s *server) func() time.Duration {
		busy0, works0 := s.busy.Load(), s.works.Load()
		return func() time.Duration {
			return time.Duration(s.busy.Load()-busy0) / time.Duration(max(s.works.Load()-works0, 1))
		}
	}
	start := func(kind string) (*server, error) {
		s := &server{}
		cpu := make(chan struct{}, slots)
		handler := func(context.Context) error {
			s.inFlight.Add(1)
			defer s.inFlight.Add(-1)
			cpu <- struct{}{} // wait for a slot, as a busy server does
			w0 := time.Now()
			t := time.NewTimer(work)
			<-t.C // the work, done whether or not the caller still waits
			s.busy.Add(int64(time.Since(w0)))
			s.works.Add(1)
			<-cpu
			return nil
		}
		var opts []grpc.ServerOption
		switch kind {
		case "fixed":
			cfg := interceptors.DefaultShedderConfig()
			cfg.Limit = slots
			sh, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
			if err != nil {
				return nil, err
			}
			opts = append(opts, sh.ServerOptions()...)
		case "adaptive":
			cfg := interceptors.DefaultShedderConfig()
			cfg.Adaptive = true
			sh, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
			if err != nil {
				return nil, err
			}
			opts = append(opts, sh.ServerOptions()...)
		case "failsafe", "failsafe-tuned":
			opts = failsafeServerOptions(kind == "failsafe-tuned")
		}
		dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		b, err := startBackend(nil, handler, opts...)
		if err != nil {
			return nil, err
		}
		s.b = b
		if s.cc, err = grpc.NewClient(b.addr, dopts...); err != nil {
			b.stop()
			return nil, err
		}
		return s, nil
	}
	// load runs n closed-loop callers for d and returns the latencies of
	// the calls that succeeded and how many calls were made.
	load := func(ctx context.Context, s *server, n int, d time.Duration) (ok []time.Duration, total int, elapsed time.Duration) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		t0 := time.Now()
		stopAt := t0.Add(d)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				calls := 0
				for ctx.Err() == nil && time.Now().Before(stopAt) {
					cctx, cancel := context.WithTimeout(ctx, deadline)
					c0 := time.Now()
					err := unary(cctx, s.cc)
					lat := time.Since(c0)
					cancel()
					calls++
					if err == nil {
						mine = append(mine, lat)
						continue
					}
					t := time.NewTimer(backoff) // the caller backs off after a failure
					<-t.C
				}
				mu.Lock()
				ok = append(ok, mine...)
				total += calls
				mu.Unlock()
			}()
		}
		wg.Wait()
		return ok, total, time.Since(t0)
	}
	// drain waits until the server finished the work queued by a run, so
	// the next run does not inherit it.
	drain := func(s *server) error {
		limit := time.Now().Add(e.maxDrive)
		for s.inFlight.Load() > 0 {
			if time.Now().After(limit) {
				return errors.New("server still busy after the run")
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	// measure runs one overload episode on a fresh server: warm-up (the
	// connection, and the Shedder's service-time average), one caller
	// alone (unloaded p99 and work time), the overload, the drain of what
	// the server queued, and one caller alone again, to see whether the
	// server admits calls once the overload is over.
	measure := func(kind string, callers int) func(context.Context) (sample, error) {
		return func(ctx context.Context) (sample, error) {
			s, err := start(kind)
			if err != nil {
				return sample{}, err
			}
			defer func() { s.cc.Close(); s.b.stop() }()
			load(ctx, s, 1, 50*time.Millisecond)
			since := workTime(s)
			idle, _, _ := load(ctx, s, 1, e.unloadedFor)
			if len(idle) == 0 {
				return sample{}, errors.New("no call succeeded unloaded")
			}
			unloadedWork := since()
			_, idle99 := percentiles(idle)
			since = workTime(s)
			ok, total, elapsed := load(ctx, s, callers, e.overloadFor)
			loadedWork := since()
			if err := drain(s); err != nil {
				return sample{}, err
			}
			after, afterTotal, _ := load(ctx, s, 1, e.unloadedFor)
			m := map[string]float64{
				"goodput": float64(len(ok)) / elapsed.Seconds(),
				"work":    float64(unloadedWork) / float64(time.Millisecond),
				"loaded":  float64(loadedWork) / float64(time.Millisecond),
				"okpct":   100 * float64(len(ok)) / float64(max(total, 1)),
				"idle99":  idle99,
				"after":   100 * float64(len(after)) / float64(max(afterTotal, 1)),
			}
			if len(ok) > 0 {
				_, m["p99"] = percentiles(ok)
			}
			return sample{lat: ok, m: m}, nil
		}
	}
	kinds := []struct{ kind, name string }{
		{"none", "no shedding"},
		{"fixed", "Shedder (fixed 4)"},
		{"adaptive", "Shedder (adaptive)"},
		{"failsafe", "failsafe-go adaptive limiter"},
		{"failsafe-tuned", "failsafe-go (25 ms windows)"},
	}
	loads := []struct {
		label   string
		callers int
		target  float64 // goodput, % of capacity
	}{{"4×", 16, 90}, {"10×", 40, 85}}
	var sides []side
	for _, l := range loads {
		for _, k := range kinds {
			sides = append(sides, side{name: l.label + " " + k.name, toolkit: k.kind == "fixed" || k.kind == "adaptive",
				measure: measure(k.kind, l.callers)})
		}
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	const title = "6. Overload: 4-slot server, 2 ms work, 16 (4×) and 40 (10×) callers, 5 ms deadlines"
	// The unloaded work time is a property of the server, measured on
	// every side's fresh one: capacity comes from its median over all
	// sides and rounds.
	var works []float64
	for _, sd := range sides {
		for _, smp := range res[sd.name] {
			works = append(works, smp.m["work"])
		}
	}
	capacity := slots / (median(works) / 1000) // work is in ms
	share := func(n string) float64 { return 100 * res.median(n, "goodput") / capacity }
	goodput := func(n string) string {
		return fmt.Sprintf("%s (%.0f%% of capacity, %.1f%% of calls OK)", fmtRate(res.median(n, "goodput")), share(n), res.median(n, "okpct"))
	}
	p99 := func(n string) string {
		if len(res.latencies(n)) == 0 {
			return fmt.Sprintf("no call admitted (unloaded %s)", fmtMS(res.median(n, "idle99")))
		}
		return fmt.Sprintf("%s (unloaded %s)", fmtMS(res.median(n, "p99")), fmtMS(res.median(n, "idle99")))
	}
	p99x := func(n string) float64 { return ratio(res.median(n, "p99"), res.median(n, "idle99")) }
	p99ok := func(n string) bool { return len(res.latencies(n)) > 0 && p99x(n) <= 2 }
	var rows []row
	for _, l := range loads {
		plain, fx, ad, fs := l.label+" "+kinds[0].name, l.label+" "+kinds[1].name, l.label+" "+kinds[2].name, l.label+" "+kinds[3].name
		ft := l.label + " " + kinds[4].name
		if res.median(ft, "goodput") > res.median(fs, "goodput") {
			fs, ft = ft, fs // compare with failsafe-go's better side
		}
		rows = append(rows,
			row{title, fmt.Sprintf("%s goodput (OK calls/s; capacity %s = 4 slots / %.2f ms measured work)", l.label, fmtRate(capacity), median(works)),
				goodput(plain),
				fmt.Sprintf("fixed 4: %s; adaptive: %s; %s: %s; %s: %s", goodput(fx), goodput(ad),
					strings.TrimPrefix(fs, l.label+" "), goodput(fs), strings.TrimPrefix(ft, l.label+" "), goodput(ft)),
				fmt.Sprintf("fixed %s, adaptive %s vs failsafe-go", fmtX(ratio(res.median(fx, "goodput"), res.median(fs, "goodput"))),
					fmtX(ratio(res.median(ad, "goodput"), res.median(fs, "goodput")))),
				fmt.Sprintf("≥ %.0f%% of capacity, ahead of failsafe-go", l.target),
				verdict(share(fx) >= l.target && share(ad) >= l.target && res.median(ad, "goodput") >= res.median(fs, "goodput"),
					fmt.Sprintf("fixed %.0f%%, adaptive %.0f%%, failsafe-go %.0f%%", share(fx), share(ad), share(fs)))},
			row{title, l.label + " admitted p99 (unloaded p99)", p99(plain),
				fmt.Sprintf("fixed 4: %s; adaptive: %s; failsafe-go (better side): %s", p99(fx), p99(ad), p99(fs)),
				fmt.Sprintf("%s; %s; %s unloaded", fmtX(p99x(fx)), fmtX(p99x(ad)), fmtX(p99x(fs))), "≤ 2× the unloaded p99 (Shedder)",
				verdict(p99ok(fx) && p99ok(ad), "")},
			row{title, l.label + " time the 2 ms work took: one caller alone → under the overload",
				fmt.Sprintf("%.2f ms → %.2f ms", res.median(plain, "work"), res.median(plain, "loaded")),
				fmt.Sprintf("fixed 4: %.2f → %.2f ms; adaptive: %.2f → %.2f ms; failsafe-go (better side): %.2f → %.2f ms",
					res.median(fx, "work"), res.median(fx, "loaded"), res.median(ad, "work"), res.median(ad, "loaded"),
					res.median(fs, "work"), res.median(fs, "loaded")),
				"—", "—", "—"},
			row{title, l.label + " after the overload: unloaded calls OK (one caller)",
				fmt.Sprintf("%.1f%%", res.median(plain, "after")),
				fmt.Sprintf("fixed 4: %.1f%%; adaptive: %.1f%%; failsafe-go (better side): %.1f%%", res.median(fx, "after"), res.median(ad, "after"), res.median(fs, "after")),
				"—", "100%", verdict(res.median(fx, "after") == 100 && res.median(ad, "after") == 100, "")},
		)
	}
	// The chart shows three of the 4× sides: no shedding and the two
	// Shedders (failsafe-go's defaults may admit no call at all, and the
	// chart keeps a fixed count of sides).
	chart := []side{sides[0], sides[1], sides[2]}
	return &result{rows: rows, dists: distsOf("overload (admitted calls)", res, chart)}, nil
}
