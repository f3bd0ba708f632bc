package clientconn

import "github.com/grpcreuse/grpcreuse/telemetry"

// NoJitter makes WithMaxConnectionAge exact, so tests can count rotations.
func NoJitter() Option { return optionFunc(func(o *options) { o.noJitter = true }) }

// ReportForTest returns the observer path of f, so tests can report
// events of pieces that are not wired in yet.
func ReportForTest(f *Factory) interface {
	BreakerStateChanged(key string, from, to telemetry.BreakerState)
} {
	return f.obs
}
