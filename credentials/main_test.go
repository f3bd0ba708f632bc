package credentials_test

import (
	"testing"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
)

// TestMain fails the package's tests if any goroutine (a rotator's or
// reloader's loop, a gRPC server or client) outlives them.
func TestMain(m *testing.M) {
	leakcheck.VerifyTestMain(m)
}
