package clientconn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/clientconn"
	grcreds "github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// handshakeCounter is an Observer that counts the Factory's client TLS
// handshakes by outcome.
type handshakeCounter struct {
	telemetry.Nop
	full, resumed, failed atomic.Int64
	mu                    sync.Mutex
	errs                  []error
}

func (h *handshakeCounter) Handshake(i telemetry.HandshakeInfo) {
	switch {
	case i.Err != nil:
		h.failed.Add(1)
		h.mu.Lock()
		h.errs = append(h.errs, i.Err)
		h.mu.Unlock()
	case i.Resumed:
		h.resumed.Add(1)
	default:
		h.full.Add(1)
	}
}

// errList collects errors from many goroutines.
type errList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errList) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *errList) get() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// TestTicketKeyRotationDuringReconnectStorm (issue 8, fault 3): the server
// makes a new session-ticket key every 200ms and keeps one previous key,
// while 4 workers open a fresh connection for every call through one
// Factory. No handshake or call may fail, and most handshakes must still
// resume (as counted by the server).
func TestTicketKeyRotationDuringReconnectStorm(t *testing.T) {
	for _, v := range []struct {
		name    string
		version uint16
	}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			const (
				interval = 200 * time.Millisecond
				storm    = 1500 * time.Millisecond
				workers  = 4
			)
			pki := testutil.NewPKI(t, testutil.ECDSAP256)
			rot, err := grcreds.NewTicketKeyRotator(grcreds.WithRotationInterval(interval), grcreds.WithPreviousKeys(1))
			if err != nil {
				t.Fatal(err)
			}
			defer rot.Close()
			var full, resumed atomic.Int64
			base := pki.ServerConfig(t)
			base.MinVersion, base.MaxVersion = v.version, v.version
			base.VerifyConnection = func(cs tls.ConnectionState) error {
				if cs.DidResume {
					resumed.Add(1)
				} else {
					full.Add(1)
				}
				return nil
			}
			srvCfg, err := rot.ServerConfig(base)
			if err != nil {
				t.Fatal(err)
			}
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: srvCfg})

			obs := &handshakeCounter{}
			f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0), clientconn.WithObserver(obs))
			defer f.Close()

			// A tenant that connects before the storm and after it: its
			// ticket's key has been dropped by then, so it must not resume.
			// This proves the keys really rotated during the storm.
			stale := clientconn.WithTenant("stale")
			if connectOnce(t, f, b.Addr, stale) {
				t.Fatalf("first connection resumed")
			}

			var (
				wg     sync.WaitGroup
				errs   errList
				cycles atomic.Int64
			)
			end := time.Now().Add(storm)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Each worker is its own tenant, so every cycle opens a
					// connection of its own and resumes its own sessions.
					tenant := clientconn.WithTenant(fmt.Sprintf("worker-%d", w))
					for i := 0; i < 100000 && time.Now().Before(end); i++ {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						c, err := f.Get(ctx, b.Addr, tenant)
						if err != nil {
							cancel()
							errs.add(fmt.Errorf("Get: %w", err))
							return
						}
						err = unary(ctx, c)
						c.Close()
						cancel()
						cycles.Add(1)
						if err != nil {
							errs.add(fmt.Errorf("call %d of worker %d: %w", i, w, err))
						}
					}
				}()
			}
			wg.Wait()
			for _, err := range errs.get() {
				t.Errorf("during the storm: %v", err)
			}
			fullBefore := full.Load()
			if connectOnce(t, f, b.Addr, stale) || full.Load() != fullBefore+1 {
				t.Errorf("a ticket issued %v (more than 2 rotations) ago resumed; the keys did not rotate", storm)
			}
			if n := obs.failed.Load(); n > 0 {
				t.Errorf("%d client handshakes failed: %v", n, obs.errs)
			}
			total := full.Load() + resumed.Load() - 2 // without the stale tenant's two
			if total < int64(workers)*5 {
				t.Fatalf("only %d handshakes in %v; the storm did not happen", total, storm)
			}
			rate := float64(resumed.Load()) / float64(total)
			t.Logf("%s: %d cycles, %d handshakes over ~%d key rotations: %d resumed, %d full (server); resumption rate %.1f%%; client saw %d resumed, %d full, %d failed",
				v.name, cycles.Load(), total, storm/interval, resumed.Load(), full.Load()-2, 100*rate, obs.resumed.Load(), obs.full.Load()-2, obs.failed.Load())
			// Each worker's first handshake is full, and so is any whose
			// ticket is older than two rotations; everything else resumes.
			if rate < 0.5 {
				t.Errorf("resumption rate %.1f%% across key rotations, want well above 0 (at least 50%%)", 100*rate)
			}
		})
	}
}

