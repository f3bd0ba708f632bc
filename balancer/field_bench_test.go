package balancer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// The field suite: scenarios nobody designed the policy for, each run side
// by side with grpc's round_robin (and least_request_experimental where it
// matters) in one process, on the same servers and the same offered load.
// Run it with
//
//	go test -run '^$' -bench 'BenchmarkField' -benchtime 1x ./balancer/
//
// and read the ratios between sides of one run, not absolute numbers.

var fieldPolicies = []struct{ name, policy, cfg string }{
	{"round_robin", "round_robin", `{}`},
	{"least_request", "least_request_experimental", `{"choiceCount":2}`},
	{"grpcreuse", Name, `{}`},
}

// pacedResult is what an open-loop run saw.
type pacedResult struct {
	ok, shed, timedOut, other int64
	lat                       []time.Duration // of OK calls
	elapsed                   time.Duration
	firstErr                  error
}

// pacedDrive offers rate calls/s for d from `callers` goroutines, each on
// its own regular schedule (open loop: a slow or refused call does not
// slow the offer down unless every caller is busy), each call with
// timeout.
func pacedDrive(cc grpc.ClientConnInterface, callers int, rate float64, d, timeout time.Duration) *pacedResult {
	return offer(cc, callers, rate, d, timeout, false)
}

// offer is pacedDrive with, if poisson, exponentially distributed gaps
// between each caller's calls (Poisson arrivals, as independent clients
// make) instead of a regular schedule.
func offer(cc grpc.ClientConnInterface, callers int, rate float64, d, timeout time.Duration, poisson bool) *pacedResult {
	client := testpb.NewTestServiceClient(cc)
	interval := time.Duration(float64(callers) / rate * float64(time.Second))
	var res pacedResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := start.Add(time.Duration(i) * interval / time.Duration(callers))
			var lat []time.Duration
			for {
				if w := time.Until(next); w > 0 {
					time.Sleep(w) // the offered schedule, not synchronisation
				}
				if time.Now().After(stop) {
					break
				}
				if poisson {
					next = next.Add(time.Duration(rand.ExpFloat64() * float64(interval)))
				} else {
					next = next.Add(interval)
				}
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				t0 := time.Now()
				_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
				el := time.Since(t0)
				cancel()
				switch status.Code(err) {
				case codes.OK:
					atomic.AddInt64(&res.ok, 1)
					lat = append(lat, el)
				case codes.ResourceExhausted:
					atomic.AddInt64(&res.shed, 1)
				case codes.DeadlineExceeded:
					atomic.AddInt64(&res.timedOut, 1)
				default:
					atomic.AddInt64(&res.other, 1)
					mu.Lock()
					if res.firstErr == nil {
						res.firstErr = err
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return &res
}

func (r *pacedResult) total() int64 { return r.ok + r.shed + r.timedOut + r.other }

// BenchmarkFieldShedding: 3 or 6 backends that each work on at most 4
// calls at once (10 ms each) and shed the rest with RESOURCE_EXHAUSTED,
// offered 0.8×, 1.0× and 1.5× their measured capacity, with regular and
// with Poisson arrivals. Reports goodput as
// a share of capacity, the shed share, and (ours) ejections: the targets
// are goodput ≥ round_robin's, shed share ≤ round_robin's, 0 ejections.
func BenchmarkFieldShedding(b *testing.B) {
	const limit, work = 4, 10 * time.Millisecond
	for _, arrivals := range []string{"regular", "poisson"} {
		for _, n := range []int{3, 6} {
			for _, load := range []float64{0.8, 1.0, 1.5} {
				b.Run(fmt.Sprintf("arrivals=%s/backends=%d/load=%.1f", arrivals, n, load), func(b *testing.B) {
					for _, p := range fieldPolicies {
						b.Run(p.name, func(b *testing.B) {
							var ss []*fieldServer
							var addrs []string
							for range n {
								s := startFieldServer(b, "", work, limit)
								ss, addrs = append(ss, s), append(addrs, s.addr)
							}
							obs := newRecorder()
							cc, _ := dialSC(b, lbSC(p.policy, p.cfg), obs, endpoints(addrs...))
							// Measure the work's real time (timers fire late) with
							// one caller, then derive capacity from it.
							warm := pacedDrive(cc, 1, 200, 300*time.Millisecond, time.Second)
							if warm.other != 0 {
								b.Fatalf("warm-up: %v", warm.firstErr)
							}
							var busy, calls int64
							for _, s := range ss {
								busy, calls = busy+s.busy.Load(), calls+s.calls.Load()
							}
							meanWork := time.Duration(busy / max(calls, 1))
							capacity := float64(n*limit) / meanWork.Seconds()
							b.ResetTimer()
							r := offer(cc, 8*n*limit, load*capacity, 2*time.Second, time.Second, arrivals == "poisson")
							b.StopTimer()
							if r.other != 0 {
								b.Errorf("%d calls failed with other errors; first: %v", r.other, r.firstErr)
							}
							ej := 0
							for _, a := range addrs {
								ej += len(obs.ejections(a))
							}
							b.ReportMetric(100*float64(r.ok)/r.elapsed.Seconds()/capacity, "goodput-%cap")
							b.ReportMetric(100*float64(r.shed)/float64(max(r.total(), 1)), "shed-%")
							b.ReportMetric(float64(ej), "ejections")
							b.ReportMetric(capacity, "capacity/s")
						})
					}
				})
			}
		}
	}
}

// BenchmarkFieldBlackhole: three backends, one behind a proxy that turns
// into a black hole (bytes vanish, connections stay open, no keepalive);
// 16 callers offer 1000 calls/s for 3 s with 200 ms deadlines. Reports the
// calls that timed out (round_robin sends a third of them into the hole).
func BenchmarkFieldBlackhole(b *testing.B) {
	for _, p := range fieldPolicies {
		b.Run(p.name, func(b *testing.B) {
			var ss []*fieldServer
			for range 3 {
				ss = append(ss, startFieldServer(b, "", time.Millisecond, 0))
			}
			proxy := testutil.StartProxy(b, ss[0].addr)
			cc, _ := dialSC(b, lbSC(p.policy, p.cfg), nil, endpoints(proxy.Addr, ss[1].addr, ss[2].addr))
			if r := pacedDrive(cc, 16, 1000, 300*time.Millisecond, time.Second); r.other+r.timedOut != 0 {
				b.Fatalf("warm-up: %v", r.firstErr)
			}
			proxy.Blackhole(true)
			b.ResetTimer()
			r := pacedDrive(cc, 16, 1000, 3*time.Second, 200*time.Millisecond)
			b.StopTimer()
			b.ReportMetric(float64(r.timedOut), "timed-out")
			b.ReportMetric(float64(r.other), "other-failed")
			b.ReportMetric(float64(r.ok), "ok")
		})
	}
}

// BenchmarkFieldHungFirst: one endpoint {127.0.0.1 that accepts TCP but
// never speaks HTTP/2, a live address}; reports how long the first call
// takes to succeed (happy eyeballs: about 250 ms).
func BenchmarkFieldHungFirst(b *testing.B) {
	for _, p := range fieldPolicies {
		b.Run(p.name, func(b *testing.B) {
			hung := hungListenerTB(b, "127.0.0.1:0")
			live := startFieldServer(b, liveAddrTB(), 0, 0)
			ep := resolver.Endpoint{Addresses: []resolver.Address{{Addr: hung}, {Addr: live.addr}}}
			b.ResetTimer()
			t0 := time.Now()
			cc, _ := dialSC(b, lbSC(p.policy, p.cfg), nil, []resolver.Endpoint{ep})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true))
			el := time.Since(t0)
			b.StopTimer()
			if err != nil {
				b.Fatalf("first call: %v", err)
			}
			b.ReportMetric(float64(el.Microseconds())/1000, "first-call-ms")
		})
	}
}

// BenchmarkFieldHealth: healthCheckConfig set, 1 of 3 backends
// NOT_SERVING; 16 callers offer 2000 calls/s for 1 s. Reports the share
// of calls the NOT_SERVING backend got, then whether the channel went
// TRANSIENT_FAILURE once all three are NOT_SERVING (1 = yes).
func BenchmarkFieldHealth(b *testing.B) {
	for _, p := range fieldPolicies {
		b.Run(p.name, func(b *testing.B) {
			var ss []*fieldServer
			var addrs []string
			for range 3 {
				s := startFieldServer(b, "", time.Millisecond, 0)
				ss, addrs = append(ss, s), append(addrs, s.addr)
			}
			ss[0].setServing(false)
			cc, _ := dialSC(b, healthSC(p.policy, p.cfg), nil, endpoints(addrs...))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			r := pacedDrive(cc, 16, 2000, time.Second, time.Second)
			b.StopTimer()
			b.ReportMetric(100*float64(ss[0].calls.Load())/float64(max(r.total(), 1)), "to-not-serving-%")
			ss[1].setServing(false)
			ss[2].setServing(false)
			tf := 0.0
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				if cc.GetState() == connectivity.TransientFailure {
					tf = 1
					break
				}
				time.Sleep(5 * time.Millisecond) // polling against a deadline
			}
			b.ReportMetric(tf, "all-not-serving-is-TF")
		})
	}
}

