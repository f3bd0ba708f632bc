package leakcheck

import (
	"strings"
	"testing"
	"time"
)

func TestCheckFindsAndClears(t *testing.T) {
	stop := make(chan struct{})
	started := make(chan struct{})
	go func() {
		close(started)
		<-stop
	}()
	<-started
	err := Check(50 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "TestCheckFindsAndClears") {
		t.Fatalf("Check with a blocked goroutine = %v, want it listed", err)
	}
	close(stop)
	if err := Check(5 * time.Second); err != nil {
		t.Fatalf("Check after the goroutine ended: %v", err)
	}
}

func TestMain(m *testing.M) { VerifyTestMain(m) }