// subchannelLog records the balancer's subchannel state changes with
// their time.
type subchannelLog struct {
	telemetry.Nop
	mu     sync.Mutex
	events []subchannelEvent
}

type subchannelEvent struct {
	at       time.Time
	endpoint string
	state    connectivity.State
}

func (l *subchannelLog) SubchannelState(_, endpoint string, st connectivity.State) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, subchannelEvent{at: time.Now(), endpoint: endpoint, state: st})
}

// left returns when endpoint's subchannel first reported a state other
// than READY after since, or the zero time.
func (l *subchannelLog) left(endpoint string, since time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if e.endpoint == endpoint && !e.at.Before(since) && e.state != connectivity.Ready {
			return e.at
		}
	}
	return time.Time{}
}

// callRecord is one call of a load worker.
type callRecord struct {
	start time.Time
	took  time.Duration
	code  codes.Code
}

// timedLoad runs workers calling c with a per-call deadline until stop
// closes, recording every call.
func timedLoad(c grpc.ClientConnInterface, workers int, deadline time.Duration, stop <-chan struct{}) (wait func() []callRecord) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		recs []callRecord
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []callRecord
			defer func() {
				mu.Lock()
				recs = append(recs, mine...)
				mu.Unlock()
			}()
			for i := 0; i < 1000000; i++ { // bounded; stop ends it long before
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				err := unary(ctx, c)
				cancel()
				mine = append(mine, callRecord{start: start, took: time.Since(start), code: status.Code(err)})
			}
		}()
	}
	return func() []callRecord {
		wg.Wait()
		sort.Slice(recs, func(i, j int) bool { return recs[i].start.Before(recs[j].start) })
		return recs
	}
}

