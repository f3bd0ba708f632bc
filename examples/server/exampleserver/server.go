// Package exampleserver is the logic of the examples/server command: a TLS
// gRPC server using grpcreuse's server side (ticket-key rotation, keepalive
// enforcement, load shedding), with the health service and reflection.
// It is a package rather than part of main so that examples/client's test
// runs the server and the client in one process.
package exampleserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/reflection"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/examples/internal/selfsigned"
	"github.com/grpcreuse/grpcreuse/interceptors"
)

// DefaultCAFile is where the server writes its self-signed certificate
// and where examples/client reads it unless told otherwise.
func DefaultCAFile() string { return filepath.Join(os.TempDir(), "grpcreuse-example-ca.pem") }

// config is the server's flags.
type config struct {
	addr                 string
	certFile, keyFile    string
	caOut                string
	ticketKeyFile        string
	ticketRotation       time.Duration
	maxInFlight          int
	adaptive             bool
	maxWait              time.Duration
	work, workJitter     time.Duration
	workSlots            int
	shedLog              time.Duration
	criticality          map[string]interceptors.Criticality
	sheddableShare       float64
	maxConcurrentStreams uint
	grace                time.Duration
	shedderConfig        string                     // a JSON file with the whole ShedderConfig
	shed                 interceptors.ShedderConfig // built from the flags above (or read from shedderConfig), validated
}

// shedderFlags are the flags that set a ShedderConfig field, and the
// field's JSON name; -shedder-config replaces them all.
var shedderFlags = []struct{ flag, field string }{{"max-in-flight", "limit"}, {"adaptive", "adaptive"},
	{"max-wait", "maxWait"}, {"shed-log", "logInterval"}, {"criticality", "criticality"}, {"sheddable-share", "sheddableShare"}}

