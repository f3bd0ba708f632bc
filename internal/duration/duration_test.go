package duration

import (
	"testing"
	"time"
)

func TestString(t *testing.T) {
	for d, want := range map[time.Duration]string{30 * time.Second: "30s", 250 * time.Millisecond: "0.250s", 0: "0s"} {
		if got := String(d); got != want {
			t.Errorf("String(%v) = %q, want %q", d, got, want)
		}
	}
}