// TestBlackholedBackendDetectedByKeepalive (issue 8, fault 4): one of
// three backends starts swallowing every byte without closing its
// connection. KeepaliveFastDetect must close that connection within its
// Time+Timeout (15s), traffic must move to the other two, and no call may
// outlive its 1s deadline.
func TestBlackholedBackendDetectedByKeepalive(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for keepalive to detect a dead peer, ~16s")
	}
	t.Parallel()
	const (
		callDeadline = time.Second
		callSlack    = 500 * time.Millisecond // scheduling under -race on 2 cores
		detectSlack  = 3 * time.Second
	)
	ka := clientconn.KeepaliveFastDetect()
	backends := make([]*testutil.Backend, 3)
	proxies := make([]*testutil.Proxy, 3)
	var endpoints []resolver.Endpoint
	for i := range backends {
		backends[i] = testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: ka.ServerOptions()})
		proxies[i] = testutil.StartProxy(t, backends[i].Addr)
		endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: proxies[i].Addr}}})
	}
	scheme := "grpcreusetest" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", ""))
	r := manual.NewBuilderWithScheme(scheme)
	r.InitialState(resolver.State{Endpoints: endpoints})

	obs := &subchannelLog{}
	f := newFactory(t, clientconn.WithResolvers(r), clientconn.WithKeepalive(ka), clientconn.WithObserver(obs), clientconn.WithServiceConfig(
		`{"loadBalancingConfig":[{"`+balancer.Name+`":{"subchannelsPerEndpoint":1,"maxSubchannelsPerEndpoint":1}}]}`))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := f.Get(ctx, scheme+":///backends", clientconn.WithWarmUp())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	stop := make(chan struct{})
	wait := timedLoad(c, 6, callDeadline, stop)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return backends[0].Calls.Load() > 20 && backends[1].Calls.Load() > 20 && backends[2].Calls.Load() > 20
	}, "steady load on all three backends")

	dead := proxies[0].Addr
	blackholed := time.Now()
	proxies[0].Blackhole(true)
	limit := ka.Client.Time + ka.Client.Timeout + detectSlack
	testutil.Eventually(t, limit, func() bool { return !obs.left(dead, blackholed).IsZero() },
		fmt.Sprintf("keepalive closed the blackholed connection within Time+Timeout+slack = %v", limit))
	detected := obs.left(dead, blackholed)
	// Traffic after detection must go to the two live backends only.
	live := func() int64 { return backends[1].Calls.Load() + backends[2].Calls.Load() }
	before := live()
	testutil.Eventually(t, 10*time.Second, func() bool { return live() > before+1000 }, "load on the live backends after detection")
	close(stop)
	recs := wait()
	moved := backends[1].Calls.Load() + backends[2].Calls.Load() - before

	var (
		longest        time.Duration
		failedBefore   int
		failedAfter    []callRecord
		lastIntoHole   time.Time
		okAfter, total int
	)
	// Calls picked just before the balancer heard of the closed
	// connection may still have gone to it.
	settled := detected.Add(200 * time.Millisecond)
	for _, rec := range recs {
		total++
		longest = max(longest, rec.took)
		if rec.took > callDeadline+callSlack {
			t.Errorf("call started at +%v took %v (code %v), past its %v deadline", rec.start.Sub(blackholed), rec.took, rec.code, callDeadline)
		}
		switch {
		case rec.code == codes.OK:
			if rec.start.After(detected) {
				okAfter++
			}
		case rec.start.After(settled):
			failedAfter = append(failedAfter, rec)
		default:
			failedBefore++
			if rec.start.After(lastIntoHole) {
				lastIntoHole = rec.start
			}
			// Calls in the blackhole time out, or fail with Unavailable
			// when keepalive closes their connection.
			if rec.code != codes.DeadlineExceeded && rec.code != codes.Unavailable {
				t.Errorf("call started at +%v failed with %v; want OK, or DeadlineExceeded or Unavailable into the blackhole", rec.start.Sub(blackholed), rec.code)
			}
		}
	}
	for _, rec := range failedAfter {
		t.Errorf("call started %v after detection failed with %v; traffic should have moved to the live backends", rec.start.Sub(detected), rec.code)
	}
	if moved == 0 || okAfter == 0 {
		t.Errorf("after detection the live backends got %d calls (%d OK at the client), want traffic to move to them", moved, okAfter)
	}
	stopped := "no call went into the blackhole"
	if !lastIntoHole.IsZero() {
		stopped = fmt.Sprintf("the last call into the blackhole started %v after it", lastIntoHole.Sub(blackholed).Round(time.Millisecond))
	}
	t.Logf("keepalive (Time %v, Timeout %v) closed the blackholed connection %v after the blackhole began; %s; "+
		"%d calls, %d failed (DeadlineExceeded or Unavailable) before detection, %d OK after it; longest call %v (deadline %v)",
		ka.Client.Time, ka.Client.Timeout, detected.Sub(blackholed).Round(time.Millisecond), stopped,
		total, failedBefore, okAfter, longest.Round(time.Millisecond), callDeadline)
}

