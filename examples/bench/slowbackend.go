package main

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/balancer/leastrequest" // registers least_request_experimental
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
)

// runSlowBackend: three backends behind one target (a resolver listing
// their addresses), one of them 20 ms slower than the others' 1 ms, and 32
// callers. Sides: round_robin and least_request_experimental on plain
// grpc-go, and the toolkit's balancer through the Factory.
func runSlowBackend(ctx context.Context, e *env) (*result, error) {
	// rate is the offered load of the latency measurement, the same for
	// every side and below what round_robin sustains with a slow backend.
	const fast, extra, callers, rate = time.Millisecond, 20 * time.Millisecond, 32, 3000.0
	var backends []*backend
	defer func() {
		for _, b := range backends {
			b.stop()
		}
	}()
	var addrs []string
	for i := range 3 {
		d := fast
		if i == 0 {
			d += extra
		}
		b, err := startBackend(nil, sleeper(d))
		if err != nil {
			return nil, err
		}
		backends = append(backends, b)
		addrs = append(addrs, b.addr)
	}
	slow := backends[0]
	target := listTarget(addrs...)
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())

	plain := func(lb string) (*grpc.ClientConn, error) {
		return grpc.NewClient(target, creds, grpc.WithResolvers(listBuilder{}), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[`+lb+`]}`))
	}
	rr, err := plain(`{"round_robin":{}}`)
	if err != nil {
		return nil, err
	}
	defer rr.Close()
	lr, err := plain(`{"least_request_experimental":{"choiceCount":2}}`)
	if err != nil {
		return nil, err
	}
	defer lr.Close()
	f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithResolvers(listBuilder{}),
		clientconn.WithServiceConfig(`{"loadBalancingConfig":[{"`+balancer.Name+`":{"maxSubchannelsPerEndpoint":8,"targetStreamsPerSubchannel":64}}]}`))
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

	clients := []struct {
		name    string
		toolkit bool
		cc      grpc.ClientConnInterface
	}{
		{"round_robin", false, rr},
		{"least_request_experimental", false, lr},
		{"grpcreuse_least_loaded (Factory)", true, tk},
	}
	var sides []side
	for _, c := range clients {
		call := func(ctx context.Context) error { return unary(ctx, c.cc) }
		if _, _, err := drive(ctx, callers, e.slowWarm, e.maxDrive, e.callTimeout, call); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", c.name, err)
		}
		sides = append(sides, side{name: c.name, toolkit: c.toolkit, measure: func(ctx context.Context) (sample, error) {
			// Latency and routing at the same offered load for every side...
			s0 := slow.calls.Load()
			lat, _, err := drivePaced(ctx, callers, e.slowCalls, rate, e.maxDrive, e.callTimeout, call)
			if err != nil {
				return sample{}, err
			}
			share := 100 * float64(slow.calls.Load()-s0) / float64(len(lat))
			p50, p99 := percentiles(lat)
			// ...and throughput with the 32 callers calling as fast as they can.
			done, elapsed, err := drive(ctx, callers, e.slowCalls, e.maxDrive, e.callTimeout, call)
			if err != nil {
				return sample{}, err
			}
			return sample{lat: lat, m: map[string]float64{"p50": p50, "p99": p99, "slow": share,
				"tput": float64(len(done)) / elapsed.Seconds()}}, nil
		}})
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	title := "3. Slow backend: one of three +20 ms, 32 callers"
	paced := fmt.Sprintf("latency p50 / p99 at %s offered", fmtRate(rate))
	rrN, lrN, tkN := clients[0].name, clients[1].name, clients[2].name
	p99 := func(n string) float64 { return res.median(n, "p99") }
	share := func(n string) float64 { return res.median(n, "slow") }
	why := ""
	if p99(rrN) <= 20 || p99(lrN) <= 20 {
		why = "baselines' p99 not above 20 ms in this run"
	}
	p99Verdict := verdict(p99(tkN) <= 5, "")
	if why != "" {
		p99Verdict += " (" + why + ")"
	}
	p5099 := func(n string) string {
		return fmt.Sprintf("%s / %s", fmtMS(res.median(n, "p50")), fmtMS(p99(n)))
	}
	return &result{
		rows: []row{
			{title, paced,
				fmt.Sprintf("round_robin %s; least_request %s", p5099(rrN), p5099(lrN)), p5099(tkN),
				fmt.Sprintf("p99 %s least_request's", fmtX(ratio(p99(tkN), p99(lrN)))),
				"p99 ≤ 5 ms (while round_robin and least_request sit above 20 ms)", p99Verdict},
			{title, "share of calls sent to the slow backend",
				fmt.Sprintf("round_robin %.1f%%; least_request %.1f%%", share(rrN), share(lrN)),
				fmt.Sprintf("%.2f%%", share(tkN)), "—", "< 1%", verdict(share(tkN) < 1, "")},
			{title, "throughput (callers calling as fast as they can)",
				fmt.Sprintf("round_robin %s; least_request %s", fmtRate(res.median(rrN, "tput")), fmtRate(res.median(lrN, "tput"))),
				fmtRate(res.median(tkN, "tput")),
				fmt.Sprintf("%s least_request", fmtX(ratio(res.median(tkN, "tput"), res.median(lrN, "tput")))), "—", "—"},
		},
		dists: distsOf("slow backend", res, sides),
	}, nil
}
