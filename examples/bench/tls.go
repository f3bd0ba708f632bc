package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
)

// runTLS measures TLS handshakes on loopback, one connection per handshake
// (TCP connect, handshake through the transport credentials, one byte read
// so TLS 1.3 clients get their ticket, close):
//
//   - full vs resumed, for ECDSA P-256 and RSA-2048 under TLS 1.3 and 1.2,
//     with grpc's credentials.NewTLS plus tls.NewLRUClientSessionCache and
//     with the toolkit's credentials.NewTLS: the saving resumption brings,
//     and what the toolkit's credentials cost over grpc's;
//   - three backends behind one server name, each with its own ticket keys,
//     connections going to them at random: the standard cache keeps one
//     session per name, the toolkit's one per backend (resumption rate).
func runTLS(ctx context.Context, e *env) (*result, error) {
	res := &result{}
	const title = "4. TLS handshakes"
	versions := []struct {
		name string
		v    uint16
	}{{"TLS 1.3", tls.VersionTLS13}, {"TLS 1.2", tls.VersionTLS12}}
	for _, kt := range []keyType{ecdsaP256, rsa2048} {
		p, err := newPKI(kt)
		if err != nil {
			return nil, err
		}
		for _, ver := range versions {
			name := fmt.Sprintf("%s / %s", kt, ver.name)
			sub := *e
			sub.title = e.title + ", " + name
			r, dists, err := handshakeCost(ctx, &sub, p, ver.v, name)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			r.scenario = title
			res.rows = append(res.rows, r)
			res.dists = append(res.dists, dists...)
		}
	}
	p, err := newPKI(ecdsaP256)
	if err != nil {
		return nil, err
	}
	for _, ver := range versions {
		sub := *e
		sub.title = e.title + ", resumption rate " + ver.name
		r, err := resumptionRate(ctx, &sub, p, ver.v, ver.name)
		if err != nil {
			return nil, fmt.Errorf("resumption rate, %s: %w", ver.name, err)
		}
		r.scenario = title
		res.rows = append(res.rows, r)
	}
	return res, nil
}

func handshakeCost(ctx context.Context, e *env, p *pki, version uint16, name string) (row, []dist, error) {
	scfg, err := p.serverConfig()
	if err != nil {
		return row{}, nil, err
	}
	srv, err := startRawServer(scfg)
	if err != nil {
		return row{}, nil, err
	}
	defer srv.stop()

	type variant struct {
		name            string
		toolkit, resume bool
	}
	variants := []variant{
		{"grpc full", false, false}, {"grpc resumed", false, true},
		{"grpcreuse full", true, false}, {"grpcreuse resumed", true, true},
	}
	var sides []side
	for _, v := range variants {
		cfg := p.clientConfig(version)
		var creds grpccreds.TransportCredentials
		switch {
		case !v.resume:
			cfg.SessionTicketsDisabled = true
		case !v.toolkit:
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(16)
		}
		if v.toolkit {
			if creds, err = credentials.NewTLS(cfg); err != nil {
				return row{}, nil, err
			}
		} else {
			creds = grpccreds.NewTLS(cfg)
		}
		if _, err := rawHandshake(ctx, creds, srv.addr, "127.0.0.1"); err != nil { // warm the cache
			return row{}, nil, err
		}
		sides = append(sides, side{name: v.name, toolkit: v.toolkit, measure: func(ctx context.Context) (sample, error) {
			lat := make([]time.Duration, 0, e.handshakes)
			cpu0 := cpuTime()
			start := time.Now()
			deadline := start.Add(e.maxDrive)
			for range e.handshakes {
				if time.Now().After(deadline) {
					break
				}
				t0 := time.Now()
				resumed, err := rawHandshake(ctx, creds, srv.addr, "127.0.0.1")
				if err != nil {
					return sample{}, err
				}
				if resumed != v.resume {
					return sample{}, fmt.Errorf("%s: handshake resumed=%v", v.name, resumed)
				}
				lat = append(lat, time.Since(t0))
			}
			n := float64(len(lat))
			return sample{lat: lat, m: map[string]float64{
				"wall_us": float64(time.Since(start).Microseconds()) / n,
				"cpu_us":  float64((cpuTime() - cpu0).Microseconds()) / n,
			}}, nil
		}})
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return row{}, nil, err
	}
	cell := func(full, resumed string) (string, float64) {
		f, r := res.median(full, "wall_us"), res.median(resumed, "wall_us")
		fc, rc := res.median(full, "cpu_us"), res.median(resumed, "cpu_us")
		return fmt.Sprintf("%s → %s: wall %s, CPU %s", fmtUS(f), fmtUS(r), fmtX(ratio(f, r)), fmtX(ratio(fc, rc))), r
	}
	plain, rp := cell("grpc full", "grpc resumed")
	tk, rt := cell("grpcreuse full", "grpcreuse resumed")
	return row{
		measure: "handshake " + name + ": full → resumed (saving)",
		plain:   plain, toolkit: tk,
		ratio:  fmt.Sprintf("resumed %s grpc's time", fmtX(ratio(rt, rp))),
		target: "—", verdict: "—",
	}, distsOf("TLS "+name, res, sides), nil
}

