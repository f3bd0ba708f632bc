package spiffe_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine (a gRPC server or
// client, a rotator's loop) outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
