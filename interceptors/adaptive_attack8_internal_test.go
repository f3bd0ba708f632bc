package interceptors

import (
	"testing"
	"time"
)

// TestGradientProbeEndsWithHungCohortCalls: a probe that measured a call
// and then admitted as many calls as its limit that never end (handlers
// blocked: a long poll, or a client that keeps them open on purpose)
// holds every slot, so no call ends to close it and every request is shed
// at its limit. It must end 8 Windows in all the same, on the shed at its
// limit (or an old call ending), with the limit back: before, a probe
// that had measured a call refused to be given up ("the next call
// measured closes it"), and none came.
func TestGradientProbeEndsWithHungCohortCalls(t *testing.T) {
	for _, via := range []string{"shed at the probe's limit", "an old call ending"} {
		t.Run(via, func(t *testing.T) {
			g, st, win, before := probingAfterFirstWindow(t)
			// One cohort call measured, then probeConcurrency cohort calls
			// admitted that never end.
			sampleNow(g, st, time.Millisecond, false, win+2*int64(time.Millisecond), 1)
			for i := range probeConcurrency {
				if c := g.admit(win + int64(3+i)*int64(time.Millisecond)); c == 0 {
					t.Fatalf("hung call %d not admitted into the probe's cohort", i)
				}
			}
			end := func(now int64) (int64, bool) {
				if via == "an old call ending" {
					return sampleNow(g, st, 10*time.Second, false, now, probeConcurrency+1)
				}
				return g.abandonStaleProbe(now)
			}
			if _, moved := end(win + 7*win); moved {
				t.Fatal("the probe ended before 8 windows")
			}
			l, moved := end(win + 8*win)
			if !moved || l != before || g.probing.Load() {
				t.Fatalf("8 windows into a probe whose cohort hangs: limit %d (moved %v, probing %v), want %d back", l, moved, g.probing.Load(), before)
			}
		})
	}
}
