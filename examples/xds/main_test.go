package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// TestExample runs the whole example with short phases and checks what
// its output claims: the pushed config's connection counts, the live
// update without a failed call, no call to the removed backend, the NACK.
func TestExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	rep, err := demo(ctx, options{phase: 200 * time.Millisecond, callers: 8}, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, &out)
	}
	t.Logf("example ran in %v:\n%s", time.Since(start).Round(time.Millisecond), &out)
	if len(rep.steps) != 3 {
		t.Fatalf("%d steps, want 3", len(rep.steps))
	}
	want := []map[string]int64{
		{"b1": 2, "b2": 2, "b3": 0},
		{"b2": 3, "b3": 3},
		{"b2": 3, "b3": 3},
	}
	for i, s := range rep.steps {
		for name, n := range want[i] {
			if s.conns[name] != n {
				t.Errorf("%s: %s accepted %d connections; want %d", s.title, name, s.conns[name], n)
			}
			if n > 0 && s.calls[name] == 0 {
				t.Errorf("%s: %s served no call", s.title, name)
			}
		}
	}
	if b1 := rep.steps[2].conns["b1"]; b1 < 2 || b1 > 3 {
		t.Errorf("b1 accepted %d connections; want 2 (or 3, if the new config reached it before its removal)", b1)
	}
	if rep.failed != 0 || rep.ok == 0 {
		t.Errorf("%d calls OK, %d failed; want none failed", rep.ok, rep.failed)
	}
	if rep.removedCallsAfter != 0 {
		t.Errorf("b1 got %d calls after its removal; want 0", rep.removedCallsAfter)
	}
	if !strings.Contains(rep.nack, `"subchannelsPerEndpoint" is 0`) {
		t.Errorf("NACK %q does not name the field", rep.nack)
	}
	for _, line := range []string{
		`pushed version 1: grpcreuse_least_loaded {"subchannelsPerEndpoint":2} over b1 b2; client ACKed`,
		`pushed version 2: grpcreuse_least_loaded {"subchannelsPerEndpoint":3} over b2 b3; client ACKed`,
		`client NACKed:`,
		`0 failed; b1 got 0 calls after its removal`,
	} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("output lacks %q", line)
		}
	}
}

// TestFlagErrors: bad flags are errors naming the flag, and start nothing.
func TestFlagErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"phase", []string{"-phase", "1ms"}, "-phase is 1ms; must be between 50ms and 1m"},
		{"callers", []string{"-callers", "0"}, "-callers is 0; must be between 1 and 256"},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
		{"not a duration", []string{"-phase", "soon"}, `invalid value "soon" for flag -phase`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.wantErr)
			}
		})
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-callers") {
		t.Errorf("run(-h) = %v with output %q; want flag.ErrHelp and the usage", err, &out)
	}
}
