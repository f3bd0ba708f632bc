package clientconn

import (
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// grpc-go's limits and defaults that decide whether pings are accepted.
const (
	// minClientPingTime: grpc-go raises a client keepalive Time below this to it.
	minClientPingTime = 10 * time.Second
	// defaultServerMinTime: a server's EnforcementPolicy.MinTime when unset.
	defaultServerMinTime = 5 * time.Minute
)

// Keepalive is a matched pair: the client keepalive parameters and the
// server policy that accepts them. A grpc-go server counts a ping that
// arrives sooner than its EnforcementPolicy.MinTime (or on a connection
// without streams, unless PermitWithoutStream) as a strike, and after two
// strikes closes the connection with GOAWAY ENHANCE_YOUR_CALM
// "too_many_pings", failing every call on it. Use a preset on both sides:
// WithKeepalive on the client Factory, ServerOptions on the server.
//
// A zero Enforcement or Server means grpc-go's server defaults
// (MinTime 5 minutes, no pings without streams): that is what a server
// that sets nothing enforces.
type Keepalive struct {
	// Client is passed to grpc.WithKeepaliveParams.
	Client keepalive.ClientParameters
	// Server is passed to grpc.KeepaliveParams on the server.
	Server keepalive.ServerParameters
	// Enforcement is passed to grpc.KeepaliveEnforcementPolicy on the server.
	Enforcement keepalive.EnforcementPolicy
}

// KeepaliveDefault suits connections through cloud load balancers and NAT,
// which drop flows idle for 4-10 minutes: the client pings after 60 s of
// silence, also without streams (the Factory keeps idle connections), and
// gives up after 20 s without an answer. The server accepts pings every
// 30 s (half the client's interval, for scheduling slack) and pings idle
// clients after 5 minutes.
func KeepaliveDefault() Keepalive {
	return Keepalive{
		Client:      keepalive.ClientParameters{Time: 60 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true},
		Server:      keepalive.ServerParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second},
		Enforcement: keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true},
	}
}

// KeepaliveFastDetect finds a dead peer within about 15 s: the client
// pings after 10 s of silence (grpc-go's minimum) and waits 5 s for the
// answer; the server accepts pings every 5 s and pings idle clients after
// 30 s. It costs one small frame per idle connection every 10 s.
func KeepaliveFastDetect() Keepalive {
	return Keepalive{
		Client:      keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true},
		Server:      keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second},
		Enforcement: keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true},
	}
}

// Validate reports whether a grpc-go server with k's policy would accept
// the pings of a client with k's parameters, and whether grpc-go would
// use the client parameters as given.
func (k Keepalive) Validate() error {
	c := k.Client
	if c.Time < 0 || c.Timeout < 0 {
		return fmt.Errorf("client keepalive Time %v and Timeout %v must not be negative", c.Time, c.Timeout)
	}
	if c.Time > 0 && c.Time < minClientPingTime {
		return fmt.Errorf("client keepalive Time is %v; grpc-go raises anything below %v to %v, so set at least %v", c.Time, minClientPingTime, minClientPingTime, minClientPingTime)
	}
	return k.validatePair()
}

// validatePair checks the client against the server policy alone, without
// grpc-go's client minimum, so tests can check scaled-down pairs.
func (k Keepalive) validatePair() error {
	c, e := k.Client, k.Enforcement
	if c.Time == 0 {
		return nil // the client never pings
	}
	minTime := e.MinTime
	if minTime == 0 {
		minTime = defaultServerMinTime
	}
	if c.Time < minTime {
		return fmt.Errorf("client keepalive Time %v is shorter than the server's EnforcementPolicy.MinTime %v: "+
			"the server would count each ping as a strike and, after two, close the connection with GOAWAY "+
			"ENHANCE_YOUR_CALM \"too_many_pings\", failing its calls; raise Client.Time or lower MinTime", c.Time, minTime)
	}
	if c.PermitWithoutStream && !e.PermitWithoutStream {
		return fmt.Errorf("client keepalive PermitWithoutStream is true but the server's EnforcementPolicy.PermitWithoutStream is false: " +
			"pings on a connection without streams would be strikes and end in a GOAWAY \"too_many_pings\"; set both the same")
	}
	return nil
}

// ServerOptions returns the server half of k as grpc.ServerOptions.
func (k Keepalive) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.KeepaliveParams(k.Server), grpc.KeepaliveEnforcementPolicy(k.Enforcement)}
}
