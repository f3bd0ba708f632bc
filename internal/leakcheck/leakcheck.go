// Package leakcheck fails a test binary whose tests leave goroutines
// running, as go.uber.org/goleak's VerifyTestMain does. It lives here,
// not as a dependency, so that a module requiring grpcreuse does not
// inherit a test-only module in its graph (grpc-go keeps its own
// internal/leakcheck for the same reason).
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// wait is how long goroutines that are already ending get to finish.
const wait = 10 * time.Second

// ignored are frames of goroutines that belong to the runtime or to the
// testing package rather than to the code under test.
var ignored = []string{
	"testing.Main(",
	"testing.tRunner(",
	"testing.(*M).",
	"testing.runFuzzing(",
	"testing.runFuzzTests(",
	"runtime.goexit",
	"created by runtime.gc",
	"created by runtime/trace.Start",
	"signal.signal_recv",
	"os/signal.loop",
	"runtime.ensureSigM",
	"goroutine in C code",
	"leakcheck.leaked(",
}

// VerifyTestMain runs the tests, then fails the binary (exit 1, with the
// leaked goroutines' stacks) if any goroutine started by them is still
// running once they pass. Call it from TestMain:
//
//	func TestMain(m *testing.M) { leakcheck.VerifyTestMain(m) }
func VerifyTestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := Check(wait); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Check returns an error listing the goroutines still running after
// timeout, or nil as soon as none is left. It polls, because goroutines
// that were told to stop may need a moment to return.
func Check(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	backoff := time.Millisecond
	for {
		left := leaked()
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			sort.Strings(left)
			return fmt.Errorf("leakcheck: %d goroutine(s) still running after the tests:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(backoff) // polling against a deadline, as goleak does
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// leaked returns the stacks of the goroutines other than the caller's
// that no entry of ignored accounts for.
func leaked() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.TrimSpace(g) == "" { // the first is this goroutine
			continue
		}
		if !isIgnored(g) {
			out = append(out, g)
		}
	}
	return out
}

func isIgnored(stack string) bool {
	for _, s := range ignored {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

// VerifyNone fails tb if goroutines other than the test's own are still
// running after the wait; defer it at the top of a test that must clean up
// after itself before the binary ends.
func VerifyNone(tb testing.TB) {
	tb.Helper()
	if err := Check(wait); err != nil {
		tb.Error(err)
	}
}