func parseFlags(args []string, stdout io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the caller prints the error; -h prints the usage below
	fs.StringVar(&c.addr, "addr", "127.0.0.1:50051", "address to listen on")
	fs.StringVar(&c.certFile, "cert", "", "PEM certificate file (reloaded when it changes); default: a self-signed certificate for localhost and 127.0.0.1 made at start")
	fs.StringVar(&c.keyFile, "key", "", "PEM private key file for -cert")
	fs.StringVar(&c.caOut, "ca-out", DefaultCAFile(), "where to write the self-signed certificate's PEM for clients to trust (unused with -cert)")
	fs.StringVar(&c.ticketKeyFile, "ticket-key-file", "", "session-ticket key file shared by replicas (one base64 32-byte key per line, first encrypts); default: random keys")
	fs.DurationVar(&c.ticketRotation, "ticket-rotation", credentials.DefaultRotationInterval, "how often random ticket keys rotate (not with -ticket-key-file)")
	fs.IntVar(&c.maxInFlight, "max-in-flight", 100, "calls in flight beyond which requests are shed with RESOURCE_EXHAUSTED (health checks are never shed)")
	fs.DurationVar(&c.maxWait, "max-wait", interceptors.DefaultShedderConfig().MaxWait, "how long at most one request at a fixed limit waits for a slot about to free (bounded by the service time / limit); 0: shed at once")
	fs.BoolVar(&c.adaptive, "adaptive", false, "adapt the in-flight limit to the server's own measured service time, starting at -max-in-flight")
	fs.DurationVar(&c.work, "work", 0, "simulated work per UnaryCall (e.g. 2ms), so that a load test shows shedding")
	fs.DurationVar(&c.workJitter, "work-jitter", 0, "random extra work per UnaryCall, added to -work: uniform in [0, jitter), so it may exceed -work")
	fs.IntVar(&c.workSlots, "work-slots", 0, "how many UnaryCalls can work at once (a CPU with that many cores); others wait for a slot; 0: no bound")
	fs.DurationVar(&c.shedLog, "shed-log", 10*time.Second, "how often at most a line summarising shed requests is logged (grpclog warning; set GRPC_GO_LOG_SEVERITY_LEVEL=warning to see it); 0: never")
	fs.Func("criticality", "per-method default criticality of requests without the "+interceptors.CriticalityHeader+" header, comma-separated method=critical|sheddable, the method as /pkg.Service/Method or /pkg.Service/ (e.g. /grpc.testing.TestService/UnaryCall=sheddable); default: all critical", func(v string) error {
		m, err := parseCriticality(v)
		c.criticality = m
		return err
	})
	fs.Float64Var(&c.sheddableShare, "sheddable-share", interceptors.DefaultShedderConfig().SheddableShare, "share of the in-flight limit that sheddable requests may use, above 0 and at most 1")
	fs.UintVar(&c.maxConcurrentStreams, "max-concurrent-streams", 100, "HTTP/2 MaxConcurrentStreams per connection")
	fs.DurationVar(&c.grace, "grace", 10*time.Second, "how long a graceful stop waits for calls in flight")
	fs.StringVar(&c.shedderConfig, "shedder-config", "", "JSON file with the whole Shedder config (interceptors.ShedderConfig, read strictly; absent fields take their defaults; see docs/overload.md), instead of -max-in-flight, -adaptive, -max-wait, -shed-log, -criticality and -sheddable-share")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "Usage: go run ./examples/server [flags]")
			fs.PrintDefaults()
		}
		return c, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q (flags only; see -h)", fs.Arg(0))
	case (c.certFile == "") != (c.keyFile == ""):
		return c, errors.New("-cert and -key go together: give both or neither")
	case c.certFile != "" && set["ca-out"]:
		return c, errors.New("-ca-out is for the self-signed certificate; with -cert, give clients your CA")
	case c.ticketKeyFile != "" && set["ticket-rotation"]:
		return c, errors.New("-ticket-rotation is for random keys; with -ticket-key-file the fleet rotates the file")
	case c.ticketRotation <= 0:
		return c, fmt.Errorf("-ticket-rotation is %v; must be positive", c.ticketRotation)
	case c.ticketRotation < time.Second:
		// The rotator takes intervals down to credentials.MinInterval,
		// but below a second no ticket outlives a few rotations: a demo
		// server's clients would never resume.
		return c, fmt.Errorf("-ticket-rotation is %v; must be at least 1s", c.ticketRotation)
	case c.maxInFlight < 1:
		return c, fmt.Errorf("-max-in-flight is %d; must be at least 1", c.maxInFlight)
	case c.maxWait < 0:
		return c, fmt.Errorf("-max-wait is %v; must not be negative", c.maxWait)
	case c.maxWait > 0 && c.adaptive && set["max-wait"]:
		return c, fmt.Errorf("-max-wait is %v; an -adaptive limit never waits for a slot (give -max-wait only with a fixed limit)", c.maxWait)
	case c.work < 0:
		return c, fmt.Errorf("-work is %v; must not be negative", c.work)
	case c.workJitter < 0:
		return c, fmt.Errorf("-work-jitter is %v; must not be negative", c.workJitter)
	case c.workSlots < 0:
		return c, fmt.Errorf("-work-slots is %d; must not be negative (0: no bound)", c.workSlots)
	case c.workSlots > 0 && c.work == 0 && c.workJitter == 0:
		return c, fmt.Errorf("-work-slots is %d, but there is no work to bound: give -work or -work-jitter too", c.workSlots)
	case c.shedLog < 0:
		return c, fmt.Errorf("-shed-log is %v; must not be negative", c.shedLog)
	case c.maxConcurrentStreams < 1 || c.maxConcurrentStreams > 1<<31-1:
		return c, fmt.Errorf("-max-concurrent-streams is %d; must be between 1 and %d", c.maxConcurrentStreams, 1<<31-1)
	case c.grace <= 0:
		return c, fmt.Errorf("-grace is %v; must be positive", c.grace)
	}

	if c.shedderConfig != "" {
		for _, f := range shedderFlags {
			if set[f.flag] {
				return c, fmt.Errorf("-%s and -shedder-config: the file has the whole Shedder config; set %q there", f.flag, f.field)
			}
		}
		raw, err := os.ReadFile(c.shedderConfig)
		if err != nil {
			return c, fmt.Errorf("-shedder-config: %w", err)
		}
		if err := json.Unmarshal(raw, &c.shed); err != nil {
			return c, fmt.Errorf("-shedder-config %s: %w", c.shedderConfig, err)
		}
		return c, nil
	}
	// The Shedder's config, validated here so that a bad value is reported
	// under the flag that gave it.
	c.shed = interceptors.DefaultShedderConfig()
	c.shed.Limit = c.maxInFlight
	c.shed.Adaptive = c.adaptive
	c.shed.MaxWait = c.maxWait
	c.shed.MaxLimit = max(c.shed.MaxLimit, c.maxInFlight)
	c.shed.LogInterval = c.shedLog
	c.shed.Criticality = c.criticality
	c.shed.SheddableShare = c.sheddableShare
	// Reflection is what an operator reaches for on a loaded server (grpcurl
	// lists and describes through it): never shed, as docs/overload.md's
	// "Sizing the limits" advises. Health is exempt by default.
	c.shed.Exempt = []string{"/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"}
	if err := c.shed.Validate(); err != nil {
		return c, fmt.Errorf("%s: %w", shedFlag(err), err)
	}
	return c, nil
}