// resumptionRate connects e.resumeConns times to three backends behind
// one server name, picked at random (the same seeded sequence for both
// caches), after one warm-up connection to each, with fresh credentials
// every round.
func resumptionRate(ctx context.Context, e *env, p *pki, version uint16, vname string) (row, error) {
	const name = "backend.test"
	var backends []*rawServer
	defer func() {
		for _, b := range backends {
			b.stop()
		}
	}()
	for range 3 {
		cfg, err := p.serverConfig(name) // its own ticket keys
		if err != nil {
			return row{}, err
		}
		b, err := startRawServer(cfg)
		if err != nil {
			return row{}, err
		}
		backends = append(backends, b)
	}
	measure := func(newCreds func() (grpccreds.TransportCredentials, error)) func(context.Context) (sample, error) {
		return func(ctx context.Context) (sample, error) {
			creds, err := newCreds()
			if err != nil {
				return sample{}, err
			}
			for _, b := range backends {
				if _, err := rawHandshake(ctx, creds, b.addr, name+":443"); err != nil {
					return sample{}, err
				}
			}
			rng := rand.New(rand.NewPCG(1, 2))
			resumed, n := 0, 0
			deadline := time.Now().Add(e.maxDrive)
			for range e.resumeConns {
				if time.Now().After(deadline) {
					break
				}
				ok, err := rawHandshake(ctx, creds, backends[rng.IntN(len(backends))].addr, name+":443")
				if err != nil {
					return sample{}, err
				}
				n++
				if ok {
					resumed++
				}
			}
			return sample{m: map[string]float64{"rate": 100 * float64(resumed) / float64(n)}}, nil
		}
	}
	sides := []side{
		{name: "standard LRU cache", measure: measure(func() (grpccreds.TransportCredentials, error) {
			cfg := p.clientConfig(version)
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
			return grpccreds.NewTLS(cfg), nil
		})},
		{name: "grpcreuse per-endpoint cache", toolkit: true, measure: measure(func() (grpccreds.TransportCredentials, error) {
			return credentials.NewTLS(p.clientConfig(version))
		})},
	}
	res, err := runRounds(ctx, e, sides)
	if err != nil {
		return row{}, err
	}
	std, ours := res.median(sides[0].name, "rate"), res.median(sides[1].name, "rate")
	return row{
		measure: fmt.Sprintf("resumption rate, 3 backends behind one name (%s, %d connections)", vname, e.resumeConns),
		plain:   fmt.Sprintf("%.1f%%", std), toolkit: fmt.Sprintf("%.1f%%", ours),
		ratio:  fmtX(ratio(ours, std)),
		target: "≥ 99% (standard cache: about a third)", verdict: verdict(ours >= 99, ""),
	}, nil
}

// rawServer is a loopback TLS server without gRPC on top: for every
// connection it runs grpc's server handshake, writes one byte (so TLS 1.3
// clients read their session ticket) and waits for the client to close.
type rawServer struct {
	addr string
	lis  net.Listener
	wg   sync.WaitGroup
}

func startRawServer(cfg *tls.Config) (*rawServer, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	creds := grpccreds.NewTLS(cfg)
	s := &rawServer{addr: lis.Addr().String(), lis: lis}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			raw, err := lis.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer raw.Close()
				_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
				conn, _, err := creds.ServerHandshake(raw)
				if err != nil {
					return
				}
				defer conn.Close()
				if _, err := conn.Write([]byte{1}); err != nil {
					return
				}
				var buf [64]byte
				for {
					if _, err := conn.Read(buf[:]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s, nil
}

func (s *rawServer) stop() {
	s.lis.Close()
	s.wg.Wait()
}

// rawHandshake dials addr, runs creds' client handshake for authority,
// reads the server's byte and closes; it reports whether the session
// resumed.
func rawHandshake(ctx context.Context, creds grpccreds.TransportCredentials, addr, authority string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, err
	}
	conn, ai, err := creds.ClientHandshake(ctx, authority, raw)
	if err != nil {
		raw.Close()
		return false, err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return false, err
	}
	ti, ok := credentials.GRPCTLSInfo(ai)
	return ok && ti.State.DidResume, nil
}
