package credentials_test

import (
	"crypto/tls"
	"testing"
	"time"

	grpccreds "google.golang.org/grpc/credentials"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// BenchmarkResumptionAcrossReplicas measures a client meeting replicas it
// has never connected to: three replicas of backend.test at three
// loopback addresses share one ticket key; each iteration starts a client
// with a session from replica 0 only (made outside the measurement) and
// connects once to replica 1 and once to replica 2 (TCP connect, TLS
// handshake, one byte read, close), for ECDSA P-256 and RSA-2048 server
// certificates under TLS 1.2 and 1.3. Variants, in one run:
//
//   - full: NewTLS with session tickets disabled (the baseline);
//   - per_address: NewTLS as by default, sessions offered only to the
//     address that issued them (0% resumed: today's behaviour);
//   - across_addresses: NewTLS with WithResumptionAcrossAddresses;
//   - grpc_lru: plain grpc-go credentials with tls.NewLRUClientSessionCache,
//     keyed by server name only (it resumes here, but also offers one
//     backend's ticket to every other one when they do not share keys, see
//     TestThreeBackendsBehindOneName).
//
// Metrics: resumed-% of the measured handshakes, wall-ns/handshake and
// cpu-ns/handshake (process CPU, client and server), and full/x-wall and
// full/x-cpu, the saving against the full variant measured just before.
func BenchmarkResumptionAcrossReplicas(b *testing.B) {
	for _, kt := range []testutil.KeyType{testutil.ECDSAP256, testutil.RSA2048} {
		pki := testutil.NewPKI(b, kt)
		b.Run(kt.String(), func(b *testing.B) {
			for _, tv := range tlsVersions {
				b.Run(tv.name, func(b *testing.B) {
					benchmarkAcrossReplicas(b, pki, tv.v)
				})
			}
		})
	}
}

func benchmarkAcrossReplicas(b *testing.B, pki *testutil.PKI, version uint16) {
	{
		{
			key := newTicketKey(b)
			addrs := make([]string, 3)
			for i := range addrs {
				cfg := serverConfig(b, pki, nil, "backend.test")
				cfg.SetSessionTicketKeys([][32]byte{key})
				addrs[i] = testutil.StartTLSServer(b, cfg).Addr
			}
			newCreds := func(kind string) grpccreds.TransportCredentials {
				cfg := clientConfig(pki, version)
				var opts []credentials.TLSOption
				switch kind {
				case "full":
					cfg.SessionTicketsDisabled = true
				case "across_addresses":
					opts = append(opts, credentials.WithResumptionAcrossAddresses())
				case "grpc_lru":
					cfg.ClientSessionCache = tls.NewLRUClientSessionCache(16)
					return grpccreds.NewTLS(cfg)
				}
				c, err := credentials.NewTLS(cfg, opts...)
				if err != nil {
					b.Fatal(err)
				}
				return c
			}
			type result struct{ wall, cpu float64 }
			var full result
			for _, kind := range []string{"full", "per_address", "across_addresses", "grpc_lru"} {
				b.Run(kind, func(b *testing.B) {
					var (
						wall, cpu time.Duration
						resumed   int
					)
					for range b.N {
						creds := newCreds(kind)
						if _, err := rawHandshake(creds, addrs[0], "backend.test:443"); err != nil {
							b.Fatal(err)
						}
						cpu0, start := cpuTime(b), time.Now()
						for _, addr := range addrs[1:] {
							ok, err := rawHandshake(creds, addr, "backend.test:443")
							if err != nil {
								b.Fatal(err)
							}
							if ok {
								resumed++
							}
						}
						wall += time.Since(start)
						cpu += cpuTime(b) - cpu0
					}
					n := float64(2 * b.N)
					r := result{wall: float64(wall.Nanoseconds()) / n, cpu: float64(cpu.Nanoseconds()) / n}
					b.ReportMetric(100*float64(resumed)/n, "resumed-%")
					b.ReportMetric(r.wall, "wall-ns/handshake")
					b.ReportMetric(r.cpu, "cpu-ns/handshake")
					if kind == "full" {
						full = r
					} else if full.wall > 0 {
						b.ReportMetric(full.wall/r.wall, "full/x-wall")
						b.ReportMetric(full.cpu/r.cpu, "full/x-cpu")
					}
				})
			}
		}
	}
}
