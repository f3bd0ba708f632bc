package main

import (
	"testing"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
)

// TestMain fails the package's tests if any goroutine they started (the
// control plane, backends, xDS clients, the example's run) outlives them.
func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
