package clientconn_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/grpcreuse/grpcreuse/telemetry"
	"github.com/grpcreuse/grpcreuse/telemetry/opentelemetry"

	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/grpcreuse/grpcreuse/balancer"
	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/clientconn"
	grcreds "github.com/grpcreuse/grpcreuse/credentials"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// uncomparableCreds is transport credentials that cannot be a map key.
type uncomparableCreds struct {
	grpccreds.TransportCredentials
	_ []int
}

// TestBadInputEveryConstructor is the one place that feeds bad input to
// every public constructor and parser of the module: each must return an
// error naming the field or option and the value, must not panic, and
// must leave nothing running (leakcheck in TestMain; Factories are closed).
func TestBadInputEveryConstructor(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	certPEM, keyPEM := pki.LeafPEM(t)
	_, otherKeyPEM := pki.LeafPEM(t)
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		t.Fatal(err)
	}
	goodKey := base64.StdEncoding.EncodeToString(secret[:])
	missing := filepath.Join(dir, "missing.pem")
	verifyPeer := &tls.Config{VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return nil }}
	cache, err := grcreds.NewSessionCache()
	if err != nil {
		t.Fatal(err)
	}

	// factory builds a Factory from opts, Gets target (default a closed
	// local port) and closes it; a failed Get must leave nothing behind.
	factory := func(opts []clientconn.Option, target string, getOpts ...clientconn.GetOption) func(*testing.T) error {
		return func(t *testing.T) error {
			f, err := clientconn.New(opts...)
			if err != nil {
				return err // validated at construction, as grpc.NewClient does
			}
			defer f.Close()
			if target == "" {
				target = "127.0.0.1:1"
			}
			c, err := f.Get(context.Background(), target, getOpts...)
			if c != nil {
				c.Close()
			}
			if st := f.Stats(); err != nil && (st.Open != 0 || st.Handles != 0 || c != nil) {
				t.Errorf("failed Get left a half-built connection: Stats %+v, Conn %v", st, c)
			}
			return err
		}
	}
	opts := func(o ...clientconn.Option) []clientconn.Option { return append([]clientconn.Option{plaintext}, o...) }
	sc := func(doc string) []clientconn.Option { return opts(clientconn.WithServiceConfig(doc)) }
	policy := func(body string) string {
		return `{"grpcreuse":{"methodConfig":[{"name":[{}],` + body + `}]}}`
	}
	lb := func(body string) string {
		return `{"loadBalancingConfig":[{"` + balancer.Name + `":` + body + `}]}`
	}
	rotator := func(o ...grcreds.TicketKeyOption) func(*testing.T) error {
		return func(*testing.T) error {
			r, err := grcreds.NewTicketKeyRotator(o...)
			if r != nil {
				r.Close()
			}
			return err
		}
	}
	reloader := func(cert, key string, o ...grcreds.CertificateReloaderOption) func(*testing.T) error {
		return func(*testing.T) error {
			r, err := grcreds.NewCertificateReloader(cert, key, o...)
			if r != nil {
				r.Close()
			}
			return err
		}
	}
	breakerCfg := func(f func(*breaker.Config)) func(*testing.T) error {
		return func(*testing.T) error {
			c := breaker.DefaultConfig()
			f(&c)
			_, err := breaker.New(breaker.WithConfig(c))
			return err
		}
	}
	limiterCfg := func(f func(*interceptors.LimiterConfig)) func(*testing.T) error {
		return func(*testing.T) error {
			c := interceptors.DefaultLimiterConfig()
			f(&c)
			_, err := interceptors.NewLimiter(interceptors.WithLimiterConfig(c))
			return err
		}
	}
	shedderCfg := func(f func(*interceptors.ShedderConfig)) func(*testing.T) error {
		return func(*testing.T) error {
			c := interceptors.DefaultShedderConfig()
			f(&c)
			_, err := interceptors.NewShedder(interceptors.WithShedderConfig(c))
			return err
		}
	}
	split := func(doc string) func(*testing.T) error {
		return func(*testing.T) error { _, _, err := interceptors.SplitServiceConfig(doc); return err }
	}
	parseLB := func(doc string) func(*testing.T) error {
		return func(*testing.T) error { _, err := balancer.ParseConfig(json.RawMessage(doc)); return err }
	}

	tests := []struct {
		name    string
		run     func(*testing.T) error
		wantErr []string // every substring must appear
	}{
		// clientconn.New options, reported by New.
		{name: "Factory/nil option", run: factory([]clientconn.Option{plaintext, nil}, ""), wantErr: []string{"option 1 is nil"}},
		{name: "Factory/negative idle timeout", run: factory(opts(clientconn.WithIdleTimeout(-time.Second)), ""), wantErr: []string{"WithIdleTimeout is -1s; must be positive"}},
		{name: "Factory/negative max idle", run: factory(opts(clientconn.WithMaxIdle(-1)), ""), wantErr: []string{"WithMaxIdle is -1; must be 0 or more"}},
		{name: "Factory/zero max age", run: factory(opts(clientconn.WithMaxConnectionAge(0)), ""), wantErr: []string{"WithMaxConnectionAge is 0s"}},
		{name: "Factory/negative drain", run: factory(opts(clientconn.WithDrainTimeout(-time.Millisecond)), ""), wantErr: []string{"WithDrainTimeout is -1ms"}},
		{name: "Factory/nil TLS config", run: factory([]clientconn.Option{clientconn.WithTLS(nil)}, ""), wantErr: []string{"WithTLS: config is nil"}},
		{name: "Factory/TLS with VerifyPeerCertificate", run: factory([]clientconn.Option{clientconn.WithTLS(verifyPeer)}, ""), wantErr: []string{"WithTLS", "VerifyPeerCertificate", "VerifyConnection"}},
		{name: "Factory/nil credentials", run: factory([]clientconn.Option{clientconn.WithTransportCredentials(nil)}, ""), wantErr: []string{"WithTransportCredentials: credentials are nil"}},
		{name: "Factory/uncomparable credentials", run: factory([]clientconn.Option{clientconn.WithTransportCredentials(uncomparableCreds{TransportCredentials: insecure.NewCredentials()})}, ""),
			wantErr: []string{"WithTransportCredentials", "clientconn_test.uncomparableCreds are not comparable"}},
		{name: "Factory/no credentials", run: factory(nil, ""), wantErr: []string{"no transport credentials", "127.0.0.1:1"}},
		{name: "Factory/TLS and credentials", run: factory(opts(clientconn.WithTLS(&tls.Config{})), ""), wantErr: []string{"WithTLS and WithTransportCredentials are both set"}},
		{name: "Factory/session cache without TLS", run: factory(opts(clientconn.WithSessionCache(cache)), ""), wantErr: []string{"WithSessionCache needs WithTLS"}},
		{name: "Factory/nil session cache", run: factory([]clientconn.Option{clientconn.WithTLS(&tls.Config{}), clientconn.WithSessionCache(nil)}, ""), wantErr: []string{"WithSessionCache: cache is nil"}},
		{name: "Factory/keepalive below grpc minimum", run: factory(opts(clientconn.WithKeepalive(clientconn.Keepalive{Client: keepalive.ClientParameters{Time: 5 * time.Second}})), ""),
			wantErr: []string{"WithKeepalive", "Time is 5s"}},
		{name: "Factory/negative keepalive", run: factory(opts(clientconn.WithKeepalive(clientconn.Keepalive{Client: keepalive.ClientParameters{Timeout: -time.Second}})), ""),
			wantErr: []string{"WithKeepalive", "Timeout -1s must not be negative"}},
		{name: "Factory/keepalive the server would refuse", run: factory(opts(clientconn.WithKeepalive(clientconn.Keepalive{Client: clientconn.KeepaliveDefault().Client})), ""),
			wantErr: []string{"WithKeepalive", "Time 1m0s", "MinTime 5m0s", "too_many_pings"}},
		{name: "Factory/nil dialer", run: factory(opts(clientconn.WithDialer(nil)), ""), wantErr: []string{"WithDialer: dialer is nil"}},
		{name: "Factory/nil observer", run: factory(opts(clientconn.WithObserver(nil)), ""), wantErr: []string{"WithObserver: observer is nil"}},
		{name: "Factory/nil meter provider", run: factory(opts(clientconn.WithMeterProvider(nil)), ""), wantErr: []string{"WithMeterProvider: provider is nil"}},
		{name: "Factory/nil tracer provider", run: factory(opts(clientconn.WithTracerProvider(nil)), ""), wantErr: []string{"WithTracerProvider: provider is nil"}},
		{name: "Factory/observer and meter provider", run: factory(opts(clientconn.WithObserver(telemetry.Nop{}), clientconn.WithMeterProvider(noop.NewMeterProvider())), ""),
			wantErr: []string{"WithObserver and WithMeterProvider/WithTracerProvider are both set"}},
		{name: "Factory/preconnect garbage target", run: factory(opts(clientconn.WithPreconnect("a:b:c")), ""), wantErr: []string{"WithPreconnect", `"a:b:c"`}},
		{name: "Factory/preconnect empty target", run: factory(opts(clientconn.WithPreconnect("")), ""), wantErr: []string{"WithPreconnect", "target is empty"}},

		// clientconn service config: gRPC's part, the balancer's and grpcreuse's policy.
		{name: "ServiceConfig/not JSON", run: factory(sc(`{"loadBalancingConfig":`), ""), wantErr: []string{"WithServiceConfig: service config is not valid JSON"}},
		{name: "ServiceConfig/not an object", run: factory(sc(`[1]`), ""), wantErr: []string{"service config is [1]; must be a JSON object"}},
		{name: "ServiceConfig/unknown policy", run: factory(sc(`{"loadBalancingConfig":[{"no_such_policy":{}}]}`), ""), wantErr: []string{"no_such_policy"}},
		{name: "ServiceConfig/loadBalancingConfig wrong type", run: factory(sc(`{"loadBalancingConfig":5}`), ""), wantErr: []string{`"loadBalancingConfig" is 5`}},
		{name: "ServiceConfig/grpc timeout malformed", run: factory(sc(`{"methodConfig":[{"name":[{"service":"s"}],"timeout":"1m"}]}`), ""), wantErr: []string{"1m"}},
		{name: "ServiceConfig/balancer out of range", run: factory(sc(lb(`{"choiceCount":1}`)), ""), wantErr: []string{`"choiceCount" is 1; must be between 2 and 10`}},
		{name: "ServiceConfig/balancer duration a number", run: factory(sc(lb(`{"subchannelIdleTimeout":30}`)), ""), wantErr: []string{`"subchannelIdleTimeout" is 30; must be a duration string`}},
		{name: "ServiceConfig/policy duration malformed", run: factory(sc(policy(`"circuitBreaker":{"openTimeout":"10"}`)), ""), wantErr: []string{`"circuitBreaker.openTimeout" is "10"`}},
		{name: "ServiceConfig/policy unknown algorithm", run: factory(sc(policy(`"concurrencyLimit":{"algorithm":"vegas"}`)), ""), wantErr: []string{`"concurrencyLimit.algorithm" is "vegas"; must be "fixed" or "aimd"`}},
		{name: "ServiceConfig/policy wrong type", run: factory(sc(policy(`"concurrencyLimit":{"limit":"10"}`)), ""), wantErr: []string{`"concurrencyLimit.limit" is "10"`}},

		// Get: targets and per-Get options.
		{name: "Get/empty target", run: factory(opts(), " "), wantErr: []string{`" "`, "contains white space"}},
		{name: "Get/garbage target", run: factory(opts(), "a:b:c"), wantErr: []string{`"a:b:c" is not host, host:port`}},
		{name: "Get/unknown scheme", run: factory(opts(), "nosuchscheme://x"), wantErr: []string{`no resolver is registered for scheme "nosuchscheme"`}},
		{name: "Get/trailing colon", run: factory(opts(), "backend:"), wantErr: []string{`"backend:" ends with a colon`}},
		{name: "Get/no host", run: factory(opts(), "dns:///"), wantErr: []string{"dns:///", "missing host"}},
		{name: "Get/port out of range", run: factory(opts(), "backend:99999"), wantErr: []string{`"backend:99999"`, "port 99999 is out of range 1-65535"}},
		{name: "Get/negative port", run: factory(opts(), "backend:-1"), wantErr: []string{`"backend:-1"`, "port -1 is out of range"}},
		{name: "Get/control character", run: factory(opts(), "back\x00end:1"), wantErr: []string{`back\x00end:1`}},
		{name: "Get/bad target service config", run: factory(opts(), "", clientconn.WithTargetServiceConfig("[")), wantErr: []string{"WithTargetServiceConfig: service config is not valid JSON"}},
		{name: "Get/bad target policy", run: factory(opts(), "", clientconn.WithTargetServiceConfig(policy(`"concurrencyLimit":{"limit":-1}`))), wantErr: []string{`"concurrencyLimit.limit" is -1`}},
		{name: "Get/nil target credentials", run: factory(opts(), "", clientconn.WithTargetCredentials(nil)), wantErr: []string{"WithTargetCredentials: credentials are nil"}},
		{name: "Get/uncomparable target credentials", run: factory(opts(), "", clientconn.WithTargetCredentials(uncomparableCreds{})), wantErr: []string{"WithTargetCredentials", "are not comparable"}},

		// credentials.NewSessionCache and NewTLS.
		{name: "SessionCache/zero capacity", run: func(*testing.T) error { _, err := grcreds.NewSessionCache(grcreds.WithCapacity(0)); return err }, wantErr: []string{"WithCapacity is 0; must be at least 1"}},
		{name: "SessionCache/negative TTL", run: func(*testing.T) error { _, err := grcreds.NewSessionCache(grcreds.WithTTL(-time.Hour)); return err }, wantErr: []string{"WithTTL is -1h0m0s; must be positive"}},
		{name: "NewTLS/nil config", run: func(*testing.T) error { _, err := grcreds.NewTLS(nil); return err }, wantErr: []string{"NewTLS: tls.Config is nil"}},
		{name: "NewTLS/VerifyPeerCertificate", run: func(*testing.T) error { _, err := grcreds.NewTLS(verifyPeer); return err }, wantErr: []string{"VerifyPeerCertificate", "VerifyConnection"}},
		{name: "NewTLS/two session caches", run: func(*testing.T) error {
			_, err := grcreds.NewTLS(&tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(1)}, grcreds.WithSessionCache(cache))
			return err
		}, wantErr: []string{"WithSessionCache", "tls.Config.ClientSessionCache"}},

		// credentials.NewTicketKeyRotator, with corrupt key files.
		{name: "TicketKeys/zero interval", run: rotator(grcreds.WithRotationInterval(0)), wantErr: []string{"WithRotationInterval is 0s; must be at least 1ms"}},
		{name: "TicketKeys/too many previous keys", run: rotator(grcreds.WithPreviousKeys(101)), wantErr: []string{"WithPreviousKeys is 101; must be between 0 and 100"}},
		{name: "TicketKeys/negative poll interval", run: rotator(grcreds.WithPollInterval(-time.Second)), wantErr: []string{"WithPollInterval is -1s; must be at least 1ms"}},
		{name: "TicketKeys/empty file name", run: rotator(grcreds.WithTicketKeyFile("")), wantErr: []string{`WithTicketKeyFile is ""`}},
		{name: "TicketKeys/missing file", run: rotator(grcreds.WithTicketKeyFile(missing)), wantErr: []string{missing, "no such file"}},
		{name: "TicketKeys/empty file", run: rotator(grcreds.WithTicketKeyFile(file("empty.keys", nil))), wantErr: []string{"empty.keys", "no keys"}},
		{name: "TicketKeys/not base64", run: rotator(grcreds.WithTicketKeyFile(file("garbage.keys", []byte(goodKey+"\n%%% not base64 %%%\n")))), wantErr: []string{"garbage.keys", "line 2: not standard base64"}},
		{name: "TicketKeys/short key", run: rotator(grcreds.WithTicketKeyFile(file("short.keys", []byte(base64.StdEncoding.EncodeToString(secret[:20])+"\n")))), wantErr: []string{"short.keys", "line 1: key is 20 bytes; want 32"}},
		{name: "TicketKeys/all-zero key", run: rotator(grcreds.WithTicketKeyFile(file("zero.keys", []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n")))), wantErr: []string{"zero.keys", "line 1"}},
		{name: "TicketKeys/binary file", run: rotator(grcreds.WithTicketKeyFile(file("binary.keys", secret[:]))), wantErr: []string{"binary.keys", "line 1"}},
		{name: "TicketKeys/file and interval", run: rotator(grcreds.WithTicketKeyFile(file("ok.keys", []byte(goodKey+"\n"))), grcreds.WithRotationInterval(time.Hour)),
			wantErr: []string{"WithRotationInterval cannot be combined with WithTicketKeyFile"}},
		{name: "TicketKeys/ServerConfig nil", run: func(*testing.T) error {
			r, err := grcreds.NewTicketKeyRotator()
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = r.ServerConfig(nil)
			return err
		}, wantErr: []string{"ServerConfig: tls.Config is nil"}},

		// credentials.NewCertificateReloader, with corrupt certificate and key files.
		{name: "CertReloader/no cert file name", run: reloader("", file("k1.pem", keyPEM)), wantErr: []string{`certFile is ""`}},
		{name: "CertReloader/no key file name", run: reloader(file("c1.pem", certPEM), ""), wantErr: []string{`keyFile is ""`}},
		{name: "CertReloader/missing cert", run: reloader(missing, file("k2.pem", keyPEM)), wantErr: []string{missing, "no such file"}},
		{name: "CertReloader/missing key", run: reloader(file("c2.pem", certPEM), missing), wantErr: []string{missing, "no such file"}},
		{name: "CertReloader/garbage cert", run: reloader(file("garbage-cert.pem", []byte("garbage")), file("k3.pem", keyPEM)), wantErr: []string{"garbage-cert.pem"}},
		{name: "CertReloader/truncated cert", run: reloader(file("truncated-cert.pem", certPEM[:len(certPEM)/2]), file("k4.pem", keyPEM)), wantErr: []string{"truncated-cert.pem"}},
		{name: "CertReloader/empty cert", run: reloader(file("empty-cert.pem", nil), file("k5.pem", keyPEM)), wantErr: []string{"empty-cert.pem"}},
		{name: "CertReloader/garbage key", run: reloader(file("c3.pem", certPEM), file("garbage-key.pem", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))), wantErr: []string{"garbage-key.pem"}},
		{name: "CertReloader/files swapped", run: reloader(file("key-as-cert.pem", keyPEM), file("cert-as-key.pem", certPEM)), wantErr: []string{"key-as-cert.pem"}},
		{name: "CertReloader/mismatched key", run: reloader(file("c4.pem", certPEM), file("other-key.pem", otherKeyPEM)), wantErr: []string{"other-key.pem", "private key does not match public key"}},
		{name: "CertReloader/zero poll interval", run: reloader(file("c5.pem", certPEM), file("k6.pem", keyPEM), grcreds.WithPollInterval(0)), wantErr: []string{"WithPollInterval is 0s; must be at least 1ms"}},

		// breaker.New.
		{name: "breaker/nil option", run: func(*testing.T) error { _, err := breaker.New(nil); return err }, wantErr: []string{"option", "nil"}},
		{name: "breaker/zero Config", run: func(*testing.T) error { _, err := breaker.New(breaker.WithConfig(breaker.Config{})); return err }, wantErr: []string{"breaker: \""}},
		{name: "breaker/ratio above 1", run: breakerCfg(func(c *breaker.Config) { c.FailureRatio = 1.5 }), wantErr: []string{`breaker: "failureRatio" is 1.5; must be between 0 and 1`}},
		{name: "breaker/negative consecutive failures", run: breakerCfg(func(c *breaker.Config) { c.ConsecutiveFailures = -1 }), wantErr: []string{`"consecutiveFailures" is -1`}},
		{name: "breaker/zero open timeout", run: breakerCfg(func(c *breaker.Config) { c.OpenTimeout = 0 }), wantErr: []string{`"openTimeout" is "0s"`}},
		{name: "breaker/negative window", run: breakerCfg(func(c *breaker.Config) { c.Window = -time.Second }), wantErr: []string{`"window" is "-1s"`}},
		{name: "breaker/OK as failure code", run: breakerCfg(func(c *breaker.Config) { c.FailureCodes = []codes.Code{codes.OK} }), wantErr: []string{`"failureCodes[0]" is "OK"`}},
		{name: "breaker/unknown code", run: breakerCfg(func(c *breaker.Config) { c.FailureCodes = []codes.Code{99} }), wantErr: []string{`"failureCodes[0]" is 99`}},
		{name: "breaker/zero probes", run: breakerCfg(func(c *breaker.Config) { c.HalfOpenProbes = 0 }), wantErr: []string{`"halfOpenProbes" is 0`}},
		{name: "breaker/zero max breakers", run: breakerCfg(func(c *breaker.Config) { c.MaxBreakers = 0 }), wantErr: []string{`"maxBreakers" is 0`}},
		{name: "breaker/nil observer", run: func(*testing.T) error { _, err := breaker.New(breaker.WithObserver(nil)); return err }, wantErr: []string{"WithObserver", "nil"}},

		// interceptors.NewLimiter and NewShedder.
		{name: "Limiter/nil option", run: func(*testing.T) error { _, err := interceptors.NewLimiter(nil); return err }, wantErr: []string{"option", "nil"}},
		{name: "Limiter/zero limit", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.Limit = 0 }), wantErr: []string{`interceptors: "limit" is 0; must be between 1 and`}},
		{name: "Limiter/negative queue", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.MaxQueued = -1 }), wantErr: []string{`"maxQueued" is -1`}},
		{name: "Limiter/zero max wait", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.MaxWait = 0 }), wantErr: []string{`"maxWait" is "0s"`}},
		{name: "Limiter/unknown algorithm", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.Algorithm = 7 }), wantErr: []string{`"algorithm" is "Algorithm(7)"; must be "fixed" or "aimd"`}},
		{name: "Limiter/unknown scope", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.Scope = 5 }), wantErr: []string{`"scope" is "Scope(5)"; must be "target" or "method"`}},
		{name: "Limiter/AIMD backoff 1", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.Algorithm, c.BackoffRatio = interceptors.AIMD, 1 }), wantErr: []string{`"backoffRatio" is 1`}},
		{name: "Limiter/AIMD min above limit", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.Algorithm, c.Limit, c.MinLimit = interceptors.AIMD, 5, 6 }), wantErr: []string{`"minLimit" is 6`}},
		{name: "Limiter/zero max keys", run: limiterCfg(func(c *interceptors.LimiterConfig) { c.MaxKeys = 0 }), wantErr: []string{`"maxKeys" is 0`}},
		{name: "Limiter/nil observer", run: func(*testing.T) error {
			_, err := interceptors.NewLimiter(interceptors.WithLimiterObserver(nil))
			return err
		}, wantErr: []string{"WithLimiterObserver", "nil"}},
		{name: "Shedder/nil option", run: func(*testing.T) error { _, err := interceptors.NewShedder(nil); return err }, wantErr: []string{"option", "nil"}},
		{name: "Shedder/negative limit", run: shedderCfg(func(c *interceptors.ShedderConfig) { c.Limit = -1 }), wantErr: []string{`"limit" is -1`}},
		{name: "Shedder/negative min samples", run: shedderCfg(func(c *interceptors.ShedderConfig) { c.MinSamples = -1 }), wantErr: []string{`"minSamples" is -1`}},
		{name: "Shedder/unknown algorithm", run: shedderCfg(func(c *interceptors.ShedderConfig) { c.Algorithm = 9 }), wantErr: []string{`"algorithm" is "Algorithm(9)"`}},
		{name: "Shedder/nil observer", run: func(*testing.T) error {
			_, err := interceptors.NewShedder(interceptors.WithShedderObserver(nil))
			return err
		}, wantErr: []string{"WithShedderObserver(nil)"}},

		// interceptors.SplitServiceConfig and ParsePolicy.
		{name: "Policy/not JSON", run: split(`{"grpcreuse":`), wantErr: []string{"grpcreuse: service config is not valid JSON"}},
		{name: "Policy/not an object", run: split(`{"grpcreuse":[]}`), wantErr: []string{`"grpcreuse" is []; must be a JSON object`}},
		{name: "Policy/methodConfig wrong type", run: split(`{"grpcreuse":{"methodConfig":5}}`), wantErr: []string{`"methodConfig" is 5; must be a JSON array`}},
		{name: "Policy/out of range", run: split(policy(`"circuitBreaker":{"failureRatio":-0.1}`)), wantErr: []string{`"circuitBreaker.failureRatio" is -0.1; must be between 0 and 1`}},
		{name: "Policy/malformed duration", run: split(policy(`"concurrencyLimit":{"maxWait":"100ms"}`)), wantErr: []string{`"concurrencyLimit.maxWait" is "100ms"`}},
		{name: "Policy/unknown code name", run: split(policy(`"circuitBreaker":{"failureCodes":["BROKEN"]}`)), wantErr: []string{`"circuitBreaker.failureCodes[0]" is "BROKEN"`}},
		{name: "Policy/unknown scope", run: split(policy(`"circuitBreaker":{"scope":"host"}`)), wantErr: []string{`"circuitBreaker.scope" is "host"`}},
		{name: "ParsePolicy/wrong type", run: func(*testing.T) error { _, err := interceptors.ParsePolicy(json.RawMessage(`"x"`)); return err }, wantErr: []string{`"grpcreuse" is "x"`}},

		// balancer.ParseConfig.
		{name: "balancer/not JSON", run: parseLB(`{"choiceCount":`), wantErr: []string{balancer.Name}},
		{name: "balancer/not an object", run: parseLB(`"x"`), wantErr: []string{`"config" is "x"; must be a JSON object`}},
		{name: "balancer/wrong type", run: parseLB(`{"subchannelsPerEndpoint":"2"}`), wantErr: []string{`"subchannelsPerEndpoint" is "2"; must be a whole number`}},
		{name: "balancer/out of range", run: parseLB(`{"maxSubchannelsPerEndpoint":65}`), wantErr: []string{`"maxSubchannelsPerEndpoint" is 65; must be between 1 and 64`}},
		{name: "balancer/malformed duration", run: parseLB(`{"subchannelIdleTimeout":"1m"}`), wantErr: []string{`"subchannelIdleTimeout" is "1m"; must be a duration string`}},
		{name: "balancer/negative duration", run: parseLB(`{"ejection":{"baseEjectionTime":"-5s"}}`), wantErr: []string{`"ejection.baseEjectionTime" is "-5s"`}},
		{name: "balancer/percent above 100", run: parseLB(`{"ejection":{"maxEjectionPercent":101}}`), wantErr: []string{`"ejection.maxEjectionPercent" is 101`}},
		{name: "balancer/ejection wrong type", run: parseLB(`{"ejection":[]}`), wantErr: []string{`"ejection" is []; must be a JSON object`}},

		// opentelemetry.New.
		{name: "telemetry/nil option", run: func(*testing.T) error { _, err := opentelemetry.New(nil); return err }, wantErr: []string{"option", "nil"}},
		{name: "telemetry/nil meter provider", run: func(*testing.T) error { _, err := opentelemetry.New(opentelemetry.WithMeterProvider(nil)); return err }, wantErr: []string{"WithMeterProvider: provider is nil"}},
		{name: "telemetry/nil tracer provider", run: func(*testing.T) error { _, err := opentelemetry.New(opentelemetry.WithTracerProvider(nil)); return err }, wantErr: []string{"WithTracerProvider: provider is nil"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("panicked: %v\n%s", r, debug.Stack())
					}
				}()
				err = tt.run(t)
			}()
			if err == nil {
				t.Fatalf("no error; want one containing %q", tt.wantErr)
			}
			t.Logf("error: %v", err)
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\nwant it to contain %q", err, want)
				}
			}
		})
	}
}
