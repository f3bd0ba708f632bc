package balancer

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	_ "google.golang.org/grpc/balancer/leastrequest" // registers least_request_experimental
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	estats "google.golang.org/grpc/experimental/stats"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// policies are compared side by side, on the same servers and load.
var policies = []struct{ name, config string }{
	{"pick_first", `{"pick_first":{}}`},
	{"round_robin", `{"round_robin":{}}`},
	{"least_request", `{"least_request_experimental":{"choiceCount":2}}`},
	{"grpcreuse", `{"` + Name + `":{"maxSubchannelsPerEndpoint":8,"targetStreamsPerSubchannel":64}}`},
}

func benchClient(b *testing.B, lbConfig string, addrs []string) *grpc.ClientConn {
	b.Helper()
	r := manual.NewBuilderWithScheme("bench")
	r.InitialState(resolver.State{Endpoints: endpoints(addrs...)})
	cc, err := grpc.NewClient("bench:///x", grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[`+lbConfig+`]}`))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.Close() })
	return cc
}

// drive makes n calls from `callers` goroutines and returns each call's
// latency and the number of failed calls.
func drive(cc grpc.ClientConnInterface, callers, n int) (lat []time.Duration, failed int64, elapsed time.Duration) {
	client := testpb.NewTestServiceClient(cc)
	lat = make([]time.Duration, n)
	var next, fails atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				t0 := time.Now()
				_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
				lat[i] = time.Since(t0)
				cancel()
				if err != nil {
					fails.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return lat, fails.Load(), time.Since(start)
}

func percentile(lat []time.Duration, p float64) time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func sleeper(d time.Duration) func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		time.Sleep(d) // simulated work
		return &testpb.SimpleResponse{}, nil
	}
}

// BenchmarkSaturation: one server allowing 100 streams per connection, a
// 2 ms handler, 1000 concurrent callers. b.N calls per policy, and a
// hand-made pool of 8 pick_first ClientConns used in turn.
func BenchmarkSaturation(b *testing.B) {
	srv := testutil.StartBackend(b, testutil.BackendOptions{
		ServerOptions: []grpc.ServerOption{grpc.MaxConcurrentStreams(100)},
		Unary:         sleeper(2 * time.Millisecond),
	})
	sides := append([]struct{ name, config string }{{"pool8", ""}}, policies...)
	for _, p := range sides {
		b.Run(p.name, func(b *testing.B) {
			accepts := srv.Listener.Accepts()
			var cc grpc.ClientConnInterface
			if p.config == "" {
				pool := &connPool{}
				for range 8 {
					pool.ccs = append(pool.ccs, benchClient(b, `{"pick_first":{}}`, []string{srv.Addr}))
				}
				cc = pool
			} else {
				cc = benchClient(b, p.config, []string{srv.Addr})
			}
			drive(cc, 1000, 5000) // warm-up: connect, scale, settle
			b.ResetTimer()
			lat, failed, elapsed := drive(cc, 1000, max(b.N, 1000))
			b.StopTimer()
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(failed), "failed")
			b.ReportMetric(float64(srv.Listener.Accepts()-accepts), "conns")
		})
	}
}

// connPool is the hand-made pool users build without the toolkit: several
// ClientConns to one target, used in turn.
type connPool struct {
	ccs  []*grpc.ClientConn
	next atomic.Uint32
}

func (p *connPool) get() *grpc.ClientConn { return p.ccs[p.next.Add(1)%uint32(len(p.ccs))] }

func (p *connPool) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return p.get().Invoke(ctx, method, args, reply, opts...)
}

func (p *connPool) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return p.get().NewStream(ctx, desc, method, opts...)
}

// BenchmarkSlowBackendPaced: three servers, one 20 ms slower, 32 callers
// offering the same 1000 calls/s to every policy (equal offered load).
// Target: our p99 ≤ 0.25× round_robin's.
func BenchmarkSlowBackendPaced(b *testing.B) {
	var addrs []string
	for i := range 3 {
		d := time.Millisecond
		if i == 0 {
			d += 20 * time.Millisecond
		}
		addrs = append(addrs, testutil.StartBackend(b, testutil.BackendOptions{Unary: sleeper(d)}).Addr)
	}
	for _, p := range policies[1:] {
		b.Run(p.name, func(b *testing.B) {
			cc := benchClient(b, p.config, addrs)
			drive(cc, 32, 500)
			b.ResetTimer()
			r := pacedDrive(cc, 32, 1000, 3*time.Second, 10*time.Second)
			b.StopTimer()
			b.ReportMetric(float64(percentile(r.lat, 0.50).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(r.lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(r.other+r.timedOut+r.shed), "failed")
		})
	}
}

// BenchmarkSlowBackend: three servers, one 20 ms slower, 32 callers.
func BenchmarkSlowBackend(b *testing.B) {
	var addrs []string
	var slow *testutil.Backend
	for i := range 3 {
		d := time.Millisecond
		if i == 0 {
			d += 20 * time.Millisecond
		}
		s := testutil.StartBackend(b, testutil.BackendOptions{Unary: sleeper(d)})
		if i == 0 {
			slow = s
		}
		addrs = append(addrs, s.Addr)
	}
	for _, p := range policies {
		b.Run(p.name, func(b *testing.B) {
			cc := benchClient(b, p.config, addrs)
			drive(cc, 32, 500)
			before := slow.Calls.Load()
			b.ResetTimer()
			lat, failed, elapsed := drive(cc, 32, max(b.N, 1000))
			b.StopTimer()
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
			b.ReportMetric(float64(percentile(lat, 0.50).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(100*float64(slow.Calls.Load()-before)/float64(len(lat)), "slow-%")
			b.ReportMetric(float64(failed), "failed")
		})
	}
}

// BenchmarkFailingBackend: three servers, one failing half its calls
// quickly with Unavailable, 32 callers. Reports the failed calls callers saw.
func BenchmarkFailingBackend(b *testing.B) {
	var addrs []string
	var n atomic.Int64
	for i := range 3 {
		s := testutil.StartBackend(b, testutil.BackendOptions{Unary: func(ctx context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if i == 0 && n.Add(1)%2 == 0 {
				return nil, status.Error(codes.Unavailable, "failing")
			}
			return sleeper(time.Millisecond)(ctx, r)
		}})
		addrs = append(addrs, s.Addr)
	}
	for _, p := range policies {
		b.Run(p.name, func(b *testing.B) {
			cc := benchClient(b, p.config, addrs)
			drive(cc, 32, 100) // connect
			b.ResetTimer()
			lat, failed, elapsed := drive(cc, 32, max(b.N, 1000))
			b.StopTimer()
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "calls/s")
			b.ReportMetric(100*float64(failed)/float64(len(lat)), "failed-%")
		})
	}
}

// BenchmarkPick: the cost of one pick and its done callback with 8 READY
// endpoints, ours and grpc's least_request picker, built on a fake
// ClientConn.
func BenchmarkPick(b *testing.B) {
	addrs := make([]string, 8)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.0.%d:1", i)
	}
	done := grpcbalancer.DoneInfo{BytesSent: true, BytesReceived: true}
	run := func(b *testing.B, p grpcbalancer.Picker) {
		info := grpcbalancer.PickInfo{FullMethodName: "/s/m", Ctx: context.Background()}
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r, err := p.Pick(info)
				if err != nil {
					b.Error(err)
					return
				}
				if r.Done != nil {
					r.Done(done)
				}
			}
		})
	}
	b.Run("grpcreuse", func(b *testing.B) {
		cc := &fakeCC{}
		l := (&builder{name: Name}).Build(cc, grpcbalancer.BuildOptions{})
		defer l.Close()
		cfg, _ := ParseConfig([]byte(`{}`))
		if err := l.UpdateClientConnState(grpcbalancer.ClientConnState{ResolverState: resolver.State{Endpoints: endpoints(addrs...)}, BalancerConfig: cfg}); err != nil {
			b.Fatal(err)
		}
		for _, s := range cc.live() {
			s.set(connectivity.Connecting, nil)
			s.set(connectivity.Ready, nil)
		}
		run(b, cc.last().Picker)
	})
	b.Run("least_request", func(b *testing.B) {
		bb := grpcbalancer.Get("least_request_experimental")
		cc := &fakeCC{}
		l := bb.Build(&benchCC{fakeCC: cc}, grpcbalancer.BuildOptions{})
		defer l.Close()
		cfg, err := bb.(grpcbalancer.ConfigParser).ParseConfig([]byte(`{"choiceCount":2}`))
		if err != nil {
			b.Fatal(err)
		}
		if err := l.UpdateClientConnState(grpcbalancer.ClientConnState{ResolverState: resolver.State{Endpoints: endpoints(addrs...)}, BalancerConfig: cfg}); err != nil {
			b.Fatal(err)
		}
		for _, s := range cc.live() {
			s.set(connectivity.Connecting, nil)
			s.set(connectivity.Ready, nil)
		}
		// pick_first children report READY once their health listener does.
		testutil.Eventually(b, 5*time.Second, func() bool {
			seen := map[grpcbalancer.SubConn]bool{}
			for range 400 {
				r, err := cc.last().Picker.Pick(grpcbalancer.PickInfo{})
				if err != nil {
					return false
				}
				seen[r.SubConn] = true
				if r.Done != nil {
					r.Done(done)
				}
			}
			return len(seen) == len(addrs)
		}, "least_request READY on all endpoints")
		run(b, cc.last().Picker)
	})
}

// benchCC adds what pick_first children need to fakeCC.
type benchCC struct {
	*fakeCC
}

func (c *benchCC) MetricsRecorder() estats.MetricsRecorder { return nopRecorder{} }

type nopRecorder struct{ estats.MetricsRecorder }

func (nopRecorder) RecordInt64Count(*estats.Int64CountHandle, int64, ...string)             {}
func (nopRecorder) RecordFloat64Count(*estats.Float64CountHandle, float64, ...string)       {}
func (nopRecorder) RecordInt64Histo(*estats.Int64HistoHandle, int64, ...string)             {}
func (nopRecorder) RecordFloat64Histo(*estats.Float64HistoHandle, float64, ...string)       {}
func (nopRecorder) RecordInt64Gauge(*estats.Int64GaugeHandle, int64, ...string)             {}
func (nopRecorder) RecordInt64UpDownCount(*estats.Int64UpDownCountHandle, int64, ...string) {}