// BenchmarkFieldChurn: four backends, the resolver changes the endpoint
// set every 200 ms while 16 callers offer 2000 calls/s for 2 s. Reports
// failed calls (want 0).
func BenchmarkFieldChurn(b *testing.B) {
	for _, p := range fieldPolicies {
		b.Run(p.name, func(b *testing.B) {
			var addrs []string
			for range 4 {
				addrs = append(addrs, startFieldServer(b, "", time.Millisecond, 0).addr)
			}
			cc, r := dialSC(b, lbSC(p.policy, p.cfg), nil, endpoints(addrs[0], addrs[1]))
			if res := pacedDrive(cc, 16, 2000, 200*time.Millisecond, time.Second); res.other != 0 {
				b.Fatalf("warm-up: %v", res.firstErr)
			}
			sets := [][]int{{1, 2}, {2, 3}, {3}, {0, 1, 2, 3}, {0}, {0, 2}, {1}, {1, 3}, {0, 1}}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, set := range sets {
					var as []string
					for _, i := range set {
						as = append(as, addrs[i])
					}
					r.UpdateState(resolver.State{Endpoints: endpoints(as...)})
					time.Sleep(200 * time.Millisecond) // the churn's pace
				}
			}()
			b.ResetTimer()
			res := pacedDrive(cc, 16, 2000, 2*time.Second, 5*time.Second)
			b.StopTimer()
			<-done
			b.ReportMetric(float64(res.other+res.timedOut), "failed")
			b.ReportMetric(float64(res.ok), "ok")
		})
	}
}
