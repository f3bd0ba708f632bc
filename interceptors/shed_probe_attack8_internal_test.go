package interceptors

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestDeadlineProbeConcurrentCount: refusals from many goroutines at once
// let through one probe per deadlineProbeEvery of them, never more (no
// doubled probe), and no fewer than one per gap less the few a CAS race
// skips (no lost run of probes); with the gap at its widest, one per
// maxDeadlineProbeGap.
func TestDeadlineProbeConcurrentCount(t *testing.T) {
	for _, gap := range []int64{deadlineProbeEvery, maxDeadlineProbeGap} {
		st := &serviceTime{}
		st.gap.Store(gap)
		const workers, each = 8, 20000
		var probes atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					if st.deadlineProbe() {
						probes.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		n := int64(workers * each)
		if got, most := probes.Load(), n/gap+1; got > most || got < most/2 {
			t.Errorf("gap %d: %d probes in %d refusals, want at most %d and not far fewer", gap, got, n, most)
		}
	}
}
