package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/resolver"
)

// sizes bounds every loop of every scenario, in count and in time.
type sizes struct {
	churnWaves, churnCalls     int           // waves of 8 services per round; calls per service per backend
	satCallers                 int           // saturation callers
	satWarm, satCalls          int           // saturation calls per side: warm-up (once), per round
	slowWarm, slowCalls        int           // slow-backend calls per side: warm-up (once), per round
	handshakes                 int           // handshakes per variant per round
	resumeConns                int           // connections per resumption-rate run
	chainCalls, chainPasses    int           // unary calls per side per round; chain passes without a call
	overloadFor, unloadedFor   time.Duration // how long overload and unloaded runs last
	maxDrive                   time.Duration // no load run goes past this
	callTimeout, setupDeadline time.Duration
}

func defaultSizes() sizes {
	return sizes{
		churnWaves: 10, churnCalls: 10,
		satCallers: 1000, satWarm: 4000, satCalls: 12000,
		slowWarm: 500, slowCalls: 5000,
		handshakes: 200, resumeConns: 150,
		chainCalls: 30000, chainPasses: 300000,
		overloadFor: time.Second, unloadedFor: 500 * time.Millisecond,
		maxDrive: 20 * time.Second, callTimeout: 10 * time.Second, setupDeadline: 10 * time.Second,
	}
}

func quickSizes() sizes {
	return sizes{
		churnWaves: 1, churnCalls: 2,
		satCallers: 1000, satWarm: 1000, satCalls: 2000,
		slowWarm: 100, slowCalls: 300,
		handshakes: 4, resumeConns: 12,
		chainCalls: 500, chainPasses: 5000,
		overloadFor: 200 * time.Millisecond, unloadedFor: 100 * time.Millisecond,
		maxDrive: 5 * time.Second, callTimeout: 10 * time.Second, setupDeadline: 10 * time.Second,
	}
}

// side is one way of doing a scenario's work: plain grpc-go or the toolkit.
type side struct {
	name    string
	toolkit bool
	measure func(ctx context.Context) (sample, error)
}

// sample is what one side measured in one round.
type sample struct {
	m   map[string]float64
	lat []time.Duration
}

// measurements are every round's samples of every side, by side name.
type measurements map[string][]sample

// median returns the median over rounds of metric m of side s.
func (ms measurements) median(s, m string) float64 {
	var v []float64
	for _, smp := range ms[s] {
		v = append(v, smp.m[m])
	}
	return median(v)
}

// latencies pools the latency samples of side s over all rounds.
func (ms measurements) latencies(s string) []time.Duration {
	var all []time.Duration
	for _, smp := range ms[s] {
		all = append(all, smp.lat...)
	}
	return all
}

// runRounds measures every side once per round, in order in even rounds
// and in reverse in odd ones, collecting garbage before each measurement so
// that one side's garbage is not collected on the other's time.
func runRounds(ctx context.Context, e *env, sides []side) (measurements, error) {
	ms := measurements{}
	for r := range e.rounds {
		order := slices.Clone(sides)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			runtime.GC()
			smp, err := s.measure(ctx)
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", s.name, r+1, err)
			}
			ms[s.name] = append(ms[s.name], smp)
		}
		e.logf("%s: round %d/%d done", e.title, r+1, e.rounds)
	}
	return ms, nil
}

