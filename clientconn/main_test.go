package clientconn_test

import (
	"testing"

	"github.com/grpcreuse/grpcreuse/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