// TestOverloadWithShedding (issue 8, fault 6): 5× as many callers as the
// server's fixed in-flight limit. Every call ends OK, ResourceExhausted or
// Unavailable, none hangs, none is lost; the server never runs more than
// its limit at once; goroutines and heap return near their baseline.
func TestOverloadWithShedding(t *testing.T) {
	const (
		limit     = 8
		callers   = 5 * limit
		perCaller = 60
		work      = 10 * time.Millisecond
	)
	cfg := interceptors.DefaultShedderConfig()
	cfg.Limit = limit
	shed, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	var running, peakRunning atomic.Int64
	handler := func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peakRunning.Load()
			if n <= p || peakRunning.CompareAndSwap(p, n) {
				break
			}
		}
		tm := time.NewTimer(work) // the call's work, not synchronisation
		defer tm.Stop()
		select {
		case <-tm.C:
			return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	b := testutil.StartBackend(t, testutil.BackendOptions{Unary: handler, ServerOptions: []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(shed.UnaryServerInterceptor()), grpc.ChainStreamInterceptor(shed.StreamServerInterceptor()),
	}})
	f := newFactory(t)
	c := get(t, f, b.Addr)
	defer c.Close()
	mustUnary(t, c)

	goroutines := func() int { return runtime.NumGoroutine() }
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	baseG, baseHeap := goroutines(), heap()

	var (
		mu      sync.Mutex
		byCode  = map[codes.Code]int{}
		sample  error
		issued  atomic.Int64
		wg      sync.WaitGroup
		allDone = make(chan struct{})
	)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < perCaller; j++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				issued.Add(1)
				err := unary(ctx, c)
				cancel()
				mu.Lock()
				byCode[status.Code(err)]++
				if status.Code(err) == codes.ResourceExhausted && sample == nil {
					sample = err
				}
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(allDone) }()
	peakG := baseG
	hung := time.After(60 * time.Second)
	for waiting := true; waiting; {
		select {
		case <-allDone:
			waiting = false
		case <-hung:
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("calls still running after 60s: %d issued, outcomes so far %v", issued.Load(), byCode)
		case <-time.After(10 * time.Millisecond): // sampling the peak, not synchronisation
			peakG = max(peakG, goroutines())
		}
	}

	var ended int
	for code, n := range byCode {
		ended += n
		switch code {
		case codes.OK, codes.ResourceExhausted, codes.Unavailable:
		default:
			t.Errorf("%d calls ended with %v; want only OK, ResourceExhausted or Unavailable", n, code)
		}
	}
	if want := callers * perCaller; ended != want || issued.Load() != int64(want) {
		t.Errorf("%d calls issued, %d ended; want %d of each: none lost", issued.Load(), ended, want)
	}
	if byCode[codes.ResourceExhausted] == 0 || byCode[codes.OK] == 0 {
		t.Errorf("outcomes %v; at 5× the limit want both served and shed calls", byCode)
	}
	if sample != nil && !strings.Contains(sample.Error(), "shed") {
		t.Errorf("shed call's error %q does not say it was shed", sample)
	}
	if p := peakRunning.Load(); p > limit {
		t.Errorf("server ran %d calls at once, above its limit %d", p, limit)
	}
	if lim, inFlight := shed.InFlight(); inFlight != 0 || lim != limit {
		t.Errorf("after the load the Shedder reports limit %d, %d in flight; want %d, 0", lim, inFlight, limit)
	}

	const goroutineSlack, heapSlack = 10, 4 << 20
	var endG int
	var endHeap uint64
	testutil.Eventually(t, 10*time.Second, func() bool {
		endG = goroutines()
		return endG <= baseG+goroutineSlack
	}, fmt.Sprintf("goroutines back near the baseline %d (+%d)", baseG, goroutineSlack))
	testutil.Eventually(t, 10*time.Second, func() bool {
		endHeap = heap()
		return endHeap <= baseHeap+heapSlack
	}, fmt.Sprintf("heap in use back near the baseline %d B (+%d)", baseHeap, heapSlack))
	t.Logf("%d callers × %d calls at limit %d: outcomes %v; server peak %d running; goroutines %d → peak %d → %d; heap in use %.1f → %.1f MiB",
		callers, perCaller, limit, byCode, peakRunning.Load(), baseG, peakG, endG, float64(baseHeap)/(1<<20), float64(endHeap)/(1<<20))
}

// certSerial returns the serial number of the first certificate in certPEM.
func certSerial(t *testing.T, certPEM []byte) *big.Int {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert.SerialNumber
}

// handshakeRecord is what one fresh connection saw.
type handshakeRecord struct {
	serial  *big.Int
	resumed bool
}

