package main

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
)

// saturationConfig is the toolkit's balancer as the saturation scenario
// uses it: one connection per endpoint up front, another whenever the READY
// ones average more than 64 calls in flight, up to 8.
const saturationConfig = `{"loadBalancingConfig":[{"` + balancer.Name +
	`":{"subchannelsPerEndpoint":1,"maxSubchannelsPerEndpoint":8,"targetStreamsPerSubchannel":64}}]}`

// runSaturation: one server allowing 100 concurrent streams per connection,
// a 20 ms handler, 1000 callers. One HTTP/2 connection caps throughput at
// 100 streams / 20 ms = 5000 calls/s. Sides: pick_first (one connection),
// a hand-made pool of 8 ClientConns picked round-robin, and the toolkit's
// balancer through the Factory, which opens more connections to the one
// address as load grows.
func runSaturation(ctx context.Context, e *env) (*result, error) {
	const handler, poolSize = 20 * time.Millisecond, 8
	srv, err := startBackend(nil, sleeper(handler), grpc.MaxConcurrentStreams(100))
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())

	// pick_first: grpc-go's default policy, one connection.
	pf, err := grpc.NewClient(srv.addr, creds)
	if err != nil {
		return nil, err
	}
	defer pf.Close()

	// A pool of 8 ClientConns to the same address, round-robin.
	pool := make([]*grpc.ClientConn, poolSize)
	for i := range pool {
		if pool[i], err = grpc.NewClient(srv.addr, creds); err != nil {
			return nil, err
		}
		defer pool[i].Close()
	}
	var rr atomic.Uint64

	f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithServiceConfig(saturationConfig))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sctx, cancel := context.WithTimeout(ctx, e.setupDeadline)
	defer cancel()
	tk, err := f.Get(sctx, srv.addr, clientconn.WithWarmUp())
	if err != nil {
		return nil, err
	}
	defer tk.Close()

	type variant struct {
		name    string
		toolkit bool
		call    func(context.Context) error
	}
	variants := []variant{
		{"pick_first", false, func(ctx context.Context) error { return unary(ctx, pf) }},
		{"8 ClientConns, round-robin", false, func(ctx context.Context) error {
			return unary(ctx, pool[rr.Add(1)%poolSize])
		}},
		{"grpcreuse_least_loaded (Factory)", true, func(ctx context.Context) error { return unary(ctx, tk) }},
	}
	conns := map[string]int64{}
	var sides []side
	for _, v := range variants {
		// Warm up once: connect, and let the toolkit scale up.
		a0 := srv.lis.accepts.Load()
		if _, _, err := drive(ctx, e.satCallers, e.satWarm, e.maxDrive, e.callTimeout, v.call); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", v.name, err)
		}
		conns[v.name] = srv.lis.accepts.Load() - a0
		sides = append(sides, side{name: v.name, toolkit: v.toolkit, measure: func(ctx context.Context) (sample, error) {
			cpu0 := cpuTime()
			lat, elapsed, err := drive(ctx, e.satCallers, e.satCalls, e.maxDrive, e.callTimeout, v.call)
			if err != nil {
				return sample{}, err
			}
			cpu := cpuTime() - cpu0
			tput := float64(len(lat)) / elapsed.Seconds()
			p50, p99 := percentiles(lat)
			return sample{lat: lat, m: map[string]float64{"tput": tput, "p50": p50, "p99": p99,
				"cpu_us": float64(cpu.Microseconds()) / float64(len(lat))}}, nil
		}})
	}
	// The toolkit's connections may have grown after its warm-up.
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	conns[variants[2].name] = srv.lis.accepts.Load() - conns[variants[0].name] - conns[variants[1].name]

	title := fmt.Sprintf("2. Saturation: MaxConcurrentStreams 100, 20 ms handler, %d callers", e.satCallers)
	pfN, poolN, tkN := variants[0].name, variants[1].name, variants[2].name
	tpPF, tpPool, tpTK := res.median(pfN, "tput"), res.median(poolN, "tput"), res.median(tkN, "tput")
	vsPF, vsPool := ratio(tpTK, tpPF), ratio(tpTK, tpPool)
	var why []string
	if vsPF < 4 {
		why = append(why, fmt.Sprintf("%.2f× pick_first", vsPF))
	}
	if vsPool < 0.95 {
		why = append(why, fmt.Sprintf("%.2f× the pool", vsPool))
	}
	lat := func(n string) string {
		return fmt.Sprintf("%s / %s", fmtMS(res.median(n, "p50")), fmtMS(res.median(n, "p99")))
	}
	return &result{
		rows: []row{
			{title, "throughput",
				fmt.Sprintf("pick_first %s; 8-pool %s", fmtRate(tpPF), fmtRate(tpPool)), fmtRate(tpTK),
				fmt.Sprintf("%s pick_first; %s 8-pool", fmtX(vsPF), fmtX(vsPool)),
				"≥ 4× pick_first; no worse than the 8-pool (within 5% noise)", verdict(len(why) == 0, strings.Join(why, ", "))},
			{title, "latency p50 / p99",
				fmt.Sprintf("pick_first %s; 8-pool %s", lat(pfN), lat(poolN)), lat(tkN),
				fmt.Sprintf("p99 %s pick_first's", fmtX(ratio(res.median(tkN, "p99"), res.median(pfN, "p99")))), "—", "—"},
			{title, "connections to the server; CPU per call",
				fmt.Sprintf("pick_first %d, %s; 8-pool %d, %s", conns[pfN], fmtUS(res.median(pfN, "cpu_us")), conns[poolN], fmtUS(res.median(poolN, "cpu_us"))),
				fmt.Sprintf("%d, %s", conns[tkN], fmtUS(res.median(tkN, "cpu_us"))), "—", "—", "—"},
		},
		dists: distsOf("saturation", res, sides),
	}, nil
}
