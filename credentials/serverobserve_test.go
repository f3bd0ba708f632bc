package credentials_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"

	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// serverHandshakes is a telemetry.ServerHandshakeObserver that keeps every
// event.
type serverHandshakes struct {
	mu     sync.Mutex
	events []telemetry.ServerHandshakeInfo
}

func (s *serverHandshakes) ServerHandshake(info telemetry.ServerHandshakeInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, info)
}

func (s *serverHandshakes) all() []telemetry.ServerHandshakeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]telemetry.ServerHandshakeInfo(nil), s.events...)
}

// observedServer starts a gRPC backend whose credentials are NewTLS over
// cfg with the given options; it sends every call's server AuthInfo to
// authInfos (if not nil).
func observedServer(t testing.TB, cfg *tls.Config, authInfos chan<- grpccreds.AuthInfo, opts ...credentials.TLSOption) *testutil.Backend {
	t.Helper()
	screds, err := credentials.NewTLS(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.StartBackend(t, testutil.BackendOptions{
		ServerOptions: []grpc.ServerOption{grpc.Creds(screds)},
		Unary: func(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
			if p, ok := peer.FromContext(ctx); ok && authInfos != nil {
				select {
				case authInfos <- p.AuthInfo:
				default:
				}
			}
			return &testpb.SimpleResponse{}, nil
		},
	})
}

// Every server handshake is reported once, with its result, resumption,
// version, SNI and addresses, to every observer given; the recorder's
// snapshot agrees; the server's AuthInfo stays grpc's TLSInfo; a handshake
// the client aborts is reported as failed.
func TestServerHandshakeObserverReportsEveryHandshake(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	for _, tv := range tlsVersions {
		t.Run(tv.name, func(t *testing.T) {
			events, rec := &serverHandshakes{}, credentials.NewServerHandshakeRecorder()
			authInfos := make(chan grpccreds.AuthInfo, 8)
			b := observedServer(t, serverConfig(t, pki, nil), authInfos,
				credentials.WithServerHandshakeObserver(events), credentials.WithServerHandshakeObserver(rec),
				credentials.WithServerHandshakeObserver(nil))
			creds, err := credentials.NewTLS(clientConfig(pki, tv.v))
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				callOnce(t, creds, b.Addr, "localhost")
			}
			for i := range 3 {
				ai := <-authInfos
				if _, ok := ai.(grpccreds.TLSInfo); !ok {
					t.Fatalf("server AuthInfo %d is %T; want grpc credentials.TLSInfo", i+1, ai)
				}
			}
			// A client that does not trust the server aborts the handshake.
			untrusting, err := credentials.NewTLS(testutil.NewPKI(t, testutil.ECDSAP256).ClientConfig(""))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tryCall(untrusting, b.Addr, "localhost"); err == nil {
				t.Fatal("a client not trusting the server's CA made a call")
			}
			testutil.Eventually(t, 10*time.Second, func() bool { return len(events.all()) >= 4 }, "failed handshake not reported")

			got := events.all()
			if len(got) != 4 {
				t.Fatalf("observer saw %d handshakes; want 4: %+v", len(got), got)
			}
			for i, e := range got[:3] {
				if e.Err != nil || e.Resumed != (i > 0) || e.Version != tv.v || e.Server != b.Addr ||
					e.ServerName != "localhost" || e.Addr == "" || e.Duration <= 0 || e.ClientCertificate {
					t.Errorf("handshake %d = %+v; want success, resumed=%v, version %x, server %s, SNI localhost", i+1, e, i > 0, tv.v, b.Addr)
				}
			}
			// crypto/tls reports the client's alert as a *net.OpError whose
			// cause (an unexported alert type) reads "remote error: tls: ...".
			var opErr *net.OpError
			if f := got[3]; f.Err == nil || !errors.As(f.Err, &opErr) || !strings.Contains(f.Err.Error(), "bad certificate") ||
				f.Resumed || f.Version != 0 || f.Server != b.Addr {
				t.Errorf("failed handshake = %+v; want a failure with the client's bad_certificate alert on %s", f, b.Addr)
			}

			snap := rec.Snapshot()
			if len(snap) != 1 {
				t.Fatalf("Snapshot() = %+v; want one server", snap)
			}
			s := snap[0]
			wantV12, wantV13 := uint64(0), uint64(0)
			if tv.v == tls.VersionTLS12 {
				wantV12 = 3
			} else {
				wantV13 = 3
			}
			if s.Server != b.Addr || s.Full != 1 || s.Resumed != 2 || s.Failed != 1 || s.TLS12 != wantV12 || s.TLS13 != wantV13 ||
				s.ResumedShare < 0.66 || s.ResumedShare > 0.67 || s.FullSamples != 1 || s.FullP50 <= 0 || s.FullP99 != s.FullP50 {
				t.Fatalf("Snapshot()[0] = %+v; want 1 full, 2 resumed, 1 failed on %s", s, b.Addr)
			}
		})
	}
}