// distsOf returns the chart entries of the given sides.
func distsOf(scenario string, ms measurements, sides []side) []dist {
	var out []dist
	for _, s := range sides {
		lat := ms.latencies(s.name)
		if len(lat) == 0 {
			continue
		}
		slices.Sort(lat)
		out = append(out, dist{scenario: scenario, side: s.name, toolkit: s.toolkit,
			p50: pct(lat, 0.50), p90: pct(lat, 0.90), p99: pct(lat, 0.99), n: len(lat)})
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pct returns the p-quantile of sorted latencies.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// percentiles sorts lat in place and returns p50 and p99 in milliseconds.
func percentiles(lat []time.Duration) (p50, p99 float64) {
	slices.Sort(lat)
	return ms(pct(lat, 0.50)), ms(pct(lat, 0.99))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is the user+system CPU time the process used so far: client and
// server sides of a loopback run together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }

// drivePaced is drive at a fixed offered rate (calls/s across all
// callers): each caller waits for its next slot on a schedule, so every
// side of a comparison gets the same load instead of the faster one
// generating more (and, on a 2-core machine, queueing behind its own
// CPU). A caller that falls behind calls at once until it catches up.
// Latency is measured from when a call is sent, not from its slot.
func drivePaced(ctx context.Context, callers, n int, rate float64, maxDur, timeout time.Duration, call func(context.Context) error) ([]time.Duration, time.Duration, error) {
	interval := time.Duration(float64(callers) / rate * float64(time.Second))
	var caller atomic.Int64
	start := time.Now()
	pacer := func() func() {
		idx := caller.Add(1) - 1
		next := start.Add(time.Duration(idx) * interval / time.Duration(callers))
		return func() {
			if d := time.Until(next); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
			}
			next = next.Add(interval)
		}
	}
	return driveWith(ctx, callers, n, maxDur, timeout, pacer, call)
}

// drive makes up to n calls from `callers` goroutines, stopping early when
// maxDur has passed or ctx ends. It returns every finished call's latency
// and how long the calls took, or an error counting the failed calls and
// wrapping the first failure.
func drive(ctx context.Context, callers, n int, maxDur, timeout time.Duration, call func(context.Context) error) ([]time.Duration, time.Duration, error) {
	return driveWith(ctx, callers, n, maxDur, timeout, nil, call)
}

// driveWith is drive where each caller goroutine, if pacer is set, gets a
// wait function from it and calls it before each call.
func driveWith(ctx context.Context, callers, n int, maxDur, timeout time.Duration, pacer func() func(), call func(context.Context) error) ([]time.Duration, time.Duration, error) {
	var (
		failed   int
		firstErr error
	)
	lat := make([]time.Duration, n)
	done := make([]bool, n)
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	stopAt := start.Add(maxDur)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait := func() {}
			if pacer != nil {
				wait = pacer()
			}
			for ctx.Err() == nil && time.Now().Before(stopAt) {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				wait()
				cctx, cancel := context.WithTimeout(ctx, timeout)
				t0 := time.Now()
				err := call(cctx)
				lat[i] = time.Since(t0)
				cancel()
				done[i] = true
				if err != nil {
					mu.Lock()
					failed++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	out := lat[:0]
	for i, ok := range done {
		if ok {
			out = append(out, lat[i])
		}
	}
	if failed > 0 {
		return out, elapsed, fmt.Errorf("%d of %d calls failed, the first: %w", failed, len(out), firstErr)
	}
	if err := ctx.Err(); err != nil {
		return out, elapsed, err
	}
	if len(out) == 0 {
		return out, elapsed, errors.New("no call finished")
	}
	return out, elapsed, nil
}

// ---- servers ----

// countingListener counts accepted connections: the server's own count of
// the connections clients opened.
type countingListener struct {
	net.Listener
	accepts atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

// handshakeCounter counts a TLS server's handshakes, full and resumed, from
// tls.Config.VerifyConnection, which crypto/tls calls on every handshake.
type handshakeCounter struct{ full, resumed atomic.Int64 }

func (h *handshakeCounter) verify(cs tls.ConnectionState) error {
	if cs.DidResume {
		h.resumed.Add(1)
	} else {
		h.full.Add(1)
	}
	return nil
}

func (h *handshakeCounter) total() int64 { return h.full.Load() + h.resumed.Load() }

// backend is a gRPC server on 127.0.0.1 serving grpc.testing.TestService.
type backend struct {
	addr  string
	lis   *countingListener
	srv   *grpc.Server
	calls atomic.Int64
	done  chan struct{}
}

// startBackend starts a backend whose UnaryCall runs unary (an echo if nil).
func startBackend(tlsCfg *tls.Config, unary func(context.Context) error, opts ...grpc.ServerOption) (*backend, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	b := &backend{addr: lis.Addr().String(), lis: &countingListener{Listener: lis}, srv: grpc.NewServer(opts...), done: make(chan struct{})}
	testpb.RegisterTestServiceServer(b.srv, &testService{b: b, unary: unary})
	go func() {
		defer close(b.done)
		_ = b.srv.Serve(b.lis)
	}()
	return b, nil
}

// stop stops the backend, gracefully if its calls end within 5 s.
func (b *backend) stop() {
	stopped := make(chan struct{})
	go func() { b.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		b.srv.Stop()
		<-stopped
	}
	<-b.done
}

type testService struct {
	testpb.UnimplementedTestServiceServer
	b     *backend
	unary func(context.Context) error
}

func (s *testService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.b.calls.Add(1)
	if s.unary != nil {
		if err := s.unary(ctx); err != nil {
			return nil, err
		}
	}
	return &testpb.SimpleResponse{}, nil
}

// sleeper is a handler whose work takes d.
func sleeper(d time.Duration) func(context.Context) error {
	return func(context.Context) error {
		time.Sleep(d)
		return nil
	}
}

// unary makes one UnaryCall on cc.
func unary(ctx context.Context, cc grpc.ClientConnInterface) error {
	_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{})
	return err
}

// ---- a resolver for targets listing their addresses ----

// listScheme targets list their addresses: "benchlist:///a:1,b:2,c:3"
// resolves to three endpoints, for plain grpc-go and the Factory alike.
// The builder is handed to each client (grpc.WithResolvers,
// clientconn.WithResolvers), never registered globally.
const listScheme = "benchlist"

func listTarget(addrs ...string) string { return listScheme + ":///" + strings.Join(addrs, ",") }

type listBuilder struct{}

func (listBuilder) Scheme() string { return listScheme }

func (listBuilder) Build(t resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	var eps []resolver.Endpoint
	for _, a := range strings.Split(t.Endpoint(), ",") {
		eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	if err := cc.UpdateState(resolver.State{Endpoints: eps}); err != nil {
		cc.ReportError(err)
	}
	return listResolver{}, nil
}

type listResolver struct{}

func (listResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (listResolver) Close()                                {}

// ---- certificates ----

type keyType int

const (
	ecdsaP256 keyType = iota
	rsa2048
)

func (k keyType) String() string {
	if k == rsa2048 {
		return "RSA-2048"
	}
	return "ECDSA P-256"
}

// pki is a throwaway certificate authority.
type pki struct {
	kt   keyType
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
}

func newPKI(kt keyType) (*pki, error) {
	key, err := newKey(kt)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "grpcreuse bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &pki{kt: kt, cert: cert, key: key, pool: pool}, nil
}

// serverConfig returns a server config with a fresh leaf certificate for
// names plus 127.0.0.1 and its own random session ticket keys.
func (p *pki) serverConfig(names ...string) (*tls.Config, error) {
	key, err := newKey(p.kt)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "grpcreuse bench server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    append([]string{"localhost"}, names...),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		return nil, fmt.Errorf("create leaf: %w", err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}
	var tk [32]byte
	if _, err := rand.Read(tk[:]); err != nil {
		return nil, err
	}
	cfg.SetSessionTicketKeys([][32]byte{tk})
	return cfg, nil
}

// clientConfig trusts the CA and speaks at most version (0: any).
func (p *pki) clientConfig(version uint16) *tls.Config {
	return &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12, MaxVersion: version}
}

func newKey(kt keyType) (crypto.Signer, error) {
	if kt == rsa2048 {
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// ---- formatting ----

// fmtMS formats milliseconds with sensible precision.
func fmtMS(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	case v >= 1:
		return fmt.Sprintf("%.2f ms", v)
	default:
		return fmt.Sprintf("%.0f µs", v*1000)
	}
}

// fmtUS formats microseconds.
func fmtUS(v float64) string {
	if v >= 1000 {
		return fmtMS(v / 1000)
	}
	if v >= 10 {
		return fmt.Sprintf("%.0f µs", v)
	}
	return fmt.Sprintf("%.2f µs", v)
}

// fmtRate formats calls per second.
func fmtRate(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1fk/s", v/1000)
	}
	return fmt.Sprintf("%.0f/s", v)
}

// fmtX formats a ratio.
func fmtX(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f×", v)
	}
	return fmt.Sprintf("%.2f×", v)
}

// ratio is a/b, or 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// verdict returns "met" or "missed", with a reason when missed.
func verdict(ok bool, why string) string {
	if ok {
		return "met"
	}
	if why == "" {
		return "missed"
	}
	return "missed: " + why
}
