package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/clientconn"
)

// runChurn: 8 services of one process each call the same 3 TLS backends.
// Plain: every service makes its own grpc.NewClient per backend, as
// services do on their own. Toolkit: one Factory (new for every wave, so
// its own 3 handshakes are counted) hands every service a shared handle.
// A wave starts the 8 services at once; each makes churnCalls unary calls
// to every backend and closes its clients; the wave ends when every client
// (and the Factory) is closed. The backends count handshakes.
func runChurn(ctx context.Context, e *env) (*result, error) {
	const services = 8
	p, err := newPKI(ecdsaP256)
	if err != nil {
		return nil, err
	}
	hs := &handshakeCounter{}
	var backends []*backend
	defer func() {
		for _, b := range backends {
			b.stop()
		}
	}()
	for range 3 {
		cfg, err := p.serverConfig()
		if err != nil {
			return nil, err
		}
		cfg.VerifyConnection = hs.verify
		b, err := startBackend(cfg, nil)
		if err != nil {
			return nil, err
		}
		backends = append(backends, b)
	}
	clientTLS := p.clientConfig(0)
	accepts := func() (n int64) {
		for _, b := range backends {
			n += b.lis.accepts.Load()
		}
		return n
	}

	// wave runs the services; dial gives a service its client for a target.
	wave := func(ctx context.Context, dial func(string) (grpc.ClientConnInterface, func(), error)) ([]time.Duration, error) {
		var (
			mu   sync.Mutex
			lat  []time.Duration
			errs []error
			wg   sync.WaitGroup
		)
		for range services {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				var closers []func()
				defer func() {
					for _, c := range closers {
						c()
					}
				}()
				for _, b := range backends {
					cc, closeFn, err := dial(b.addr)
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					closers = append(closers, closeFn)
					for range e.churnCalls {
						cctx, cancel := context.WithTimeout(ctx, e.callTimeout)
						t0 := time.Now()
						err := unary(cctx, cc)
						cancel()
						if err != nil {
							mu.Lock()
							errs = append(errs, err)
							mu.Unlock()
							return
						}
						mine = append(mine, time.Since(t0))
					}
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return lat, errors.Join(errs...)
	}

	// measure runs churnWaves waves, each through a fresh set of clients
	// made by newWave (which returns the dial function and the wave's
	// final cleanup).
	measure := func(newWave func() (func(string) (grpc.ClientConnInterface, func(), error), func())) func(context.Context) (sample, error) {
		return func(ctx context.Context) (sample, error) {
			h0, a0, cpu0 := hs.total(), accepts(), cpuTime()
			var lat []time.Duration
			start := time.Now()
			for range e.churnWaves {
				dial, finish := newWave()
				l, err := wave(ctx, dial)
				finish()
				if err != nil {
					return sample{}, err
				}
				lat = append(lat, l...)
			}
			wall := time.Since(start)
			cpu := cpuTime() - cpu0
			waves := float64(e.churnWaves)
			return sample{lat: lat, m: map[string]float64{
				"wall_ms":    ms(wall) / waves,
				"handshakes": float64(hs.total()-h0) / waves,
				"conns":      float64(accepts()-a0) / waves,
				"cpu_us":     float64(cpu.Microseconds()) / float64(len(lat)),
			}}, nil
		}
	}
	plainCreds := credentials.NewTLS(clientTLS)
	sides := []side{
		{name: "grpc.NewClient per service", measure: measure(func() (func(string) (grpc.ClientConnInterface, func(), error), func()) {
			return func(addr string) (grpc.ClientConnInterface, func(), error) {
				cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(plainCreds))
				if err != nil {
					return nil, nil, err
				}
				return cc, func() { cc.Close() }, nil
			}, func() {}
		})},
		{name: "one Factory", toolkit: true, measure: measure(func() (func(string) (grpc.ClientConnInterface, func(), error), func()) {
			f, err := clientconn.New(clientconn.WithTLS(clientTLS))
			return func(addr string) (grpc.ClientConnInterface, func(), error) {
					if err != nil {
						return nil, nil, err
					}
					c, err := f.Get(ctx, addr)
					if err != nil {
						return nil, nil, err
					}
					return c, func() { c.Close() }, nil
				}, func() {
					if f != nil {
						f.Close()
					}
				}
		})},
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return nil, err
	}
	pn, tn := sides[0].name, sides[1].name
	title := fmt.Sprintf("1. Churn: %d services × 3 TLS backends × %d calls", services, e.churnCalls)
	wallP, wallT := res.median(pn, "wall_ms"), res.median(tn, "wall_ms")
	hsP, hsT := res.median(pn, "handshakes"), res.median(tn, "handshakes")
	cpuP, cpuT := res.median(pn, "cpu_us"), res.median(tn, "cpu_us")
	speed := ratio(wallP, wallT)
	fewer := ratio(hsP, hsT)
	return &result{
		rows: []row{
			{title, "wall time per wave (all services, clients closed)", fmtMS(wallP), fmtMS(wallT),
				fmtX(speed) + " faster", "≥ 1.7× faster", verdict(speed >= 1.7, "")},
			{title, "TLS handshakes per wave (counted by the backends)",
				fmt.Sprintf("%.0f (%.0f connections)", hsP, res.median(pn, "conns")),
				fmt.Sprintf("%.0f (%.0f connections)", hsT, res.median(tn, "conns")),
				fmtX(fewer) + " fewer", "≥ 8× fewer", verdict(fewer >= 8, "")},
			{title, "CPU per call (process: clients and servers)", fmtUS(cpuP), fmtUS(cpuT),
				fmtX(ratio(cpuP, cpuT)) + " less", "—", "—"},
		},
		dists: distsOf("churn (per call, first includes connect)", res, sides),
	}, nil
}
