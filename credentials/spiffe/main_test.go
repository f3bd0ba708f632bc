package spiffe_test

import (
	"testing"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
)

// TestMain fails the package's tests if any goroutine (a gRPC server or
// client, a rotator's loop) outlives them.
func TestMain(m *testing.M) {
	leakcheck.VerifyTestMain(m)
}
