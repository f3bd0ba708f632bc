//go:build race

package testutil

// RaceEnabled reports whether the race detector is on. Under it sync.Pool
// drops a quarter of what is put back, so a call through grpc-go can
// allocate a little more than it does without, and testing.AllocsPerRun
// (which rounds down) may count one more: allocation tests that compare
// two sides of a whole call allow for that.
const RaceEnabled = true