// Observing server handshakes adds no allocation to calls: calls on an
// established connection cost the same with and without an observer
// (measured side by side), and the observer hears one event per
// connection, none per call.
func TestServerHandshakeObserverAddsNoAllocsPerCall(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	events := &serverHandshakes{}
	plain := observedServer(t, serverConfig(t, pki, nil), nil)
	observed := observedServer(t, serverConfig(t, pki, nil), nil,
		credentials.WithServerHandshakeObserver(events), credentials.WithServerHandshakeObserver(credentials.NewServerHandshakeRecorder()))
	allocs := func(addr string) float64 {
		creds, err := credentials.NewTLS(pki.ClientConfig(""))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		client := testpb.NewTestServiceClient(cc)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		call := func() {
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
				t.Fatal(err)
			}
		}
		for range 20 {
			call() // connect and warm grpc's buffer pools
		}
		return testing.AllocsPerRun(200, call)
	}
	// Interleave, so both sides see the same conditions, and take the
	// least of three runs: under -race, sync.Pool drops items at random,
	// which moves the count by about one either way.
	plainAllocs, observedAllocs := math.Inf(1), math.Inf(1)
	for range 3 {
		plainAllocs = min(plainAllocs, allocs(plain.Addr))
		observedAllocs = min(observedAllocs, allocs(observed.Addr))
	}
	if observedAllocs > plainAllocs+1 {
		t.Errorf("allocations per call (client and server): %.1f with a server handshake observer, %.1f without", observedAllocs, plainAllocs)
	}
	t.Logf("allocations per call (client and server): %.1f observed, %.1f plain", observedAllocs, plainAllocs)
	if n := len(events.all()); n != 3 {
		t.Errorf("observer saw %d handshakes for 3 connections and 660 calls; want 3", n)
	}
}

// The recorder's percentiles cover the last 512 full handshakes of each
// server; resumed and failed handshakes do not enter them; servers beyond
// the 64th are counted together under OtherServers.
func TestServerHandshakeRecorderSnapshot(t *testing.T) {
	rec := credentials.NewServerHandshakeRecorder()
	if got := rec.Snapshot(); len(got) != 0 {
		t.Fatalf("empty recorder Snapshot() = %+v", got)
	}
	ms := time.Millisecond
	for i := range 1000 { // the first 488 (durations 1000..1487 ms) fall out of the window
		rec.ServerHandshake(telemetry.ServerHandshakeInfo{Server: "a", Version: tls.VersionTLS13, Duration: time.Duration(1000+i) * ms})
	}
	for i := range 512 {
		rec.ServerHandshake(telemetry.ServerHandshakeInfo{Server: "a", Version: tls.VersionTLS13, Duration: time.Duration(i+1) * ms})
	}
	rec.ServerHandshake(telemetry.ServerHandshakeInfo{Server: "a", Resumed: true, Version: tls.VersionTLS12, Duration: time.Hour})
	rec.ServerHandshake(telemetry.ServerHandshakeInfo{Server: "a", Err: errors.New("boom"), Duration: time.Hour})
	for i := range 70 {
		rec.ServerHandshake(telemetry.ServerHandshakeInfo{Server: fmt.Sprintf("s%02d", i), Resumed: true, Version: tls.VersionTLS13})
	}
	snap := rec.Snapshot()
	if len(snap) != 65 {
		t.Fatalf("Snapshot() has %d servers; want 64 and %q", len(snap), credentials.OtherServers)
	}
	a := snap[0]
	want := credentials.ServerHandshakeStats{Server: "a", Full: 1512, Resumed: 1, Failed: 1, ResumedShare: 1.0 / 1513,
		TLS12: 1, TLS13: 1512, FullP50: 256 * ms, FullP99: 507 * ms, FullSamples: 512}
	if a != want {
		t.Errorf("Snapshot()[0] = %+v; want %+v", a, want)
	}
	other := snap[1] // "a" < "other" < "s00"
	if other.Server != credentials.OtherServers || other.Resumed != 7 {
		t.Errorf("servers beyond the 64th: %+v; want 7 resumed under %q", other, credentials.OtherServers)
	}
}
