package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// runOverload: a server that can work on 4 calls at once, 2 ms each,
// offered about 4× its capacity by 16 closed-loop callers whose deadline is
// 5 ms and who back off 1 ms after a failure. Without shedding the server
// queues every call and works on it even after its caller gave up, so
// goodput collapses; with the toolkit's Shedder (an in-flight limit of 4)
// the excess is refused at once. A third side adds the toolkit's client
// Limiter (AIMD, no queue), which lowers its limit when the server sheds
// and so refuses the excess before it crosses the network.
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
	const slots, work, callers = 4, 2 * time.Millisecond, 16
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
	start := func(shed, limit bool) (*server, error) {
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
		if shed {
			cfg := interceptors.DefaultShedderConfig()
			cfg.Limit = slots
			sh, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
			if err != nil {
				return nil, err
			}
			opts = append(opts, grpc.UnaryInterceptor(sh.UnaryServerInterceptor()))
		}
		dopts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if limit {
			// The defaults but AIMD and no queue: the limit starts at 100
			// and finds the server's 4 from its ResourceExhausted answers.
			cfg := interceptors.DefaultLimiterConfig()
			cfg.Algorithm = interceptors.AIMD
			cfg.MaxQueued = 0
			lim, err := interceptors.NewLimiter(interceptors.WithLimiterConfig(cfg))
			if err != nil {
				return nil, err
			}
			dopts = append(dopts, grpc.WithUnaryInterceptor(lim.UnaryClientInterceptor()))
		}
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
	measure := func(shed, limit bool) func(context.Context) (sample, error) {
		return func(ctx context.Context) (sample, error) {
			s, err := start(shed, limit)
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
	sides := []side{
		{name: "no shedding", measure: measure(false, false)},
		{name: "Shedder (limit 4)", toolkit: true, measure: measure(true, false)},
		{name: "Shedder + client AIMD Limiter", toolkit: true, measure: measure(true, true)},
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	const title = "6. Overload: 4-slot server, 2 ms work, 16 callers, 5 ms deadlines"
	plain, shed, both := sides[0].name, sides[1].name, sides[2].name
	// The unloaded work time is a property of the server, measured on
	// every side's fresh one: capacity comes from its median over all
	// sides and rounds.
	var works []float64
	for _, n := range []string{plain, shed, both} {
		for _, smp := range res[n] {
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
	p99ok := func(n string) bool {
		return len(res.latencies(n)) > 0 && res.median(n, "p99") <= 2*res.median(n, "idle99")
	}
	return &result{
		rows: []row{
			{title, fmt.Sprintf("goodput (OK calls/s; capacity %s = 4 slots / %.2f ms measured work)", fmtRate(capacity), median(works)),
				goodput(plain),
				fmt.Sprintf("Shedder: %s; + client Limiter: %s", goodput(shed), goodput(both)),
				fmt.Sprintf("%s; %s", fmtX(ratio(res.median(shed, "goodput"), res.median(plain, "goodput"))), fmtX(ratio(res.median(both, "goodput"), res.median(plain, "goodput")))),
				"≥ 90% of capacity with shedding", verdict(share(shed) >= 90, fmt.Sprintf("Shedder %.0f%%", share(shed)))},
			{title, "admitted p99 (unloaded p99)", p99(plain),
				fmt.Sprintf("Shedder: %s; + client Limiter: %s", p99(shed), p99(both)),
				fmt.Sprintf("%s; %s unloaded", fmtX(p99x(shed)), fmtX(p99x(both))), "≤ 2× the unloaded p99",
				verdict(p99ok(shed) && p99ok(both), "")},
			{title, "time the 2 ms work took: one caller alone → under the overload",
				fmt.Sprintf("%.2f ms → %.2f ms", res.median(plain, "work"), res.median(plain, "loaded")),
				fmt.Sprintf("Shedder: %.2f ms → %.2f ms; + client Limiter: %.2f ms → %.2f ms",
					res.median(shed, "work"), res.median(shed, "loaded"), res.median(both, "work"), res.median(both, "loaded")),
				"—", "—", "—"},
			{title, "after the overload: unloaded calls OK (one caller)",
				fmt.Sprintf("%.1f%%", res.median(plain, "after")),
				fmt.Sprintf("Shedder: %.1f%%; + client Limiter: %.1f%%", res.median(shed, "after"), res.median(both, "after")),
				"—", "—", "—"},
		},
		dists: distsOf("overload (admitted calls)", res, sides),
	}, nil
}
