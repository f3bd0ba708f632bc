// Package spiffe gives gRPC clients and servers SPIFFE identity
// (X509-SVIDs from an x509svid.Source, trust from an x509bundle.Source,
// for example a workloadapi.X509Source) that holds on resumed TLS
// handshakes, so it composes with the session caches and ticket keys of
// package credentials.
//
// go-spiffe's spiffetls/tlsconfig authorizes the peer in
// VerifyPeerCertificate, which crypto/tls does not call on a resumed
// handshake: with session resumption on, a peer whose SPIFFE ID was
// authorized once would be accepted again after the policy stopped
// allowing it, and credentials.NewTLS refuses such a config. The configs
// made here verify the peer's X509-SVID against the current bundle and run
// the authorizer (go-spiffe's tlsconfig.Authorizer: AuthorizeID,
// AuthorizeMemberOf, AuthorizeOneOf, ...) in tls.Config.VerifyConnection,
// which crypto/tls calls on every handshake, full or resumed.
//
// [ClientConfig] and [ServerConfig] present the source's current SVID
// through GetClientCertificate and GetCertificate, so a rotated SVID is
// used from the next full handshake on. A client's sessions are keyed by
// the SVID they were made with (see ClientConfig), so after a rotation the
// client makes a full handshake with the new SVID instead of resuming one
// made with the old.
//
// Use the configs with credentials.NewTLS (client and server) and, on
// servers, credentials.TicketKeyRotator.ServerConfig. Only this package of
// grpcreuse imports go-spiffe.
//
// The authorizer and the sources run inside crypto/tls on the handshake
// goroutine of every connection: they must return quickly (a server's
// grpc.Server.Stop waits for handshakes in progress), and a panic in them
// ends the program, as it does with go-spiffe's tlsconfig; a source that
// returns an error fails the handshake, never silently skips the check.
//
// Everything here is safe for concurrent use and starts no goroutine.
// init registers nothing.
package spiffe
