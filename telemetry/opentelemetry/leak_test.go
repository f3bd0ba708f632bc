package opentelemetry_test

import (
	"testing"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
)

// TestMain fails the package's tests if any goroutine they started
// (servers, clients, the demo's phases) outlives them.
func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
