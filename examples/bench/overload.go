package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// The overload scenario's server and callers.
const (
	overloadSlots    = 4                    // calls the server works on at once
	overloadWorkTime = 2 * time.Millisecond // each call's work (timerWork)
	overloadDeadline = 5 * time.Millisecond // the callers' deadline
	overloadBackoff  = time.Millisecond     // a caller's wait after a failure
)

// overloadWork is what each call of an overload server does, and the
// scenario that runs it.
type overloadWork struct {
	name  string // in the child server's spec: "timer" or "cpu"
	title string // the scenario's title, which the table's rows start with
	label string // what a call does, in the rows' labels
	cpu   bool   // spin the CPU for cpuWorkRounds instead of waiting on a timer
	// the fixed limit's side, in-process and isolated: the server's slots,
	// or its CPUs (the two it shares with the callers, its own one)
	fixedInProcess, fixedIsolated int
}

// fixed is the fixed limit's side's limit in the mode.
func (w overloadWork) fixed(isolated bool) int {
	if isolated {
		return w.fixedIsolated
	}
	return w.fixedInProcess
}

var (
	// timerWork is the overload scenario's: 2 ms on a timer, as a call
	// waiting on a backend or a disk, in one of 4 slots.
	timerWork = overloadWork{"timer", "6. Overload", "2 ms work", false, overloadSlots, overloadSlots}
	// cpuWork is the overload-cpu scenario's: arithmetic, as a call that
	// computes its answer (about 0.6 ms here; the table shows the time
	// measured). The server's concurrency is then its CPUs', not its
	// slots': the fixed limit's side is sized to them, as docs/overload.md
	// says to size it.
	cpuWork = overloadWork{"cpu", "8. Overload, CPU-bound work", "CPU work", true, 2, 1}
)

// cpuWorkRounds is how many rounds of arithmetic cpuWork's call does.
const cpuWorkRounds = 400_000

