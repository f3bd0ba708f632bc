package telemetry_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine they started
// (servers, clients, the demo's phases) outlives them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