// describeShedder prints what the Shedder configured by c does: from the
// config, not the flags, which a -shedder-config file replaces.
func describeShedder(w io.Writer, c interceptors.ShedderConfig) {
	mode := "a fixed limit of"
	if c.Adaptive {
		mode = "an adaptive limit starting at"
	}
	fmt.Fprintf(w, "server: shedding beyond %s %d calls in flight (tap path); stop with Ctrl-C\n", mode, c.Limit)
	if len(c.Criticality) > 0 {
		fmt.Fprintf(w, "server: default criticality %v; sheddable requests may use %v of the limit\n", c.Criticality, c.SheddableShare)
	}
}

// shedFlag names the flag behind the ShedderConfig field that err
// (from Validate) is about.
func shedFlag(err error) string {
	var ce *interceptors.ConfigError
	if !errors.As(err, &ce) {
		return "shedder config"
	}
	switch ce.Field {
	case "limit", "minLimit", "maxLimit":
		return "-max-in-flight"
	case "maxWait":
		return "-max-wait"
	case "logInterval":
		return "-shed-log"
	case "criticality":
		return "-criticality"
	case "sheddableShare":
		return "-sheddable-share"
	}
	return "shedder config (" + ce.Field + ")"
}

// parseCriticality parses -criticality: comma-separated
// method=critical|sheddable entries. The method keys are checked by
// ShedderConfig.Validate.
func parseCriticality(v string) (map[string]interceptors.Criticality, error) {
	m := map[string]interceptors.Criticality{}
	if strings.TrimSpace(v) == "" {
		return m, nil
	}
	for entry := range strings.SplitSeq(v, ",") {
		entry = strings.TrimSpace(entry)
		method, name, ok := strings.Cut(entry, "=")
		if !ok || method == "" {
			return nil, fmt.Errorf("%q is not method=critical or method=sheddable", entry)
		}
		var c interceptors.Criticality
		if err := c.UnmarshalText([]byte(name)); err != nil {
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		if _, dup := m[method]; dup {
			return nil, fmt.Errorf("%s is given twice", method)
		}
		m[method] = c
	}
	return m, nil
}

// Run parses args as the server's flags, serves until ctx is done and then
// stops gracefully, printing what it does to stdout. ready, if not nil, is
// called with the listening address once the server accepts connections.
// A -h flag returns flag.ErrHelp after printing the usage.
func Run(ctx context.Context, args []string, stdout io.Writer, ready func(addr string)) error {
	cfg, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}

	// TLS: a certificate (reloaded from files, or self-signed), ticket keys
	// from a rotator, and a count of full and resumed handshakes.
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	if cfg.certFile != "" {
		reloader, err := credentials.NewCertificateReloader(cfg.certFile, cfg.keyFile,
			credentials.WithErrorHandler(func(err error) { fmt.Fprintln(stdout, "server: certificate reload:", err) }))
		if err != nil {
			return err
		}
		defer reloader.Close()
		base.GetCertificate = reloader.GetCertificate
	} else {
		self, err := selfsigned.New("grpcreuse example server", 24*time.Hour)
		if err != nil {
			return err
		}
		if err := os.WriteFile(cfg.caOut, self.PEM, 0o644); err != nil {
			return fmt.Errorf("-ca-out: %w", err)
		}
		base.Certificates = []tls.Certificate{self.TLS}
	}
	var stats serverStats
	base.VerifyConnection = func(cs tls.ConnectionState) error {
		if cs.DidResume {
			stats.resumed.Add(1)
		} else {
			stats.full.Add(1)
		}
		return nil
	}
	keyOpts := []credentials.TicketKeyOption{credentials.WithRotationInterval(cfg.ticketRotation)}
	if cfg.ticketKeyFile != "" {
		keyOpts = []credentials.TicketKeyOption{credentials.WithTicketKeyFile(cfg.ticketKeyFile),
			credentials.WithErrorHandler(func(err error) { fmt.Fprintln(stdout, "server: ticket keys:", err) })}
	}
	rotator, err := credentials.NewTicketKeyRotator(keyOpts...)
	if err != nil {
		return err
	}
	defer rotator.Close()
	serverTLS, err := rotator.ServerConfig(base)
	if err != nil {
		return err
	}

	// Load shedding, installed as recommended (the tap path, which rejects
	// before grpc-go builds the stream, and the interceptors): a fixed or
	// adaptive in-flight limit, plus requests whose deadline is shorter
	// than the method's recent service time.
	// (cfg.shed was validated with the flags.)
	shedder, err := interceptors.NewShedder(interceptors.WithShedderConfig(cfg.shed))
	if err != nil {
		return fmt.Errorf("%s: %w", shedFlag(err), err)
	}

	opts := append(clientconn.KeepaliveDefault().ServerOptions(), // accepts the clients' KeepaliveDefault pings
		grpc.Creds(grpccreds.NewTLS(serverTLS)),
		grpc.MaxConcurrentStreams(uint32(cfg.maxConcurrentStreams)),
	)
	opts = append(opts, shedder.ServerOptions()...)
	srv := grpc.NewServer(opts...)
	svc := &testService{calls: &stats.calls, work: cfg.work, jitter: cfg.workJitter}
	if cfg.workSlots > 0 {
		svc.slots = make(chan struct{}, cfg.workSlots)
	}
	testpb.RegisterTestServiceServer(srv, svc)
	healthSrv := health.NewServer()
	healthSrv.SetServingStatus("grpc.testing.TestService", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, healthSrv)
	reflection.Register(srv)

	lis, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(countingListener{Listener: lis, n: &stats.conns}) }()

	fmt.Fprintf(stdout, "server: serving grpc.testing.TestService, grpc.health.v1.Health and reflection on %s\n", lis.Addr())
	if cfg.certFile == "" {
		fmt.Fprintf(stdout, "server: self-signed certificate for localhost and 127.0.0.1 written to %s\n", cfg.caOut)
	}
	if cfg.ticketKeyFile != "" {
		fmt.Fprintf(stdout, "server: session-ticket keys from %s\n", cfg.ticketKeyFile)
	} else {
		fmt.Fprintf(stdout, "server: random session-ticket keys, rotated every %v\n", cfg.ticketRotation)
	}
	describeShedder(stdout, cfg.shed)
	if cfg.work > 0 || cfg.workJitter > 0 {
		fmt.Fprintf(stdout, "server: UnaryCall works %v + [0, %v) (slots: %d, 0 = unbounded)\n", cfg.work, cfg.workJitter, cfg.workSlots)
	}
	if ready != nil {
		ready(lis.Addr().String())
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// Graceful stop: health says NOT_SERVING, calls in flight finish
	// (bounded by -grace), then connections close.
	fmt.Fprintln(stdout, "server: stopping gracefully")
	healthSrv.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(cfg.grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		fmt.Fprintf(stdout, "server: calls still running after %v; stopping them\n", cfg.grace)
		srv.Stop()
		<-stopped
	}
	<-served // Serve returns nil after a stop
	snap := shedder.Snapshot()
	fmt.Fprintf(stdout, "server: stopped after %d calls on %d connections (TLS handshakes: %d full, %d resumed); shed: %v\n",
		stats.calls.Load(), stats.conns.Load(), stats.full.Load(), stats.resumed.Load(), snap.Shed)
	return nil
}

// serverStats is what the server counts.
type serverStats struct {
	calls, conns, full, resumed atomic.Int64
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// testService implements grpc.testing.TestService's unary and server
// streaming calls by echoing; UnaryCall first does the simulated work.
type testService struct {
	testpb.UnimplementedTestServiceServer
	calls        *atomic.Int64
	work, jitter time.Duration
	slots        chan struct{} // nil: unbounded
}

// simulate waits for a work slot (if bounded), then works for work plus
// a random jitter: done whether or not the caller still waits, as real
// work mostly is.
func (s *testService) simulate() {
	d := s.work
	if s.jitter > 0 {
		d += rand.N(s.jitter)
	}
	if d <= 0 {
		return
	}
	if s.slots != nil {
		s.slots <- struct{}{}
		defer func() { <-s.slots }()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
}

func (s *testService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	s.calls.Add(1)
	return &testpb.Empty{}, nil
}

func (s *testService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	s.simulate()
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (s *testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	for range req.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
	return nil
}