// spin does rounds of arithmetic the compiler cannot drop.
func spin(rounds int, seed uint64) uint64 {
	x := seed
	for range rounds {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

// spun keeps spin's result alive.
var spun atomic.Uint64

// overloadStats is what an overload server reports about itself.
type overloadStats struct {
	busy, works int64 // nanoseconds the slots spent working; calls worked on
	inFlight    int64 // calls in the handler (waiting for a slot or working)
	limit       int64 // the Shedder's in-flight limit; 0 without a Shedder
	// calls the Shedder shed because their deadline was shorter than the
	// method's recent service time, and at its in-flight limit
	shedDeadline, shedLimit int64
	// requests holding one of the Shedder's slots (admitted by its tap,
	// perhaps not yet in the handler), and every shed so far
	shedInFlight, shedTotal int64
	// calls whose work ended before their deadline, by the server's clock;
	// the server process's CPU time (nanoseconds: user+system)
	inTime, cpu int64
}

// overloadTarget is an overload server, in this process or in a child.
type overloadTarget interface {
	addr() string
	stats() (overloadStats, error)
	stop()
}

// overloadServer is the overload scenario's server: overloadSlots slots,
// each call doing its overloadWork, behind the side's admission (kind).
type overloadServer struct {
	b        *backend
	shed     *interceptors.Shedder // nil for the sides without one
	inFlight atomic.Int64
	busy     atomic.Int64
	works    atomic.Int64
	inTime   atomic.Int64
}

// startLocalServer starts kind's server doing w's work in this process,
// the isolated mode's child or not.
func startLocalServer(kind string, w overloadWork, isolated bool) (*overloadServer, error) {
	s := &overloadServer{}
	cpu := make(chan struct{}, overloadSlots)
	handler := func(ctx context.Context) error {
		s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		cpu <- struct{}{} // wait for a slot, as a busy server does
		w0 := time.Now()
		if w.cpu {
			spun.Add(spin(cpuWorkRounds, uint64(w0.UnixNano()))) // the work, done whether or not the caller still waits
		} else {
			t := time.NewTimer(overloadWorkTime)
			<-t.C // the work, done whether or not the caller still waits
		}
		end := time.Now()
		s.busy.Add(int64(end.Sub(w0)))
		s.works.Add(1)
		if dl, ok := ctx.Deadline(); !ok || end.Before(dl) {
			s.inTime.Add(1) // in time by the server's clock: what its caller sees late was late on the way
		}
		<-cpu
		return nil
	}
	var opts []grpc.ServerOption
	switch kind {
	case "none":
	case "fixed", "adaptive":
		cfg := interceptors.DefaultShedderConfig()
		if kind == "fixed" {
			cfg.Limit = w.fixed(isolated)
		} else {
			cfg.Adaptive = true
		}
		sh, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
		if err != nil {
			return nil, err
		}
		s.shed = sh
		opts = append(opts, sh.ServerOptions()...)
	case "failsafe", "failsafe-tuned":
		opts = failsafeServerOptions(kind == "failsafe-tuned")
	default:
		return nil, fmt.Errorf("overload: unknown side %q", kind)
	}
	b, err := startBackend(nil, handler, opts...)
	if err != nil {
		return nil, err
	}
	s.b = b
	return s, nil
}

func (s *overloadServer) addr() string { return s.b.addr }

func (s *overloadServer) stats() (overloadStats, error) {
	st := overloadStats{busy: s.busy.Load(), works: s.works.Load(), inFlight: s.inFlight.Load(), inTime: s.inTime.Load(), cpu: int64(cpuTime())}
	if s.shed != nil {
		snap := s.shed.Snapshot()
		st.limit = int64(snap.Limit)
		st.shedDeadline, st.shedLimit = snap.Shed[interceptors.ReasonDeadline], snap.Shed[interceptors.ReasonLimit]
		st.shedInFlight = int64(snap.InFlight)
		for _, n := range snap.Shed {
			st.shedTotal += n
		}
	}
	return st, nil
}

func (s *overloadServer) stop() { s.b.stop() }

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
// Capacity is measured, not assumed: on the side without admission
// control, 8 callers with no deadline keep the 4 slots busy (a slot never
// waits for a request, and no call is worked on after its caller gave
// up), and what the server does then is the most it can do. The work is
// a 2 ms timer, and Go's timers fire late (the runtime sleeps in whole
// milliseconds), later still with four of them running at once than with
// one caller alone: the table shows the work's time both ways, and what
// 4 slots would do at the one-caller time. The shed requests' cost is not
// in the capacity (no request is shed while it is measured), so it counts
// against the Shedder.
//
// Every round starts fresh servers (no side inherits an earlier episode's
// state); one caller alone runs before the overload (the unloaded p99 and
// work time) and after it (does the server admit calls again once the
// overload is over?).
//
// Each side runs in two modes, in the same run. In-process, callers and
// server share this process and both cores, as they always did: the
// spinning callers delay the server's wake-ups, and that loss counts
// against the Shedder. Isolated, the server runs in a child process (this
// binary re-executed, see overload_isolated.go) pinned to one CPU with
// GOMAXPROCS 1 and the callers are pinned to the other, as in a fleet,
// where clients do not share the server's CPU; capacity is measured the
// same way, on the child.
func runOverload(ctx context.Context, e *env) (*result, error) {
	return runOverloadOf(ctx, e, timerWork)
}

// runOverloadCPU is runOverload with cpuWork: each call computes for
// about 0.6 ms instead of waiting 2 ms on a timer, so the server's CPU,
// not its 4 slots, is what it can do at once, and the admitted calls'
// goroutines compete with the connection's reader for it. The fixed
// limit's side is sized to the server's CPUs (cpuWork). On a core the
// handlers keep busy, the calls queue before the Shedder's interceptor
// (the tap admits a burst, and their goroutines run one after the
// other), where only the wait for their goroutines shows it: see
// docs/overload.md, *The adaptive limit on CPU-bound work*.
func runOverloadCPU(ctx context.Context, e *env) (*result, error) {
	return runOverloadOf(ctx, e, cpuWork)
}

// runOverloadOf runs the overload scenario with w's work.
func runOverloadOf(ctx context.Context, e *env, w overloadWork) (*result, error) {
	// isolated runs the same sides with the server in a child process (see
	// overload_isolated.go), or says why it cannot.
	clientCPU, serverCPU, whyNot := isolatedCPUs()
	// workTime starts a measurement: the function it returns reports the
	// mean time the work took since workTime was called.
	workTime := func(t overloadTarget) (func() (time.Duration, error), error) {
		s0, err := t.stats()
		if err != nil {
			return nil, err
		}
		return func() (time.Duration, error) {
			s1, err := t.stats()
			if err != nil {
				return 0, err
			}
			return time.Duration(s1.busy-s0.busy) / time.Duration(max(s1.works-s0.works, 1)), nil
		}, nil
	}
	start := func(kind string, isolated bool) (overloadTarget, *grpc.ClientConn, error) {
		var t overloadTarget
		var err error
		if isolated {
			t, err = startChildServer(kind, w, serverCPU)
		} else {
			t, err = startLocalServer(kind, w, false)
		}
		if err != nil {
			return nil, nil, err
		}
		cc, err := grpc.NewClient(t.addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.stop()
			return nil, nil, err
		}
		return t, cc, nil
	}
	// load runs n closed-loop callers for d, each call with deadline dl,
	// and returns the latencies of the calls that succeeded and how many
	// calls were made.
	load := func(ctx context.Context, cc *grpc.ClientConn, n int, d, dl time.Duration) (ok []time.Duration, total int, elapsed time.Duration, fails map[codes.Code]int) {
		fails = map[codes.Code]int{}
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
				myFails := map[codes.Code]int{}
				for ctx.Err() == nil && time.Now().Before(stopAt) {
					cctx, cancel := context.WithTimeout(ctx, dl)
					c0 := time.Now()
					err := unary(cctx, cc)
					lat := time.Since(c0)
					cancel()
					calls++
					if err == nil {
						mine = append(mine, lat)
						continue
					}
					myFails[status.Code(err)]++
					t := time.NewTimer(overloadBackoff) // the caller backs off after a failure
					<-t.C
				}
				mu.Lock()
				ok = append(ok, mine...)
				total += calls
				for c, k := range myFails {
					fails[c] += k
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		return ok, total, time.Since(t0), fails
	}
	// drain waits until the server is quiet after a run, so the next run
	// does not inherit it: no call in the handler, none holding a
	// Shedder's slot, and nothing worked on or shed between two polls 2 ms
	// apart (the overload's last requests, sent before its callers
	// stopped, may still be in the connection's buffers: until they are
	// read, the overload is not over).
	drain := func(t overloadTarget) error {
		limit := time.Now().Add(e.maxDrive)
		var prev overloadStats
		for i := 0; ; i++ {
			st, err := t.stats()
			if err != nil {
				return err
			}
			if i > 0 && st.inFlight == 0 && st.shedInFlight == 0 && st.works == prev.works && st.shedTotal == prev.shedTotal {
				return nil
			}
			if time.Now().After(limit) {
				return errors.New("server still busy after the run")
			}
			prev = st
			time.Sleep(2 * time.Millisecond) // polling the server for quiet, not synchronising with it
		}
	}
	// measure runs one overload episode on a fresh server: warm-up (the
	// connection, and the Shedder's service-time average), one caller
	// alone (unloaded p99 and work time), the overload, the drain of what
	// the server queued, and one caller alone again, to see whether the
	// server admits calls once the overload is over. Isolated, the callers
	// run pinned to their own CPU with GOMAXPROCS 1 for the episode.
	measure := func(kind string, callers int, isolated bool) func(context.Context) (sample, error) {
		return func(ctx context.Context) (smp sample, err error) {
			if isolated {
				restore, err := pinProcess(clientCPU)
				if err != nil {
					return sample{}, err
				}
				prev := runtime.GOMAXPROCS(1)
				defer func() { runtime.GOMAXPROCS(prev); restore() }()
			}
			t, cc, err := start(kind, isolated)
			if err != nil {
				return sample{}, err
			}
			defer func() { cc.Close(); t.stop() }()
			load(ctx, cc, 1, 50*time.Millisecond, overloadDeadline)
			since, err := workTime(t)
			if err != nil {
				return sample{}, err
			}
			idle, _, _, _ := load(ctx, cc, 1, e.unloadedFor, overloadDeadline)
			// A machine busy with other work (a -race test run beside other
			// packages' tests) can miss every 5 ms deadline for a while: a
			// few more tries before calling the server broken.
			for try := 1; len(idle) == 0 && try < 10 && ctx.Err() == nil; try++ {
				idle, _, _, _ = load(ctx, cc, 1, e.unloadedFor, overloadDeadline)
			}
			if len(idle) == 0 {
				return sample{}, errors.New("no call succeeded unloaded, in 10 tries")
			}
			unloadedWork, err := since()
			if err != nil {
				return sample{}, err
			}
			_, idle99 := percentiles(idle)
			// Without admission control, the server's capacity: twice as
			// many callers as slots and no deadline to miss, so a slot never
			// waits for a request; what it does is the most this server
			// can do, its timers firing as late as they do when all four
			// slots work (see capacityOf).
			var capacity, satWork float64
			if kind == "none" {
				if since, err = workTime(t); err != nil {
					return sample{}, err
				}
				sat, _, satElapsed, _ := load(ctx, cc, 2*overloadSlots, e.unloadedFor, time.Second)
				capacity = float64(len(sat)) / satElapsed.Seconds()
				w, err := since()
				if err != nil {
					return sample{}, err
				}
				satWork = float64(w) / float64(time.Millisecond)
				if err := drain(t); err != nil {
					return sample{}, err
				}
			}
			if since, err = workTime(t); err != nil {
				return sample{}, err
			}
			w0, err := t.stats()
			if err != nil {
				return sample{}, err
			}
			cpu0 := cpuTime()
			ok, total, elapsed, _ := load(ctx, cc, callers, e.overloadFor, overloadDeadline)
			callersCPU := cpuTime() - cpu0 // the server's too, in-process
			loadedWork, err := since()
			if err != nil {
				return sample{}, err
			}
			st, err := t.stats()
			if err != nil {
				return sample{}, err
			}
			if err := drain(t); err != nil {
				return sample{}, err
			}
			drained, err := t.stats()
			if err != nil {
				return sample{}, err
			}
			after, afterTotal, _, afterFails := load(ctx, cc, 1, e.unloadedFor, overloadDeadline)
			end, err := t.stats()
			if err != nil {
				return sample{}, err
			}
			m := map[string]float64{
				"goodput":    float64(len(ok)) / elapsed.Seconds(),
				"capacity":   capacity, // 0 but for the side without admission control
				"satwork":    satWork,
				"work":       float64(unloadedWork) / float64(time.Millisecond),
				"loaded":     float64(loadedWork) / float64(time.Millisecond),
				"okpct":      100 * float64(len(ok)) / float64(max(total, 1)),
				"idle99":     idle99,
				"after":      100 * float64(len(after)) / float64(max(afterTotal, 1)),
				"limit":      float64(st.limit), // the Shedder's limit at the overload's end
				"limitAfter": float64(end.limit),
				// calls the server worked on during the overload, per second,
				// and those of them it finished before their deadline
				"workrate": float64(st.works-w0.works) / elapsed.Seconds(),
				"intime":   float64(st.inTime-w0.inTime) / elapsed.Seconds(),
				// CPU used during the overload, % of one core: by this
				// process (the callers; in-process, the server too), and by
				// the server's (isolated: its child; in-process: the same)
				"callerscpu": 100 * float64(callersCPU) / float64(elapsed),
				"servercpu":  100 * float64(st.cpu-w0.cpu) / float64(elapsed),
			}
			for c, k := range afterFails {
				m["after "+c.String()] = float64(k)
			}
			m["after shed deadline"] = float64(end.shedDeadline - drained.shedDeadline)
			m["after shed limit"] = float64(end.shedLimit - drained.shedLimit)
			e.logf("overload %s, %d callers, isolated %v: goodput %.0f/s, server worked %.0f/s, limit at end %d; after: %d of %d OK, failures %v, shed for deadline %d, at the limit %d",
				kind, callers, isolated, m["goodput"], m["workrate"], st.limit, len(after), afterTotal, afterFails,
				end.shedDeadline-drained.shedDeadline, end.shedLimit-drained.shedLimit)
			if len(ok) > 0 {
				_, m["p99"] = percentiles(ok)
			}
			return sample{lat: ok, m: m}, nil
		}
	}
	kinds := func(isolated bool) []struct{ kind, name string } {
		return []struct{ kind, name string }{
			{"none", "no shedding"},
			{"fixed", fmt.Sprintf("Shedder (fixed %d)", w.fixed(isolated))},
			{"adaptive", "Shedder (adaptive)"},
			{"failsafe", "failsafe-go adaptive limiter"},
			{"failsafe-tuned", "failsafe-go (25 ms windows)"},
		}
	}
	loads := []struct {
		label   string
		callers int
		target  float64 // goodput, % of capacity
	}{{"4×", 16, 90}, {"10×", 40, 85}}
	modes := []struct {
		prefix   string // of the side names
		isolated bool
		title    string
	}{
		{"", false, fmt.Sprintf("%s, in-process (clients and server share both cores): 4-slot server, %s, 16 (4×) and 40 (10×) callers, 5 ms deadlines", w.title, w.label)},
		{"isolated ", true, fmt.Sprintf("%s, isolated (server in a child process on CPU %d, GOMAXPROCS 1; callers on CPU %d): same server, sides and load", w.title, serverCPU, clientCPU)},
	}
	if whyNot != "" {
		modes = modes[:1]
	}
	var sides []side
	for _, md := range modes {
		for _, l := range loads {
			for _, k := range kinds(md.isolated) {
				sides = append(sides, side{name: md.prefix + l.label + " " + k.name, toolkit: k.kind == "fixed" || k.kind == "adaptive",
					measure: measure(k.kind, l.callers, md.isolated)})
			}
		}
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	var rows []row
	for _, md := range modes {
		rows = append(rows, overloadRows(res, md.title, md.prefix, w, kinds(md.isolated), loads)...)
	}
	if whyNot != "" {
		rows = append(rows, row{w.title + ", isolated", "server in a child process on its own CPU", "—", "not run: " + whyNot, "—", "—", "—"})
	}
	// The CPU-bound twin draws no chart: its rows are the comparison.
	if w.cpu {
		return &result{rows: rows}, nil
	}
	// The chart shows three of the in-process 4× sides: no shedding and
	// the two Shedders (failsafe-go's defaults may admit no call at all,
	// and the chart keeps a fixed count of sides).
	chart := []side{sides[0], sides[1], sides[2]}
	return &result{rows: rows, dists: distsOf("overload (admitted calls)", res, chart)}, nil
}

// overloadRows are one mode's rows: goodput, admitted p99, the work's
// time and the calls OK after the overload, for each load.
func overloadRows(res measurements, title, prefix string, w overloadWork, kinds []struct{ kind, name string }, loads []struct {
	label   string
	callers int
	target  float64
}) []row {
	isolated := prefix != "" // the isolated mode's sides are "isolated …"
	fixedName := fmt.Sprintf("fixed %d", w.fixed(isolated))
	// Capacity is measured on the side without admission control, on
	// every round's fresh server of this mode: 8 callers, no deadline to
	// miss, so the 4 slots never wait for a request (the median over
	// rounds and loads). The unloaded work time, measured on every side's
	// server, is shown beside it: 4 slots / that time is what the slots
	// would do if their timers fired as on an idle server, but with four
	// timers running at once they fire later (the runtime sleeps in whole
	// milliseconds), and no admission can win that back.
	var works, caps, satWorks []float64
	for _, l := range loads {
		for _, k := range kinds {
			for _, smp := range res[prefix+l.label+" "+k.name] {
				works = append(works, smp.m["work"])
				if k.kind == "none" {
					caps, satWorks = append(caps, smp.m["capacity"]), append(satWorks, smp.m["satwork"])
				}
			}
		}
	}
	capacity := median(caps)
	capLabel := fmt.Sprintf("capacity %s measured: 8 callers, no deadline, no admission control, the 4 slots' work %.2f ms (one caller alone: %.2f ms, 4 slots / that = %s)",
		fmtRate(capacity), median(satWorks), median(works), fmtRate(overloadSlots/(median(works)/1000)))
	if w.cpu { // the slots share the CPU: 4 slots / the work's time says nothing
		capLabel = fmt.Sprintf("capacity %s measured: 8 callers, no deadline, no admission control, the work %.2f ms (one caller alone: %.2f ms)",
			fmtRate(capacity), median(satWorks), median(works))
	}
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
	// sum adds metric m of side n over all rounds.
	sum := func(n, m string) float64 {
		t := 0.0
		for _, smp := range res[n] {
			t += smp.m[m]
		}
		return t
	}
	// afterFails lists the failed calls after the overload by code, over
	// all rounds: a DeadlineExceeded there is a call the server admitted
	// that did not finish in 5 ms (every side has them on a loaded
	// machine), a ResourceExhausted a call it refused.
	afterFails := func(n string) string {
		var parts []string
		for _, c := range []codes.Code{codes.DeadlineExceeded, codes.ResourceExhausted, codes.Unavailable} {
			if k := sum(n, "after "+c.String()); k > 0 {
				parts = append(parts, fmt.Sprintf("%s %.0f", c, k))
			}
		}
		if len(parts) == 0 {
			return ""
		}
		return " (failed: " + strings.Join(parts, ", ") + ")"
	}
	// inTime says how many of the calls the server worked on it finished
	// before their deadline and how many of those came back OK in time,
	// and the CPU the server and the callers used: a call the server
	// finished in time that its caller saw late was late on the way: its
	// deadline ran at the caller before the server read it, and runs on
	// while the answer comes back, and the server sees neither.
	inTime := func(n string) string {
		cpu := fmt.Sprintf("server %.0f%%, callers %.0f%%", res.median(n, "servercpu"), res.median(n, "callerscpu"))
		if !isolated {
			cpu = fmt.Sprintf("server and callers together %.0f%%", res.median(n, "callerscpu"))
		}
		return fmt.Sprintf("%s → %s; %s", fmtRate(res.median(n, "intime")), fmtRate(res.median(n, "goodput")), cpu)
	}
	var rows []row
	for _, l := range loads {
		name := func(i int) string { return prefix + l.label + " " + kinds[i].name }
		plain, fx, ad, fs, ft := name(0), name(1), name(2), name(3), name(4)
		if res.median(ft, "goodput") > res.median(fs, "goodput") {
			fs, ft = ft, fs // compare with failsafe-go's better side
		}
		short := func(n string) string { return strings.TrimPrefix(n, prefix+l.label+" ") }
		rows = append(rows,
			row{title, fmt.Sprintf("%s goodput (OK calls/s; %s)", l.label, capLabel),
				goodput(plain),
				fmt.Sprintf(fixedName+": %s; adaptive: %s (limit at the end %.0f); %s: %s; %s: %s", goodput(fx), goodput(ad), res.median(ad, "limit"),
					short(fs), goodput(fs), short(ft), goodput(ft)),
				fmt.Sprintf("fixed %s, adaptive %s vs failsafe-go", fmtX(ratio(res.median(fx, "goodput"), res.median(fs, "goodput"))),
					fmtX(ratio(res.median(ad, "goodput"), res.median(fs, "goodput")))),
				fmt.Sprintf("≥ %.0f%% of capacity, ahead of failsafe-go", l.target),
				perSide(share(fx) >= l.target && res.median(fx, "goodput") >= res.median(fs, "goodput"), fmt.Sprintf("%.0f%%", share(fx)),
					share(ad) >= l.target && res.median(ad, "goodput") >= res.median(fs, "goodput"), fmt.Sprintf("%.0f%%", share(ad)))},
			row{title, l.label + " admitted p99 (unloaded p99)", p99(plain),
				fmt.Sprintf(fixedName+": %s; adaptive: %s; failsafe-go (better side): %s", p99(fx), p99(ad), p99(fs)),
				fmt.Sprintf("%s; %s; %s unloaded", fmtX(p99x(fx)), fmtX(p99x(ad)), fmtX(p99x(fs))), "≤ 2× the unloaded p99 (Shedder)",
				perSide(p99ok(fx), fmtX(p99x(fx)), p99ok(ad), fmtX(p99x(ad)))},
			row{title, l.label + " time the " + w.label + " took: one caller alone → under the overload; calls worked on per second under it",
				fmt.Sprintf("%.2f ms → %.2f ms; %s", res.median(plain, "work"), res.median(plain, "loaded"), fmtRate(res.median(plain, "workrate"))),
				fmt.Sprintf(fixedName+": %.2f → %.2f ms, %s; adaptive: %.2f → %.2f ms, %s; failsafe-go (better side): %.2f → %.2f ms, %s",
					res.median(fx, "work"), res.median(fx, "loaded"), fmtRate(res.median(fx, "workrate")),
					res.median(ad, "work"), res.median(ad, "loaded"), fmtRate(res.median(ad, "workrate")),
					res.median(fs, "work"), res.median(fs, "loaded"), fmtRate(res.median(fs, "workrate"))),
				"—", "—", "—"},
			row{title, l.label + " where the worked-on calls went: finished before their deadline by the server's clock → OK at the caller (calls/s); CPU during the overload, % of one core",
				inTime(plain), fmt.Sprintf(fixedName+": %s; adaptive: %s", inTime(fx), inTime(ad)), "—", "—", "—"},
			row{title, l.label + " after the overload: unloaded calls OK (one caller)",
				fmt.Sprintf("%.1f%%%s", res.median(plain, "after"), afterFails(plain)),
				fmt.Sprintf(fixedName+": %.1f%%%s; adaptive: %.1f%%%s (limit %.0f); failsafe-go (better side): %.1f%%%s", res.median(fx, "after"), afterFails(fx),
					res.median(ad, "after"), afterFails(ad), res.median(ad, "limitAfter"), res.median(fs, "after"), afterFails(fs)),
				"—", "100%", perSide(res.median(fx, "after") == 100, fmt.Sprintf("%.1f%%", res.median(fx, "after")),
					res.median(ad, "after") == 100, fmt.Sprintf("%.1f%%", res.median(ad, "after")))},
			row{title, l.label + " after the overload: unloaded calls refused (ResourceExhausted, all rounds)",
				fmt.Sprintf("%.0f", sum(plain, "after ResourceExhausted")),
				fmt.Sprintf(fixedName+": %.0f; adaptive: %.0f; failsafe-go (better side): %.0f", sum(fx, "after ResourceExhausted"),
					sum(ad, "after ResourceExhausted"), sum(fs, "after ResourceExhausted")),
				"—", "0 (Shedder)", verdict(sum(fx, "after ResourceExhausted") == 0 && sum(ad, "after ResourceExhausted") == 0, "")},
		)
	}
	return rows
}

// perSide is the verdict of a target both Shedder sides must meet, naming
// the side that missed it: "met", or "missed by adaptive: fixed 95%,
// adaptive 89%".
func perSide(fixedOK bool, fixed string, adaptiveOK bool, adaptive string) string {
	if fixedOK && adaptiveOK {
		return "met"
	}
	by := "both"
	switch {
	case fixedOK:
		by = "adaptive"
	case adaptiveOK:
		by = "fixed"
	}
	return fmt.Sprintf("missed by %s: fixed %s, adaptive %s", by, fixed, adaptive)
}
