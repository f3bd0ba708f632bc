package exampleserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// TestFlagErrors: every bad flag is an error naming it, never a panic, and
// nothing is started.
func TestFlagErrors(t *testing.T) {
	dir := t.TempDir()
	badKeys := filepath.Join(dir, "keys")
	if err := os.WriteFile(badKeys, []byte("not base64!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	shedFile := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	typo := shedFile("typo.json", `{"limit": 8, "maxWiat": "0.01s"}`)
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"shedder config typo", []string{"-shedder-config", typo}, `-shedder-config ` + typo + `: interceptors: "maxWiat" is not a known field; did you mean "maxWait"?`},
		{"shedder config bad value", []string{"-shedder-config", shedFile("bad.json", `{"limit": 0}`)}, `interceptors: "limit" is 0; must be between 1 and`},
		{"shedder config not JSON", []string{"-shedder-config", shedFile("notjson.json", `limit: 8`)}, `notjson.json: invalid character 'l' looking for beginning of value`},
		{"shedder config missing", []string{"-shedder-config", filepath.Join(dir, "none.json")}, "-shedder-config: open "},
		{"shedder config and a shedder flag", []string{"-shedder-config", typo, "-max-in-flight", "8"}, `-max-in-flight and -shedder-config: the file has the whole Shedder config; set "limit" there`},
		{"cert without key", []string{"-cert", "c.pem"}, "-cert and -key go together"},
		{"missing cert files", []string{"-cert", filepath.Join(dir, "c.pem"), "-key", filepath.Join(dir, "k.pem")}, "c.pem"},
		{"ca-out with cert", []string{"-cert", "c.pem", "-key", "k.pem", "-ca-out", "x"}, "-ca-out is for the self-signed certificate"},
		{"rotation with key file", []string{"-ticket-key-file", badKeys, "-ticket-rotation", "1h"}, "-ticket-rotation is for random keys"},
		{"bad key file", []string{"-ticket-key-file", badKeys, "-ca-out", filepath.Join(dir, "ca.pem")}, "line 1"},
		{"rotation", []string{"-ticket-rotation", "0s"}, "-ticket-rotation is 0s; must be positive"},
		{"max in flight", []string{"-max-in-flight", "0"}, "-max-in-flight is 0; must be at least 1"},
		{"max wait", []string{"-max-wait", "-1ms"}, "-max-wait is -1ms; must not be negative"},
		{"streams", []string{"-max-concurrent-streams", "0"}, "-max-concurrent-streams is 0"},
		{"grace", []string{"-grace", "0s"}, "-grace is 0s; must be positive"},
		{"negative grace", []string{"-grace", "-1s"}, "-grace is -1s; must be positive"},
		{"rotation below a second", []string{"-ticket-rotation", "1ns"}, "-ticket-rotation is 1ns; must be at least 1s"},
		{"negative rotation", []string{"-ticket-rotation", "-1h"}, "-ticket-rotation is -1h0m0s; must be positive"},
		{"negative work", []string{"-work", "-1ms"}, "-work is -1ms; must not be negative"},
		{"negative jitter", []string{"-work", "2ms", "-work-jitter", "-1ms"}, "-work-jitter is -1ms; must not be negative"},
		{"negative work slots", []string{"-work", "2ms", "-work-slots", "-1"}, "-work-slots is -1; must not be negative"},
		{"work slots without work", []string{"-work-slots", "4"}, "-work-slots is 4, but there is no work to bound"},
		{"negative shed log", []string{"-shed-log", "-1s"}, "-shed-log is -1s; must not be negative"},
		{"duration without unit", []string{"-work", "2"}, `invalid value "2" for flag -work`},
		{"negative streams", []string{"-max-concurrent-streams", "-1"}, `invalid value "-1" for flag -max-concurrent-streams`},
		{"max in flight too large", []string{"-max-in-flight", "2000000000"}, `-max-in-flight: interceptors: "limit" is 2000000000; must be between 1 and`},
		{"max wait too long", []string{"-max-wait", "2h"}, `-max-wait: interceptors: "maxWait" is "7200s"; must be between "0s" and "3600s"`},
		{"max wait with adaptive", []string{"-adaptive", "-max-wait", "10ms"}, "-max-wait is 10ms; an -adaptive limit never waits"},
		{"unknown criticality", []string{"-criticality", "/grpc.testing.TestService/UnaryCall=low"}, `invalid value "/grpc.testing.TestService/UnaryCall=low" for flag -criticality: /grpc.testing.TestService/UnaryCall: interceptors: criticality "low" is neither "critical" nor "sheddable"`},
		{"criticality upper case", []string{"-criticality", "/grpc.testing.TestService/=Sheddable"}, `/grpc.testing.TestService/: interceptors: criticality "Sheddable" is neither`},
		{"criticality without name", []string{"-criticality", "/grpc.testing.TestService/UnaryCall"}, `"/grpc.testing.TestService/UnaryCall" is not method=critical or method=sheddable`},
		{"criticality twice", []string{"-criticality", "/a.B/C=critical,/a.B/C=sheddable"}, `for flag -criticality: /a.B/C is given twice`},
		{"criticality bad method", []string{"-criticality", "grpc.testing.TestService/UnaryCall=sheddable"}, `-criticality: interceptors: "criticality" is "grpc.testing.TestService/UnaryCall"; keys must be`},
		{"sheddable share zero", []string{"-sheddable-share", "0"}, `-sheddable-share: interceptors: "sheddableShare" is 0; must be above 0 and at most 1`},
		{"sheddable share above 1", []string{"-sheddable-share", "1.5"}, `-sheddable-share: interceptors: "sheddableShare" is 1.5`},
		{"sheddable share NaN", []string{"-sheddable-share", "NaN"}, `-sheddable-share: interceptors: "sheddableShare" is NaN`},
		{"not a number", []string{"-max-in-flight", "many"}, `invalid value "many" for flag -max-in-flight`},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
		{"bad address", []string{"-addr", "127.0.0.1:99999", "-ca-out", filepath.Join(dir, "ca.pem")}, "-addr: "},
		{"unwritable ca-out", []string{"-ca-out", filepath.Join(dir, "missing", "ca.pem")}, "-ca-out: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := Run(context.Background(), tc.args, &out, nil)
			if err == nil {
				t.Fatalf("Run(%q) = nil, want an error", tc.args)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Run(%q) = %q, want it to contain %q", tc.args, err, tc.wantErr)
			}
		})
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"-h"}, &out, nil); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-ticket-key-file") {
		t.Errorf("Run(-h) = %v with output %q; want flag.ErrHelp and the usage", err, &out)
	}
}

