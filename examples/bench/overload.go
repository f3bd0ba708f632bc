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

// runOverload: a server that can work on 4 calls at once, 2 ms each (a
// capacity of 2000 calls/s), offered 4× that by 16 closed-loop callers
// whose deadline is 5 ms and who back off 1 ms after a failure. Without
// shedding the server queues every call and works on it even after its
// caller gave up, so goodput collapses; with the toolkit's Shedder (an
// in-flight limit of 4) the excess is refused at once. Every round starts
// fresh servers (no side inherits an earlier episode's state); one caller
// alone runs before the overload (the unloaded p99) and after it (does the
// server admit calls again once the overload is over?).
func runOverload(ctx context.Context, e *env) (*result, error) {
	const slots, work, callers = 4, 2 * time.Millisecond, 16
	const deadline, backoff = 5 * time.Millisecond, time.Millisecond
	capacity := float64(slots) / work.Seconds()

	type server struct {
		b        *backend
		cc       *grpc.ClientConn
		inFlight atomic.Int64
	}
	start := func(shed bool) (*server, error) {
		s := &server{}
		cpu := make(chan struct{}, slots)
		handler := func(context.Context) error {
			s.inFlight.Add(1)
			defer s.inFlight.Add(-1)
			cpu <- struct{}{} // wait for a slot, as a busy server does
			t := time.NewTimer(work)
			<-t.C // the work, done whether or not the caller still waits
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
		b, err := startBackend(nil, handler, opts...)
		if err != nil {
			return nil, err
		}
		s.b = b
		if s.cc, err = grpc.NewClient(b.addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
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
	// alone (unloaded p99), the overload, the drain of what the server
	// queued, and one caller alone again, to see whether the server
	// admits calls once the overload is over.
	measure := func(shed bool) func(context.Context) (sample, error) {
		return func(ctx context.Context) (sample, error) {
			s, err := start(shed)
			if err != nil {
				return sample{}, err
			}
			defer func() { s.cc.Close(); s.b.stop() }()
			load(ctx, s, 1, 50*time.Millisecond)
			idle, _, _ := load(ctx, s, 1, e.unloadedFor)
			if len(idle) == 0 {
				return sample{}, errors.New("no call succeeded unloaded")
			}
			_, idle99 := percentiles(idle)
			ok, total, elapsed := load(ctx, s, callers, e.overloadFor)
			if err := drain(s); err != nil {
				return sample{}, err
			}
			after, afterTotal, _ := load(ctx, s, 1, e.unloadedFor)
			m := map[string]float64{
				"goodput": float64(len(ok)) / elapsed.Seconds(),
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
		{name: "no shedding", measure: measure(false)},
		{name: "Shedder (limit 4)", toolkit: true, measure: measure(true)},
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	const title = "6. Overload: 4-slot server, 2 ms work, 16 callers, 5 ms deadlines"
	pn, tn := sides[0].name, sides[1].name
	gP, gT := res.median(pn, "goodput"), res.median(tn, "goodput")
	p99P, p99T := res.median(pn, "p99"), res.median(tn, "p99")
	idleP, idleT := res.median(pn, "idle99"), res.median(tn, "idle99")
	share := 100 * gT / capacity
	p99cell := func(p99, idle float64, n string) string {
		if len(res.latencies(n)) == 0 {
			return fmt.Sprintf("no call admitted (unloaded %s)", fmtMS(idle))
		}
		return fmt.Sprintf("%s (unloaded %s)", fmtMS(p99), fmtMS(idle))
	}
	return &result{
		rows: []row{
			{title, fmt.Sprintf("goodput (OK calls/s; capacity %s)", fmtRate(capacity)),
				fmt.Sprintf("%s (%.1f%% of capacity, %.1f%% of calls OK)", fmtRate(gP), 100*gP/capacity, res.median(pn, "okpct")),
				fmt.Sprintf("%s (%.1f%% of capacity, %.1f%% of calls OK)", fmtRate(gT), share, res.median(tn, "okpct")),
				fmtX(ratio(gT, gP)), "≥ 90% of capacity with shedding", verdict(share >= 90, fmt.Sprintf("%.0f%%", share))},
			{title, "admitted p99 (unloaded p99)", p99cell(p99P, idleP, pn), p99cell(p99T, idleT, tn),
				fmt.Sprintf("%s unloaded", fmtX(ratio(p99T, idleT))), "≤ 2× the unloaded p99",
				verdict(p99T > 0 && p99T <= 2*idleT, "")},
			{title, "after the overload: unloaded calls OK (one caller)",
				fmt.Sprintf("%.1f%%", res.median(pn, "after")), fmt.Sprintf("%.1f%%", res.median(tn, "after")),
				"—", "—", "—"},
		},
		dists: distsOf("overload (admitted calls)", res, sides),
	}, nil
}
