package credentials_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine (a rotator's or
// reloader's loop, a gRPC server or client) outlives them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