// TestFlagsAccepted: values that look odd but mean something are taken
// as documented, and reach the Shedder's config.
func TestFlagsAccepted(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(config) string
	}{
		{"jitter above work (it is added to it)", []string{"-work", "1ms", "-work-jitter", "5ms"}, func(c config) string {
			if c.work != time.Millisecond || c.workJitter != 5*time.Millisecond {
				return "work and jitter not taken"
			}
			return ""
		}},
		{"reflection exempt from shedding", nil, func(c config) string {
			if !slices.Contains(c.shed.Exempt, "/grpc.reflection.v1.ServerReflection/") {
				return fmt.Sprintf("Exempt = %v, want reflection among them (docs/overload.md advises it)", c.shed.Exempt)
			}
			return ""
		}},
		{"jitter alone", []string{"-work-jitter", "1ms", "-work-slots", "2"}, func(c config) string {
			if c.workSlots != 2 {
				return "work slots not taken"
			}
			return ""
		}},
		{"no bound on work slots", []string{"-work", "2ms", "-work-slots", "0"}, func(c config) string {
			if c.workSlots != 0 {
				return "work slots not 0"
			}
			return ""
		}},
		{"max wait 0", []string{"-max-wait", "0s"}, func(c config) string {
			if c.shed.MaxWait != 0 {
				return "MaxWait not 0"
			}
			return ""
		}},
		{"adaptive above the default max limit", []string{"-adaptive", "-max-in-flight", "5000"}, func(c config) string {
			if !c.shed.Adaptive || c.shed.Limit != 5000 || c.shed.MaxLimit != 5000 {
				return "adaptive limit not taken"
			}
			return ""
		}},
		{"criticality", []string{"-criticality", "/grpc.testing.TestService/=sheddable, /grpc.testing.TestService/EmptyCall=critical", "-sheddable-share", "0.5"}, func(c config) string {
			want := map[string]interceptors.Criticality{"/grpc.testing.TestService/": interceptors.Sheddable, "/grpc.testing.TestService/EmptyCall": interceptors.Critical}
			if !maps.Equal(c.shed.Criticality, want) || c.shed.SheddableShare != 0.5 {
				return fmt.Sprintf("Criticality %v, SheddableShare %v; want %v, 0.5", c.shed.Criticality, c.shed.SheddableShare, want)
			}
			return ""
		}},
		{"shedder config file", []string{"-shedder-config", shedderFile(t, `{"limit": 8, "adaptive": true, "criticality": {"/grpc.testing.TestService/": "sheddable"}}`)}, func(c config) string {
			want := interceptors.DefaultShedderConfig()
			want.Limit, want.Adaptive = 8, true
			want.Criticality = map[string]interceptors.Criticality{"/grpc.testing.TestService/": interceptors.Sheddable}
			if !reflect.DeepEqual(c.shed, want) {
				return fmt.Sprintf("config %+v, want %+v", c.shed, want)
			}
			var out strings.Builder // what the server says it does comes from the file too
			describeShedder(&out, c.shed)
			if want := "an adaptive limit starting at 8 calls"; !strings.Contains(out.String(), want) {
				return fmt.Sprintf("the server says %q, want %q", out.String(), want)
			}
			return ""
		}},
		{"empty criticality", []string{"-criticality", ""}, func(c config) string {
			if len(c.shed.Criticality) != 0 {
				return "criticality not empty"
			}
			return ""
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatalf("parseFlags(%q) = %v", tc.args, err)
			}
			if msg := tc.check(c); msg != "" {
				t.Errorf("parseFlags(%q): %s", tc.args, msg)
			}
		})
	}
}