// reconnectLoop opens a fresh connection through f (WithMaxIdle(0)) for
// every call until stop closes, and records the server certificate each
// connection saw.
func reconnectLoop(f *clientconn.Factory, target string, stop <-chan struct{}, errs *errList) (wait func() []handshakeRecord) {
	done := make(chan []handshakeRecord, 1)
	go func() {
		var recs []handshakeRecord
		defer func() { done <- recs }()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := f.Get(ctx, target)
			if err != nil {
				cancel()
				errs.add(fmt.Errorf("Get: %w", err))
				return
			}
			var p peer.Peer
			_, err = testpb.NewTestServiceClient(c).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Peer(&p))
			c.Close()
			cancel()
			if err != nil {
				errs.add(fmt.Errorf("reconnect call %d: %w", i, err))
				continue
			}
			info, ok := grcreds.GRPCTLSInfo(p.AuthInfo)
			if !ok || len(info.State.PeerCertificates) == 0 {
				errs.add(fmt.Errorf("reconnect call %d: AuthInfo %T without a peer certificate", i, p.AuthInfo))
				continue
			}
			recs = append(recs, handshakeRecord{serial: info.State.PeerCertificates[0].SerialNumber, resumed: info.State.DidResume})
		}
	}()
	return func() []handshakeRecord { return <-done }
}

