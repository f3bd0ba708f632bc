package breaker

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestXDSLocalDrop: the two errors grpc-go's xDS cluster_impl picker fails
// dropped calls with are local drops; anything else is not.
func TestXDSLocalDrop(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"drop_overloads", status.Error(codes.Unavailable, "RPC is dropped"), true},
		{"max_requests", status.Error(codes.Unavailable, "max requests 1 exceeded on service echo-cluster"), true},
		{"max_requests, wrapped", fmt.Errorf("call: %w", status.Error(codes.Unavailable, "max requests 100 exceeded on service c")), true},
		{"backend unavailable", status.Error(codes.Unavailable, "connection refused"), false},
		{"drop message, other code", status.Error(codes.Internal, "RPC is dropped"), false},
		{"max requests prefix only", status.Error(codes.Unavailable, "max requests were too many"), false},
		{"drop message inside another", status.Error(codes.Unavailable, "backend: RPC is dropped"), false},
		{"not a status", errors.New("RPC is dropped"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := xdsLocalDrop(status.Code(tc.err), tc.err); got != tc.want {
				t.Errorf("xdsLocalDrop(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestXDSLocalDropAllocs: classifying a failed call stays allocation-free.
func TestXDSLocalDropAllocs(t *testing.T) {
	drop := status.Error(codes.Unavailable, "max requests 1 exceeded on service c")
	other := status.Error(codes.Unavailable, "connection refused")
	if n := testing.AllocsPerRun(100, func() {
		_ = xdsLocalDrop(codes.Unavailable, drop)
		_ = xdsLocalDrop(codes.Unavailable, other)
	}); n != 0 {
		t.Errorf("xdsLocalDrop allocates %v times per call; want 0", n)
	}
}

// BenchmarkXDSLocalDrop measures the classification a failed UNAVAILABLE
// call now pays, beside status.Code (which classify already calls).
func BenchmarkXDSLocalDrop(b *testing.B) {
	drop := status.Error(codes.Unavailable, "max requests 1 exceeded on service c")
	other := status.Error(codes.Unavailable, "connection refused")
	b.Run("status.Code", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = status.Code(other)
		}
	})
	b.Run("xdsLocalDrop/backend error", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = xdsLocalDrop(codes.Unavailable, other)
		}
	})
	b.Run("xdsLocalDrop/max requests", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = xdsLocalDrop(codes.Unavailable, drop)
		}
	})
}
