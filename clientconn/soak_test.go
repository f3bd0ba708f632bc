package clientconn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// soakServiceConfig is the README's recommended setup: the grpcreuse
// balancer, retries for idempotent calls, a breaker and a limiter.
const soakServiceConfig = `{
  "loadBalancingConfig": [{"` + balancer.Name + `": {"subchannelsPerEndpoint": 2,
    "ejection": {"consecutiveFailures": 5, "baseEjectionTime": "2s"}}}],
  "methodConfig": [{"name": [{"service": "grpc.testing.TestService"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]}}],
  "grpcreuse": {"methodConfig": [{"name": [{}],
    "circuitBreaker": {"consecutiveFailures": 20, "openTimeout": "1s"},
    "concurrencyLimit": {"limit": 64, "maxQueued": 64, "maxWait": "0.5s"}}]}
}`

// soakTally counts how calls ended, by kind and code.
type soakTally struct {
	issued atomic.Int64
	mu     sync.Mutex
	ended  map[string]map[codes.Code]int
	sample map[codes.Code]error
}

func (s *soakTally) start() { s.issued.Add(1) }

func (s *soakTally) end(kind string, err error) {
	code := status.Code(err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended[kind] == nil {
		s.ended[kind] = map[codes.Code]int{}
	}
	s.ended[kind][code]++
	if err != nil && s.sample[code] == nil {
		s.sample[code] = err
	}
}

// summary returns the calls that ended and the failures by code.
func (s *soakTally) summary() (ended int, failures map[codes.Code]int, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	failures = map[codes.Code]int{}
	var parts []string
	kinds := make([]string, 0, len(s.ended))
	for k := range s.ended {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		n, failed := 0, map[codes.Code]int{}
		for c, m := range s.ended[k] {
			n += m
			if c != codes.OK {
				failed[c] += m
				failures[c] += m
			}
		}
		ended += n
		parts = append(parts, fmt.Sprintf("%s %d (failed %v)", k, n, failed))
	}
	return ended, failures, strings.Join(parts, ", ")
}

func soakHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestSoak runs mixed unary and streaming traffic through a Factory with
// TLS, the grpcreuse policy and balancer over 3 backends behind fault
// proxies, injecting a fault every 3 seconds, for as long as
// GRPCREUSE_SOAK says (for example GRPCREUSE_SOAK=2m). Every call must
// end with OK or a code the faults explain, and goroutines must return
// near their baseline.
func TestSoak(t *testing.T) {
	env := os.Getenv("GRPCREUSE_SOAK")
	if env == "" {
		t.Skip("set GRPCREUSE_SOAK to a duration (e.g. 2m) to run the soak")
	}
	length, err := time.ParseDuration(env)
	if err != nil || length <= 0 {
		t.Fatalf("GRPCREUSE_SOAK=%q; want a positive duration such as 2m", env)
	}
	const (
		period        = 3 * time.Second // between faults
		faultLength   = 2 * time.Second
		unaryDeadline = 2 * time.Second
		streamLength  = 5 * time.Second
	)
	startG, startHeap := runtime.NumGoroutine(), soakHeap()

	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	srvTLS := pki.ServerConfig(t, "backends")
	faults := make([]*testutil.Faults, 3)
	backends := make([]*testutil.Backend, 3)
	proxies := make([]*testutil.Proxy, 3)
	backendOpts := make([]testutil.BackendOptions, 3)
	var endpoints []resolver.Endpoint
	for i := range backends {
		faults[i] = &testutil.Faults{}
		backendOpts[i] = testutil.BackendOptions{TLS: srvTLS, ServerOptions: faults[i].ServerOptions()}
		backends[i] = testutil.StartBackend(t, backendOpts[i])
		backendOpts[i].Addr = backends[i].Addr // restarts reuse the port
		proxies[i] = testutil.StartProxy(t, backends[i].Addr)
		endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: proxies[i].Addr}}})
	}
	scheme := "grpcreusesoak"
	r := manual.NewBuilderWithScheme(scheme)
	r.InitialState(resolver.State{Endpoints: endpoints})
	target := scheme + ":///backends"

	f := mustNew(t, clientconn.WithResolvers(r), clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithServiceConfig(soakServiceConfig),
		clientconn.WithDrainTimeout(5*time.Second))
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := f.Get(ctx, target, clientconn.WithWarmUp())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := testpb.NewTestServiceClient(c)

	tally := &soakTally{ended: map[string]map[codes.Code]int{}, sample: map[codes.Code]error{}}
	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	worker := func(fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000000 && !stopped(); i++ { // bounded; stop ends it long before
				fn()
			}
		}()
	}
	for w := 0; w < 6; w++ {
		worker(func() {
			tally.start()
			ctx, cancel := context.WithTimeout(context.Background(), unaryDeadline)
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, 64)}})
			cancel()
			tally.end("unary", err)
		})
	}
	for w := 0; w < 2; w++ {
		worker(func() {
			tally.start()
			ctx, cancel := context.WithTimeout(context.Background(), streamLength)
			defer cancel()
			tally.end("stream", echoStream(ctx, client, 20))
		})
	}
	// Short-lived handles for three tenants: the pool's Get/Close path.
	var churn atomic.Int64
	worker(func() {
		tally.start()
		n := churn.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), unaryDeadline)
		defer cancel()
		h, err := f.Get(ctx, target, clientconn.WithTenant(fmt.Sprintf("tenant-%d", n%3)))
		if err != nil {
			tally.end("churn", err)
			return
		}
		err = unary(ctx, h)
		h.Close()
		tally.end("churn", err)
	})

	began := time.Now()
	end := began.Add(length)
	pause := func(d time.Duration) {
		tm := time.NewTimer(d) // the scenario's pacing, not synchronisation
		defer tm.Stop()
		<-tm.C
	}
	restarts := 0
	for k := 0; time.Now().Add(period).Before(end); k++ {
		pause(period - faultLength)
		i := k % 3
		var what string
		switch k % 5 {
		case 0:
			what = "reset every connection"
			proxies[i].ResetAll()
		case 1:
			what = "blackhole, then reset"
			proxies[i].Blackhole(true)
			pause(faultLength)
			proxies[i].ResetAll()
			proxies[i].Blackhole(false)
		case 2:
			what = "100ms latency each way"
			proxies[i].SetLatency(100 * time.Millisecond)
			pause(faultLength)
			proxies[i].SetLatency(0)
		case 3:
			what = "every 3rd call fails with Unavailable"
			faults[i].FailEvery(3, codes.Unavailable)
			pause(faultLength)
			faults[i].FailEvery(0, codes.OK)
		case 4:
			what = "hard restart"
			backends[i].Server.Stop()
			backends[i] = testutil.StartBackend(t, backendOpts[i])
			restarts++
		}
		if k%5 == 0 || k%5 == 4 {
			pause(faultLength)
		}
		ended, failures, _ := tally.summary()
		t.Logf("+%3.0fs backend %d: %-38s calls so far %d, failures %v", time.Since(began).Seconds(), i, what, ended, failures)
	}
	pause(time.Until(end))
	close(stop)
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Fatalf("workers still running 30s after the soak ended: a call hangs")
	}

	ended, failures, text := tally.summary()
	issued := tally.issued.Load()
	if int64(ended) != issued {
		t.Errorf("%d calls issued, %d ended: calls were lost", issued, ended)
	}
	for code, n := range failures {
		switch code {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		default:
			t.Errorf("%d calls failed with %v, which no injected fault explains; e.g. %v", n, code, tally.sample[code])
		}
	}
	for code, err := range tally.sample {
		t.Logf("sample %v: %v", code, err)
	}
	midG := runtime.NumGoroutine()
	c.Close()
	if err := f.Close(); err != nil {
		t.Errorf("Factory.Close: %v", err)
	}
	for i := range backends {
		proxies[i].Close()
		backends[i].Stop()
	}
	const goroutineSlack = 10
	var endG int
	testutil.Eventually(t, 15*time.Second, func() bool {
		endG = runtime.NumGoroutine()
		return endG <= startG+goroutineSlack
	}, fmt.Sprintf("goroutines back near the baseline %d (+%d)", startG, goroutineSlack))
	endHeap := soakHeap()
	var total int
	for _, n := range failures {
		total += n
	}
	t.Logf("soak %v: %d calls issued, %d ended (%s); %d failed: %v; %d backend restarts; "+
		"goroutines %d at start, %d under load, %d at end; heap in use %.1f MiB at start, %.1f MiB at end",
		length, issued, ended, text, total, failures, restarts, startG, midG, endG,
		float64(startHeap)/(1<<20), float64(endHeap)/(1<<20))
}

// echoStream runs one bidirectional stream of n echoes and its close.
func echoStream(ctx context.Context, client testpb.TestServiceClient, n int) error {
	s, err := client.FullDuplexCall(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		if err := s.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte{byte(i)}}}); err != nil {
			_, err = s.Recv() // the stream's status
			return err
		}
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		if err == nil {
			return status.Error(codes.Internal, "stream sent more than it was asked")
		}
		return err
	}
	return nil
}