// shedderFile writes a -shedder-config file.
func shedderFile(t *testing.T, doc string) string {
	p := filepath.Join(t.TempDir(), "shedder.json")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServes starts the server, checks health and reflection over TLS with
// the CA it wrote, and stops it gracefully by cancelling its context.
func TestServes(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"-addr", "127.0.0.1:0", "-ca-out", caFile, "-max-in-flight", "8"}, &out, func(a string) { ready <- a })
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}

	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no certificate", caFile)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(grpccreds.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	callCtx, callCancel := context.WithTimeout(ctx, 10*time.Second)
	defer callCancel()
	resp, err := healthpb.NewHealthClient(cc).Check(callCtx, &healthpb.HealthCheckRequest{Service: "grpc.testing.TestService"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v, %v; want SERVING", resp, err)
	}
	if _, err := testpb.NewTestServiceClient(cc).UnaryCall(callCtx, &testpb.SimpleRequest{}); err != nil {
		t.Fatalf("UnaryCall: %v", err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(callCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, s := range r.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	for _, want := range []string{"grpc.testing.TestService", "grpc.health.v1.Health"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %v, want %s among them", services, want)
		}
	}
	stream.CloseSend()

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if got := out.String(); !strings.Contains(got, "server: stopped after 1 calls on 1 connections (TLS handshakes: 1 full, 0 resumed)") {
		t.Errorf("server output:\n%s", got)
	}
}

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
