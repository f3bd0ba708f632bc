// Package testutil holds what grpcreuse's tests share: certificates made
// during the test (nothing checked in that can expire), loopback gRPC
// backends that count their accepted connections and calls, a loopback
// TLS server without gRPC on top that records every handshake
// (StartTLSServer, with HandshakeTLS as its client), and a bounded
// polling helper that replaces sleeps.
//
// Only test files import it. Everything it starts is stopped through
// tb.Cleanup, so leakcheck stays quiet.
package testutil