// TestServerCertificateRotationDuringTraffic (issue 8, fault 8): the
// server's certificate files are replaced while a long-lived connection
// carries load and two clients reconnect for every call. No call fails,
// and every full handshake after the reload sees the new certificate.
func TestServerCertificateRotationDuringTraffic(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	oldCert, oldKey := pki.LeafPEM(t)
	testutil.WriteFileAtomic(t, certFile, oldCert)
	testutil.WriteFileAtomic(t, keyFile, oldKey)
	rel, err := grcreds.NewCertificateReloader(certFile, keyFile, grcreds.WithPollInterval(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer rel.Close()
	b := testutil.StartBackend(t, testutil.BackendOptions{TLS: &tls.Config{GetCertificate: rel.GetCertificate, MinVersion: tls.VersionTLS12}})
	oldSerial := certSerial(t, oldCert)

	// A long-lived, shared connection under load.
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")))
	defer f.Close()
	c := get(t, f, b.Addr)
	defer c.Close()
	stop := make(chan struct{})
	waitLoad := load(c, 4, stop)

	// One client that always makes full handshakes and one that resumes.
	fullCfg := pki.ClientConfig("")
	fullCfg.SessionTicketsDisabled = true
	fullF := mustNew(t, clientconn.WithTLS(fullCfg), clientconn.WithMaxIdle(0))
	defer fullF.Close()
	resumeF := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0))
	defer resumeF.Close()
	var errs errList
	waitFull := reconnectLoop(fullF, b.Addr, stop, &errs)
	waitResume := reconnectLoop(resumeF, b.Addr, stop, &errs)
	testutil.Eventually(t, 10*time.Second, func() bool { return b.Listener.Accepts() > 20 }, "reconnecting clients running")

	newCert, newKey := pki.LeafPEM(t)
	newSerial := certSerial(t, newCert)
	swapped := b.Listener.Accepts()
	testutil.WriteFileAtomic(t, keyFile, newKey)
	testutil.WriteFileAtomic(t, certFile, newCert)

	// A client made after the swap sees the new certificate.
	var fresh atomic.Pointer[big.Int]
	freshCfg := pki.ClientConfig("")
	freshCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		fresh.Store(cs.PeerCertificates[0].SerialNumber)
		return nil
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		g := mustNew(t, clientconn.WithTLS(freshCfg))
		defer g.Close()
		mustUnary(t, get(t, g, b.Addr))
		return fresh.Load().Cmp(newSerial) == 0
	}, "a fresh client sees the new certificate")
	if err := rel.Err(); err != nil {
		t.Errorf("reloader error after the swap: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return b.Listener.Accepts() > swapped+40 }, "reconnects after the swap")
	close(stop)
	loadErrs, calls := waitLoad()
	full, resumed := waitFull(), waitResume()

	for _, err := range append(loadErrs, errs.get()...) {
		t.Errorf("call failed across the certificate rotation: %v", err)
	}
	// Full handshakes: the old certificate until the reload, the new one
	// from then on, never the old one again.
	seenNew, oldAfterNew := 0, 0
	for i, h := range full {
		switch {
		case h.serial.Cmp(newSerial) == 0:
			seenNew++
		case h.serial.Cmp(oldSerial) != 0:
			t.Errorf("full handshake %d saw serial %v, neither the old nor the new certificate", i, h.serial)
		case seenNew > 0:
			oldAfterNew++
		}
	}
	if seenNew == 0 || oldAfterNew > 0 {
		t.Errorf("full handshakes: %d saw the new certificate, %d the old one after that; want some and none", seenNew, oldAfterNew)
	}
	var resumedOld, fullNew int
	for _, h := range resumed {
		switch {
		case h.resumed && h.serial.Cmp(oldSerial) == 0:
			resumedOld++
		case !h.resumed && h.serial.Cmp(newSerial) == 0:
			fullNew++
		}
	}
	t.Logf("%d calls on the long-lived connection, none failed; full-handshake client: %d connections, %d with the new certificate; "+
		"resuming client: %d connections, %d resumed with the old certificate, %d full with the new",
		calls, len(full), seenNew, len(resumed), resumedOld, fullNew)
}

// TestTenantsNeverShareConnections asserts on the server side that the
// connections a Factory makes for one tenant never carry another
// tenant's calls, with idle connections kept in the pool, plaintext and
// TLS, and that over TLS 1.2 (TLS 1.3: TestFactoryKeepsTenantSessionsApart)
// a session made for one tenant never resumes for another.
func TestTenantsNeverShareConnections(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tc := range []struct {
		name   string
		server *tls.Config
		client clientconn.Option
	}{
		{name: "plaintext", client: plaintext},
		{name: "TLS", server: pki.ServerConfig(t), client: clientconn.WithTLS(pki.ClientConfig(""))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu       sync.Mutex
				byPeer   = map[string]map[string]bool{} // server-side peer address -> tenants seen
				noTenant int
			)
			record := func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
				p, _ := peer.FromContext(ctx)
				md, _ := metadata.FromIncomingContext(ctx)
				mu.Lock()
				defer mu.Unlock()
				tenants := md.Get("x-tenant")
				if p == nil || len(tenants) != 1 {
					noTenant++
					return &testpb.SimpleResponse{}, nil
				}
				addr := p.Addr.String()
				if byPeer[addr] == nil {
					byPeer[addr] = map[string]bool{}
				}
				byPeer[addr][tenants[0]] = true
				return &testpb.SimpleResponse{}, nil
			}
			b := testutil.StartBackend(t, testutil.BackendOptions{TLS: tc.server, Unary: record})
			f := mustNew(t, tc.client) // idle connections stay in the pool
			defer f.Close()
			call := func(tenant string) {
				t.Helper()
				c := get(t, f, b.Addr, clientconn.WithTenant(tenant))
				defer c.Close()
				ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-tenant", tenant), 10*time.Second)
				defer cancel()
				if err := unary(ctx, c); err != nil {
					t.Fatalf("call for %q: %v", tenant, err)
				}
			}
			// Interleaved, then with the other tenant's connection idle
			// in the pool, several times over.
			for i := 0; i < 5; i++ {
				for _, tenant := range []string{"tenant-a", "tenant-b", "", "tenant-a", "tenant-b"} {
					call(tenant)
				}
			}
			// Both tenants at once, with live handles.
			ca, cb := get(t, f, b.Addr, clientconn.WithTenant("tenant-a")), get(t, f, b.Addr, clientconn.WithTenant("tenant-b"))
			if ca.ClientConn() == cb.ClientConn() {
				t.Errorf("tenants A and B got the same *grpc.ClientConn")
			}
			ca.Close()
			cb.Close()

			mu.Lock()
			defer mu.Unlock()
			if noTenant > 0 {
				t.Fatalf("%d calls arrived without a peer or tenant", noTenant)
			}
			perTenant := map[string]int{}
			for addr, tenants := range byPeer {
				if len(tenants) != 1 {
					t.Errorf("server connection from %s carried calls of tenants %v; want one", addr, slices.Sorted(maps.Keys(tenants)))
				}
				for tenant := range tenants {
					perTenant[tenant]++
				}
			}
			if got := b.Listener.Accepts(); got != 3 || len(byPeer) != 3 {
				t.Errorf("server accepted %d connections, carrying calls from %d peers; want 3 and 3 (one per tenant, reused)", got, len(byPeer))
			}
			for _, tenant := range []string{"tenant-a", "tenant-b", ""} {
				if perTenant[tenant] != 1 {
					t.Errorf("tenant %q used %d connections, want 1", tenant, perTenant[tenant])
				}
			}
		})
	}
}
