// Package credentials provides TLS transport credentials for gRPC that make
// repeated handshakes cheap and safe: bounded, tenant-partitioned client
// session caches, per-backend session keying, handshake observation, server
// session-ticket key rotation (random or from a fleet-shared file), and
// certificate and trust-bundle reload from files. SPIFFE identity lives in
// the sub-package credentials/spiffe, the only one that imports go-spiffe.
//
// Its name matches grpc's credentials package; import one of them under
// another name (this repository uses grpccreds for grpc's).
//
// # Client side
//
// [NewSessionCache] is a tls.ClientSessionCache with a capacity bound and a
// time to live; [SessionCache.ForTenant] returns a view whose sessions are
// never offered to another tenant. [NewTLS] returns grpc TransportCredentials
// that key sessions by tenant, client identity, remote backend address and
// server name. crypto/tls alone keys sessions by server name, which grpc
// sets to the target's host, so backends behind one name overwrite each
// other's tickets and a client resumes only when it happens to reconnect to
// the backend that issued the last ticket. NewTLS clones the tls.Config per
// handshake and points ClientSessionCache at the view for that address.
// Every client handshake is reported to a telemetry.HandshakeObserver.
//
// [WithTTL] bounds the time since the server was last verified in a full
// handshake; a resumption does not restart it. [SessionCache.Purge],
// [SessionCache.PurgeTenant] and [SessionCache.PurgeServer] drop sessions for
// revocation and trust-root changes. When the client certificate comes from
// GetClientCertificate (a [CertificateReloader]), a session made with a
// certificate that is no longer current is not offered. [SessionCacheStats]
// counts sessions offered separately from sessions resumed.
// [WithResumptionAcrossAddresses] (opt-in) lets replicas at different
// addresses that share ticket keys resume each other's sessions; see
// docs/tls.md for the trade-off and measurements.
//
// A tls.Config whose VerifyPeerCertificate callback would be skipped on
// resumed handshakes is refused unless resumption is disabled or the caller
// opts out with [WithVerifyPeerCertificateSkippedOnResumption]; use
// VerifyConnection, which runs on every handshake, instead.
//
// # AuthInfo: TLSInfo
//
// Client connections carry this package's [TLSInfo] as their AuthInfo: it
// embeds grpc's credentials.TLSInfo (so State.DidResume, SPIFFEID,
// SecurityLevel, ValidateAuthority and channelz security values behave as
// with grpc's credentials) and adds Resumed and HandshakeDuration. The
// trade-off: code that type-asserts grpc's credentials.TLSInfo directly no
// longer matches on those connections; [GRPCTLSInfo] accepts both. That
// assertion is made in grpc itself only by the server-side RBAC engine
// behind grpc/authz, and in user code mostly on servers, so server
// handshakes keep returning grpc's credentials.TLSInfo unchanged (DidResume
// is in its State). Keeping grpc's type on the client too would have lost
// the handshake duration, which cannot be recovered from the connection
// state afterwards.
//
// # Server side
//
// [NewTicketKeyRotator] supplies session ticket keys; [TicketKeyRotator.ServerConfig]
// applies them through tls.Config.GetConfigForClient, which survives the
// config clones grpc makes (SetSessionTicketKeys on the original does not).
// With random keys a new crypto/rand key encrypts from every rotation
// interval on and the previous WithPreviousKeys keys still decrypt. With
// [WithTicketKeyFile], replicas reading one file resume each other's
// sessions.
//
// The key file holds one key per line, each the standard base64 encoding
// (with padding) of exactly 32 random bytes, as printed by
// "openssl rand -base64 32". The first key encrypts new tickets; every key
// decrypts. Surrounding white space, blank lines and lines starting with
// '#' are ignored; at most 100 keys and 64 KiB. To rotate without breaking
// resumption, add the new key as the second line first, wait for every
// replica to poll, then move it to the top, and drop a key only after
// tickets it encrypted have aged out. A file that cannot be read, is empty,
// holds a key that is not 32 bytes, is all zero, or is not base64 (or
// starts with a UTF-8 byte-order mark) is refused: the last good keys stay
// in use, [TicketKeyRotator.Err] returns the reason and [WithErrorHandler]
// hears it once per distinct error.
// Errors give line numbers and lengths only; keys are never logged or
// formatted.
//
// [TicketKeyRotator.Revoke] drops every key at once (emergency revocation):
// no earlier ticket resumes again and clients fall back to full handshakes;
// with a key file, revoked keys are never taken from it again, and the
// fleet-wide procedure is to call Revoke on every replica first and then
// write a file holding one fresh key (in the other order, a replica that
// polled the fresh key before Revoke revokes it too); see docs/tls.md.
//
// Server handshakes are observed with [WithServerHandshakeObserver] (a
// telemetry.ServerHandshakeObserver, once per handshake, never per call);
// [ServerHandshakeRecorder] keeps per-server counts and full-handshake
// percentiles for debug pages.
//
// [NewCertificateReloader] serves a certificate re-read from PEM files,
// for servers (GetCertificate) and mTLS clients (GetClientCertificate),
// keeping the last good pair on failure in the same way. [NewTrustBundle]
// re-reads a PEM file of CA certificates used to verify peers: on servers
// through [TrustBundle.ServerConfig] (the current bundle is each
// handshake's ClientCAs), on clients through [WithTrustBundle] for NewTLS
// (the current bundle is each handshake's RootCAs). crypto/tls then
// verifies every full handshake against the bundle as it is now and
// declines to resume a session whose peer chain no longer leads to a CA in
// it, so a CA roll through an overlap bundle fails no call.
//
// # Reading files
//
// Key, certificate and bundle files are read so that they cannot hang or
// tear. Only regular files are read (a FIFO, socket or device is refused
// without blocking; symbolic links are followed), at most 64 KiB for a key
// file, 1 MiB for a certificate or private key and 4 MiB for a trust
// bundle. A reading runs on its own goroutine and is abandoned after
// [WithReadTimeout] (default 5 s): a file on a hung mount fails the
// reading, keeps the last good contents, and no new reading of it starts
// until the stuck one returns; Close never waits for it. A reading of
// several files (certificate and key) is consistent: when a file was
// replaced while the others were read, as in a Kubernetes Secret's
// "..data" symlink swap, the reading is repeated. A changed file is taken
// only when it parses completely and two readings a settle delay apart
// (1 s, or the poll interval if shorter) agree, so a file caught half-way
// through an in-place write is not applied. The constructor takes the
// first reading as it is; the next poll corrects a file it caught
// mid-write. Write files atomically anyway: to a temporary file in the
// same directory, then rename it over the old one (a Kubernetes Secret
// volume does this for you). See docs/fleet-identity.md.
//
// Changes and refusals of key, certificate and bundle files, and
// revocations, are logged through grpclog (component
// "grpcreuse-credentials"): refusals as warnings, changes at verbosity 2.
//
// # Concurrency and goroutines
//
// Everything here is safe for concurrent use. A SessionCache starts no
// goroutine: expiry is checked lazily when a session is looked up, and
// capacity is enforced when one is stored (golang-lru's expirable cache was
// not used because its cleanup goroutine can never be stopped). A
// TicketKeyRotator, a CertificateReloader and a TrustBundle each start one
// goroutine that ticks; Close stops it, waits for it and is idempotent.
// Each file reading runs on a goroutine of its own that ends with the
// reading (or, on a hung mount, when the kernel returns). The credentials
// from NewTLS and a ServerHandshakeRecorder start nothing beyond grpc's
// own per-handshake goroutine.
//
// init registers nothing.
package credentials
