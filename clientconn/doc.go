// Package clientconn shares gRPC client connections across the services of
// a process.
//
// Dialling is the expensive part of a gRPC call: DNS, TCP, TLS and HTTP/2
// setup cost tens to hundreds of times a unary call on a warm connection,
// and services that each dial the same backends multiply that cost and the
// socket count. A Factory hands every service a reference-counted handle
// (*Conn, a grpc.ClientConnInterface) on one shared *grpc.ClientConn per
// key, where the key is the canonical target (so "h:p" and "dns:///h:p" are
// one), the tenant, the transport credentials and the service config.
//
//	f, err := clientconn.New(clientconn.WithTLS(tlsConfig))
//	if err != nil { ... } // names the bad option and its value
//	defer f.Close()
//	conn, err := f.Get(ctx, "backend.internal:443")
//	if err != nil { ... }
//	defer conn.Close()
//	client := pb.NewGreeterClient(conn)
//
// Around the sharing, the Factory manages the connections' lives:
//   - connections without handles stay open for the idle timeout
//     (WithIdleTimeout) and at most WithMaxIdle of them are kept, least
//     recently used closed first;
//   - WithMaxConnectionAge replaces a connection with a fresh one; calls and
//     streams running on the old one finish there (graceful drain);
//   - WithKeepalive applies a Keepalive preset whose server half
//     (Keepalive.ServerOptions) is guaranteed not to answer with a
//     too_many_pings GOAWAY;
//   - WithWarmUp (per Get) and WithPreconnect warm connections up before
//     the first call; a WithWarmUp timeout says why (unknown host, refused
//     connection, failed handshake, plaintext against a TLS server).
//
// A service config's "grpcreuse" policy (WithServiceConfig,
// WithTargetServiceConfig; docs/policy.md) gives every connection circuit
// breakers and concurrency limits. They are kept per tenant and document:
// tenants never share a breaker or a limiter, and a tenant's breakers keep
// their state when its connection is replaced for its age. Factory.Policies
// reports them, each naming its tenant.
//
// Pool events go to a telemetry.Observer (WithObserver). Connection
// openings, rotations, evictions and closings are logged through grpclog
// (component "grpcreuse-clientconn") at verbosity 2
// (GRPC_GO_LOG_VERBOSITY_LEVEL=2, GRPC_GO_LOG_SEVERITY_LEVEL=info), never
// per call.
//
// Concurrency: Factory and Conn are safe for concurrent use. The Factory
// starts goroutines only to drain and replace connections (plus grpc-go's
// own per connection); Factory.Close stops them all and returns when they
// have exited. The package registers nothing in init.
package clientconn
