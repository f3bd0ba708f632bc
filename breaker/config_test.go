package breaker_test

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/grpcreuse/grpcreuse/breaker"
)

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*breaker.Config)
		wantErr string
	}{
		{name: "defaults", edit: func(*breaker.Config) {}},
		{name: "ratio only", edit: func(c *breaker.Config) { c.ConsecutiveFailures = 0; c.FailureRatio = 0.5 }},
		{name: "bad scope", edit: func(c *breaker.Config) { c.Scope = 7 }, wantErr: `breaker: "scope" is "Scope(7)"; must be "method" or "target"`},
		{name: "negative consecutive", edit: func(c *breaker.Config) { c.ConsecutiveFailures = -1 }, wantErr: `breaker: "consecutiveFailures" is -1; must be between 0 and`},
		{name: "ratio above 1", edit: func(c *breaker.Config) { c.FailureRatio = 1.5 }, wantErr: `breaker: "failureRatio" is 1.5; must be between 0 and 1`},
		{name: "ratio NaN", edit: func(c *breaker.Config) { c.FailureRatio = math.NaN() }, wantErr: `"failureRatio" is NaN`},
		{name: "no trip rule", edit: func(c *breaker.Config) { c.ConsecutiveFailures = 0 }, wantErr: `"consecutiveFailures" is 0; must be at least 1 when "failureRatio" is 0`},
		{name: "minimum requests 0", edit: func(c *breaker.Config) { c.MinimumRequests = 0 }, wantErr: `"minimumRequests" is 0; must be between 1 and`},
		{name: "buckets 0", edit: func(c *breaker.Config) { c.WindowBuckets = 0 }, wantErr: `"windowBuckets" is 0; must be between 1 and 1000`},
		{name: "window too short", edit: func(c *breaker.Config) { c.Window = 5 * time.Millisecond }, wantErr: `"window" is "0.005s"; must be at least 1ms per bucket (10 buckets)`},
		{name: "open timeout 0", edit: func(c *breaker.Config) { c.OpenTimeout = 0 }, wantErr: `"openTimeout" is "0s"; must be positive`},
		{name: "probes 0", edit: func(c *breaker.Config) { c.HalfOpenProbes = 0 }, wantErr: `"halfOpenProbes" is 0; must be between 1 and`},
		{name: "no codes", edit: func(c *breaker.Config) { c.FailureCodes = nil }, wantErr: `"failureCodes" is []; must list at least one gRPC code`},
		{name: "canceled code", edit: func(c *breaker.Config) { c.FailureCodes = []codes.Code{codes.Internal, codes.Canceled} }, wantErr: `"failureCodes[1]" is "CANCELLED"; must be a gRPC code other than OK and CANCELLED`},
		{name: "unknown code", edit: func(c *breaker.Config) { c.FailureCodes = []codes.Code{99} }, wantErr: `"failureCodes[0]" is 99`},
		{name: "probe timeout 0", edit: func(c *breaker.Config) { c.ProbeTimeout = 0 }, wantErr: `breaker: "probeTimeout" is "0s"; must be positive`},
		{name: "max breakers 0", edit: func(c *breaker.Config) { c.MaxBreakers = 0 }, wantErr: `"maxBreakers" is 0; must be between 1 and 1048576`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := breaker.DefaultConfig()
			tt.edit(&c)
			_, err := breaker.New(breaker.WithConfig(c))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New() error = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want containing %q", err, tt.wantErr)
			}
			var ce *breaker.ConfigError
			if !errors.As(err, &ce) || !strings.Contains(tt.wantErr, strconv.Quote(ce.Field)) {
				t.Errorf("New() error %v does not unwrap to a *ConfigError naming its field (got %+v)", err, ce)
			}
		})
	}
	if _, err := breaker.New(breaker.WithObserver(nil)); err == nil {
		t.Error("New(WithObserver(nil)) succeeded")
	}
}

func TestDefaultConfig(t *testing.T) {
	c := breaker.DefaultConfig()
	if c.ConsecutiveFailures != 5 || c.OpenTimeout != 10*time.Second || c.HalfOpenProbes != 1 || c.MaxBreakers != 1024 || c.Scope != breaker.ScopeMethod {
		t.Errorf("DefaultConfig() = %+v", c)
	}
	want := []codes.Code{codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss, codes.DeadlineExceeded}
	if got := breaker.DefaultFailureCodes(); len(got) != len(want) {
		t.Fatalf("DefaultFailureCodes() = %v, want %v", got, want)
	}
	// Fresh copies: changing one does not change the next.
	breaker.DefaultFailureCodes()[0] = codes.OK
	if breaker.DefaultFailureCodes()[0] != codes.Unavailable {
		t.Error("DefaultFailureCodes shares its slice")
	}
}
