package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// ejectionCounter is an observer that counts the balancer's ejections.
type ejectionCounter struct {
	telemetry.Nop
	n atomic.Int64
}

func (c *ejectionCounter) EndpointEjected(string, string, time.Duration) { c.n.Add(1) }

// runShedding: three backends, each working on at most 4 calls at once
// (a 10 ms timer each) and refusing the rest at once with
// RESOURCE_EXHAUSTED, as a server with a load shedder does. Open-loop
// callers offer 0.8×, 1.0× and 1.5× the backends' capacity, measured from
// the work's real time (Go's timers fire late). Sides: round_robin on plain
// grpc-go and the toolkit's balancer through the Factory, on the same
// backends. Back-pressure must move load, never eject: the toolkit's
// goodput must be at least round_robin's and its shed share no higher,
// with no ejection. Both are read within 3 points, the noise of one run
// on a shared machine.
func runShedding(ctx context.Context, e *env) (*result, error) {
	const backends, slots, work = 3, 4, 10 * time.Millisecond
	type server struct {
		b                   *backend
		inFlight, busy, ops atomic.Int64
	}
	var servers []*server
	defer func() {
		for _, s := range servers {
			s.b.stop()
		}
	}()
	var addrs []string
	for range backends {
		s := &server{}
		handler := func(context.Context) error {
			if s.inFlight.Add(1) > slots {
				s.inFlight.Add(-1)
				return status.Error(codes.ResourceExhausted, "shedding: at the in-flight limit")
			}
			defer s.inFlight.Add(-1)
			t0 := time.Now()
			t := time.NewTimer(work)
			<-t.C // the work
			s.busy.Add(int64(time.Since(t0)))
			s.ops.Add(1)
			return nil
		}
		b, err := startBackend(nil, handler)
		if err != nil {
			return nil, err
		}
		s.b = b
		servers = append(servers, s)
		addrs = append(addrs, b.addr)
	}
	target := listTarget(addrs...)
	rr, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(listBuilder{}),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if err != nil {
		return nil, err
	}
	defer rr.Close()
	ejections := &ejectionCounter{}
	f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithResolvers(listBuilder{}), clientconn.WithObserver(ejections),
		clientconn.WithServiceConfig(`{"loadBalancingConfig":[{"`+balancer.Name+`":{}}]}`))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sctx, cancel := context.WithTimeout(ctx, e.setupDeadline)
	defer cancel()
	tk, err := f.Get(sctx, target, clientconn.WithWarmUp())
	if err != nil {
		return nil, err
	}
	defer tk.Close()

	// The work's real time, with one caller: capacity = slots / time.
	var busy0, ops0 int64
	for _, s := range servers {
		busy0, ops0 = busy0+s.busy.Load(), ops0+s.ops.Load()
	}
	if _, _, err := drive(ctx, 1, 50, e.maxDrive, e.callTimeout, func(ctx context.Context) error { return unary(ctx, rr) }); err != nil {
		return nil, fmt.Errorf("measuring the work time: %w", err)
	}
	var busy, ops int64
	for _, s := range servers {
		busy, ops = busy+s.busy.Load(), ops+s.ops.Load()
	}
	workTime := time.Duration((busy - busy0) / max(ops-ops0, 1))
	capacity := float64(backends*slots) / workTime.Seconds()

	loads := []float64{0.8, 1.0, 1.5}
	clients := []struct {
		name    string
		toolkit bool
		cc      grpc.ClientConnInterface
	}{
		{"round_robin", false, rr},
		{"grpcreuse_least_loaded (Factory)", true, tk},
	}
	dur := 2 * e.overloadFor
	var sides []side
	for _, c := range clients {
		// The servers shed by design; a shed warm-up call is back-pressure,
		// not a broken setup (8 callers can land 5 on one 4-slot server).
		warm := func(ctx context.Context) error {
			if err := unary(ctx, c.cc); status.Code(err) != codes.ResourceExhausted {
				return err
			}
			return nil
		}
		if _, _, err := drive(ctx, 8, 100, e.maxDrive, e.callTimeout, warm); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", c.name, err)
		}
		sides = append(sides, side{name: c.name, toolkit: c.toolkit, measure: func(ctx context.Context) (sample, error) {
			m := map[string]float64{}
			for _, load := range loads {
				ok, shed, other, elapsed, firstErr := offerOpenLoop(ctx, 8*backends*slots, load*capacity, dur, e.callTimeout, c.cc)
				if other > 0 {
					return sample{}, fmt.Errorf("%d calls failed with other errors than back-pressure; first: %w", other, firstErr)
				}
				m[fmt.Sprintf("goodput%.1f", load)] = 100 * float64(ok) / elapsed.Seconds() / capacity
				m[fmt.Sprintf("shed%.1f", load)] = 100 * float64(shed) / float64(max(ok+shed, 1))
			}
			return sample{m: m}, nil
		}})
	}
	ej0 := ejections.n.Load()
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	ej := ejections.n.Load() - ej0

	title := fmt.Sprintf("7. Shedding backends: %d backends, in-flight limit %d, %v work (%v measured), capacity %s", backends, slots, work, workTime.Round(10*time.Microsecond), fmtRate(capacity))
	rrN, tkN := clients[0].name, clients[1].name
	var rows []row
	for _, load := range loads {
		g, s := fmt.Sprintf("goodput%.1f", load), fmt.Sprintf("shed%.1f", load)
		gRR, gTK, sRR, sTK := res.median(rrN, g), res.median(tkN, g), res.median(rrN, s), res.median(tkN, s)
		var why []string
		if gTK < gRR-3 {
			why = append(why, fmt.Sprintf("goodput %.1f points below", gRR-gTK))
		}
		if sTK > sRR+3 {
			why = append(why, fmt.Sprintf("shed share %.1f points above", sTK-sRR))
		}
		if ej != 0 {
			why = append(why, fmt.Sprintf("%d ejections", ej))
		}
		rows = append(rows, row{title, fmt.Sprintf("goodput (of capacity) / shed share at %.1f× capacity", load),
			fmt.Sprintf("round_robin %.1f%% / %.1f%%", gRR, sRR), fmt.Sprintf("%.1f%% / %.1f%%, %d ejections", gTK, sTK, ej),
			fmt.Sprintf("goodput %s round_robin's", fmtX(ratio(gTK, gRR))),
			"goodput ≥ round_robin's, shed share ≤ round_robin's (within 3 points), 0 ejections",
			verdict(len(why) == 0, strings.Join(why, ", "))})
	}
	return &result{rows: rows}, nil
}

// offerOpenLoop offers rate calls/s for d from `callers` goroutines, each
// on its own regular schedule, so that a refused call does not lower the
// offer. It counts calls answered, shed (RESOURCE_EXHAUSTED) and failed
// otherwise.
func offerOpenLoop(ctx context.Context, callers int, rate float64, d, timeout time.Duration, cc grpc.ClientConnInterface) (ok, shed, other int64, elapsed time.Duration, firstErr error) {
	interval := time.Duration(float64(callers) / rate * float64(time.Second))
	var nOK, nShed, nOther atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := start.Add(time.Duration(i) * interval / time.Duration(callers))
			for ctx.Err() == nil {
				if w := time.Until(next); w > 0 {
					t := time.NewTimer(w)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
						return
					}
				}
				if time.Now().After(stop) {
					return
				}
				next = next.Add(interval)
				cctx, cancel := context.WithTimeout(ctx, timeout)
				err := unary(cctx, cc)
				cancel()
				switch status.Code(err) {
				case codes.OK:
					nOK.Add(1)
				case codes.ResourceExhausted:
					nShed.Add(1)
				default:
					nOther.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	return nOK.Load(), nShed.Load(), nOther.Load(), time.Since(start), firstErr
}
