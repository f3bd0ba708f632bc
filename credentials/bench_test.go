package credentials_test

import (
	"crypto/tls"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// cpuTime returns the user+system CPU time this process used so far
// (client and server sides of a loopback benchmark together).
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandshake measures one loopback connection (TCP connect, TLS
// handshake, one byte read, close) with a full and with a resumed
// handshake, for ECDSA P-256 and RSA-2048 certificates under TLS 1.3 and
// 1.2. "full" and "resumed" use this package's NewTLS; "full_grpc" and
// "resumed_grpc" use grpc's credentials.NewTLS with tls.NewLRUClientSessionCache,
// so the toolkit's overhead shows side by side. cpu-ns/op is the process's
// CPU time (client and server) per connection; the resumed variants add
// full/resumed-wall and full/resumed-cpu, the ratios to the full handshake
// measured just before them in the same run.
func BenchmarkHandshake(b *testing.B) {
	for _, kt := range []testutil.KeyType{testutil.ECDSAP256, testutil.RSA2048} {
		pki := testutil.NewPKI(b, kt)
		b.Run(kt.String(), func(b *testing.B) {
			for _, tv := range tlsVersions {
				b.Run(tv.name, func(b *testing.B) {
					benchmarkHandshakes(b, pki, tv.v)
				})
			}
		})
	}
}

func benchmarkHandshakes(b *testing.B, pki *testutil.PKI, version uint16) {
	srv := testutil.StartTLSServer(b, serverConfig(b, pki, nil))
	newCreds := func(kind string) grpccreds.TransportCredentials {
		cfg := clientConfig(pki, version)
		switch kind {
		case "full":
			cfg.SessionTicketsDisabled = true
		case "full_grpc":
			cfg.SessionTicketsDisabled = true
			return grpccreds.NewTLS(cfg)
		case "resumed_grpc":
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(16)
			return grpccreds.NewTLS(cfg)
		}
		c, err := credentials.NewTLS(cfg)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	type result struct{ wall, cpu float64 }
	results := map[string]result{}
	for _, kind := range []string{"full", "resumed", "full_grpc", "resumed_grpc"} {
		b.Run(kind, func(b *testing.B) {
			creds := newCreds(kind)
			wantResumed := kind == "resumed" || kind == "resumed_grpc"
			if _, err := rawHandshake(creds, srv.Addr, "127.0.0.1"); err != nil { // warm the cache
				b.Fatal(err)
			}
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				res, err := rawHandshake(creds, srv.Addr, "127.0.0.1")
				if err != nil {
					b.Fatal(err)
				}
				if res != wantResumed {
					b.Fatalf("%s handshake resumed=%v", kind, res)
				}
			}
			wall := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			b.StopTimer()
			cpu := float64((cpuTime(b) - cpu0).Nanoseconds()) / float64(b.N)
			b.ReportMetric(cpu, "cpu-ns/op")
			results[kind] = result{wall: wall, cpu: cpu}
			// The resumed variants also report how many times cheaper they
			// are than the full handshake measured just before them.
			full := map[string]string{"resumed": "full", "resumed_grpc": "full_grpc"}[kind]
			if f := results[full]; f.wall > 0 {
				b.ReportMetric(f.wall/wall, "full/resumed-wall")
				b.ReportMetric(f.cpu/cpu, "full/resumed-cpu")
			}
		})
	}
	if f, r := results["full"], results["resumed"]; f.wall > 0 && r.wall > 0 {
		g, gr := results["full_grpc"], results["resumed_grpc"]
		b.Logf("full/resumed: wall %.2fx, cpu %.2fx (grpcreuse); wall %.2fx, cpu %.2fx (plain grpc)",
			f.wall/r.wall, f.cpu/r.cpu, g.wall/gr.wall, g.cpu/gr.cpu)
	}
}

// threeBackends starts three servers for one name, each with its own
// ticket keys.
func threeBackends(tb testing.TB, pki *testutil.PKI) []*testutil.TLSServer {
	tb.Helper()
	s := make([]*testutil.TLSServer, 3)
	for i := range s {
		s[i] = testutil.StartTLSServer(tb, serverConfig(tb, pki, nil, "backend.test"))
	}
	return s
}

// resumptionRun connects n times to backends picked at random (seeded, so
// both caches see the same sequence), after one warm-up connection to each
// backend in order. It returns how many of the n resumed, and how many
// would resume with a cache holding only the last session per server name.
func resumptionRun(tb testing.TB, creds grpccreds.TransportCredentials, backends []*testutil.TLSServer, n int) (resumed, lastNameOnly int) {
	tb.Helper()
	for _, s := range backends {
		if _, err := rawHandshake(creds, s.Addr, "backend.test:443"); err != nil {
			tb.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	prev := len(backends) - 1
	for range n {
		i := rng.IntN(len(backends))
		ok, err := rawHandshake(creds, backends[i].Addr, "backend.test:443")
		if err != nil {
			tb.Fatal(err)
		}
		if ok {
			resumed++
		}
		if i == prev {
			lastNameOnly++
		}
		prev = i
	}
	return resumed, lastNameOnly
}

// With three backends behind one server name, NewTLS resumes every
// connection after the first to each backend; the standard cache resumes
// exactly when the previous connection went to the same backend (about a
// third). Both counts are asserted exactly, client and server side.
func TestResumptionRateThreeBackends(t *testing.T) {
	const n = 60
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			serverResumed := func(bs []*testutil.TLSServer) int {
				sum := 0
				for _, s := range bs {
					r, _ := s.Counts()
					sum += r
				}
				return sum
			}
			std := clientConfig(pki, tv.v)
			std.ClientSessionCache = tls.NewLRUClientSessionCache(64)
			bs := threeBackends(t, pki)
			got, want := resumptionRun(t, grpccreds.NewTLS(std), bs, n)
			if got != want || serverResumed(bs) != want {
				t.Errorf("standard cache: %d of %d resumed (servers saw %d); want exactly %d", got, n, serverResumed(bs), want)
			}
			t.Logf("standard cache: %d of %d resumed (%.0f%%)", got, n, 100*float64(got)/n)

			ours, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			bs = threeBackends(t, pki)
			got, _ = resumptionRun(t, ours, bs, n)
			if got != n || serverResumed(bs) != n {
				t.Errorf("NewTLS: %d of %d resumed (servers saw %d); want all", got, n, serverResumed(bs))
			}
		})
	}
}

// BenchmarkResumptionRate reports the share of resumed handshakes
// (resumed-%) with three backends behind one name, picked at random, after
// one warm-up connection per backend.
func BenchmarkResumptionRate(b *testing.B) {
	pki := testutil.NewPKI(b, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		b.Run(tv.name, func(b *testing.B) {
			for _, kind := range []string{"stdlru", "grpcreuse"} {
				b.Run(kind, func(b *testing.B) {
					var creds grpccreds.TransportCredentials
					if kind == "stdlru" {
						cfg := clientConfig(pki, tv.v)
						cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
						creds = grpccreds.NewTLS(cfg)
					} else {
						c, err := credentials.NewTLS(clientConfig(pki, tv.v))
						if err != nil {
							b.Fatal(err)
						}
						creds = c
					}
					bs := threeBackends(b, pki)
					b.ResetTimer()
					resumed, _ := resumptionRun(b, creds, bs, b.N)
					b.ReportMetric(100*float64(resumed)/float64(b.N), "resumed-%")
				})
			}
		})
	}
}
