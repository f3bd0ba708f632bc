package credentials

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

var (
	_ tls.ClientSessionCache = (*SessionCache)(nil)
	_ tls.ClientSessionCache = sessionView{}
	_ tls.ClientSessionCache = (*handshakeView)(nil)
)

// maxPurgeRecords bounds the purges a SessionCache remembers so that a
// handshake resuming a session from before a purge cannot store it again.
const maxPurgeRecords = 64

// SessionCache is a bounded TLS client session cache with a time to live,
// partitioned by tenant. It implements tls.ClientSessionCache for the ""
// tenant; ForTenant returns the view of any other tenant, and NewTLS uses
// finer views keyed also by remote address and client identity.
//
// The time to live bounds how long ago the server's certificate was last
// verified in a full handshake: a resumed handshake stores a new ticket
// but does not restart the clock. Purge, PurgeTenant and PurgeServer drop
// sessions at once, for revocation and trust-root changes.
//
// All methods are safe for concurrent use. A SessionCache starts no
// goroutines: expiry is checked when a session is looked up, and the
// capacity bound is enforced when one is stored.
type SessionCache struct {
	ttl      time.Duration
	capacity int
	observer telemetry.SessionCacheObserver
	now      func() time.Time

	mu  sync.Mutex // guards lru, offers, latest, epoch and purges; never held while calling observer
	lru *simplelru.LRU[sessionKey, sessionEntry]
	// offers remembers, per plain-view key, the session offered last, even
	// after that session was purged or pushed out: the ticket a plain view
	// stores next may come from a handshake that resumed it.
	offers *simplelru.LRU[sessionKey, offerMark]
	latest map[sessionKey]string // key without addr -> addr of the session stored last for it
	epoch  uint64                // number of purges so far
	purges []purgeRecord         // the last maxPurgeRecords purges, oldest first

	offered, offeredOtherAddr, resumed, notResumed atomic.Uint64
	misses, puts, evictions, invalidated           atomic.Uint64
}

// SessionCacheStats counts what a SessionCache did since it was created.
type SessionCacheStats struct {
	// Offered counts lookups that returned a live session to crypto/tls.
	// crypto/tls may still drop such a session before sending it (another
	// TLS version, a ticket past the lifetime the server gave it) and the
	// server may refuse it; Resumed and NotResumed say which happened.
	Offered uint64
	// OfferedOtherAddr counts the Offered sessions that were stored for
	// another address of the same server name (WithResumptionAcrossAddresses).
	OfferedOtherAddr uint64
	// Resumed counts handshakes made by NewTLS credentials that resumed an
	// offered session. Handshakes through a plain view (ForTenant, Get) are
	// not seen, so they count in neither Resumed nor NotResumed.
	Resumed uint64
	// NotResumed counts handshakes made by NewTLS credentials that were
	// offered a session and did not resume it (full handshake or failure).
	NotResumed uint64
	// Hits is Offered.
	//
	// Deprecated: a lookup that finds a session is not a resumption; use
	// Offered, or Resumed for sessions actually resumed.
	Hits uint64
	// Misses counts lookups that found nothing, only an expired session,
	// or a session made with a client certificate that is no longer the
	// current one.
	Misses uint64
	// Puts counts sessions stored (crypto/tls stores one per new ticket).
	Puts uint64
	// Evictions counts sessions dropped because the cache was full or
	// their TTL had passed. Sessions crypto/tls itself invalidates are not
	// counted.
	Evictions uint64
	// Invalidated counts sessions dropped by Purge, PurgeTenant or
	// PurgeServer, or because the client certificate they were made with
	// is no longer current.
	Invalidated uint64
	// Len is the number of sessions held now, expired ones included until
	// they are looked up or pushed out.
	Len int
}

// sessionKey partitions the cache. crypto/tls supplies name (the server
// name); the views add the rest.
type sessionKey struct {
	tenant   string // WithTenant / ForTenant
	identity string // client certificate identity of the credentials, see NewTLS
	addr     string // remote address of the connection, "" for plain views
	name     string // the key crypto/tls asks for (normally ServerName)
}

type sessionEntry struct {
	state *tls.ClientSessionState
	// verifiedAt is when the full handshake that verified the server's
	// certificate for this session (or the session it resumed) was made;
	// the session expires ttl after it.
	verifiedAt time.Time
	// epoch is the cache's purge count at verifiedAt.
	epoch uint64
	// offered is set when a plain view returned the session: a plain view
	// cannot tell whether the next stored session resumed it, so it
	// assumes so and keeps verifiedAt.
	offered bool
	// clientCert fingerprints the client certificate the session was made
	// with when the credentials choose it with GetClientCertificate; certReq
	// is the server's request it was chosen for. Both are empty when the
	// server asked for no certificate.
	clientCert string
	certReq    *tls.CertificateRequestInfo
	// kept is set on a session put back once after a resuming handshake
	// died on its transport (restore): a second such death drops it.
	kept bool
}

// offerMark is what a plain view remembers of the session it offered.
type offerMark struct {
	verifiedAt time.Time
	epoch      uint64
}

// purgeRecord is one purge, remembered for sessions resumed across it.
type purgeRecord struct {
	epoch  uint64
	tenant *string // nil: every tenant
	server *string // nil: every server
}

func (p purgeRecord) matches(k sessionKey) bool {
	if p.tenant != nil && *p.tenant != k.tenant {
		return false
	}
	if p.server != nil && *p.server != k.name && *p.server != k.addr {
		return false
	}
	return true
}

// NewSessionCache returns an empty cache. It fails if WithCapacity or
// WithTTL is not positive.
func NewSessionCache(opts ...SessionCacheOption) (*SessionCache, error) {
	o := defaultSessionCacheOptions()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("credentials: NewSessionCache: option %d is nil", i)
		}
		opt.applySessionCache(&o)
	}
	if o.capacity < 1 {
		return nil, fmt.Errorf("credentials: WithCapacity is %d; must be at least 1", o.capacity)
	}
	if o.ttl <= 0 {
		return nil, fmt.Errorf("credentials: WithTTL is %v; must be positive", o.ttl)
	}
	c := &SessionCache{
		ttl:      o.ttl,
		capacity: o.capacity,
		observer: o.observer,
		now:      o.now,
		latest:   make(map[sessionKey]string),
	}
	lru, err := simplelru.NewLRU[sessionKey, sessionEntry](o.capacity, c.forgetLocked)
	if err != nil {
		return nil, fmt.Errorf("credentials: session cache of capacity %d: %w", o.capacity, err)
	}
	c.lru = lru
	offers, err := simplelru.NewLRU[sessionKey, offerMark](o.capacity, nil)
	if err != nil {
		return nil, fmt.Errorf("credentials: session cache of capacity %d: %w", o.capacity, err)
	}
	c.offers = offers
	return c, nil
}

// Get implements tls.ClientSessionCache for the "" tenant.
func (c *SessionCache) Get(sessionKey string) (*tls.ClientSessionState, bool) {
	return c.view("", "", "").Get(sessionKey)
}

// Put implements tls.ClientSessionCache for the "" tenant. A nil cs removes
// the session stored under sessionKey.
func (c *SessionCache) Put(sessionKey string, cs *tls.ClientSessionState) {
	c.view("", "", "").Put(sessionKey, cs)
}

// ForTenant returns the view of the cache that belongs to tenant name:
// sessions stored through it are offered only through views of the same
// tenant. Use it as tls.Config.ClientSessionCache when not using NewTLS
// (NewTLS also separates backends behind one server name and client
// identities, which a plain view cannot: crypto/tls keys sessions by
// server name only, so configs with different client certificates that
// share one view resume each other's sessions, exactly as they would with
// a shared tls.NewLRUClientSessionCache; give each its own tenant, or use
// NewTLS). Given to NewTLS as tls.Config.ClientSessionCache, a view acts as
// WithSessionCache plus WithTenant(name).
//
// A plain view cannot see whether a handshake resumed: when it stores a
// session for a name whose previous session it offered, it assumes a
// resumption and keeps that session's verification time, so the TTL still
// bounds the time since the last full handshake (at worst one extra full
// handshake per TTL when the server refused the offered session).
func (c *SessionCache) ForTenant(name string) tls.ClientSessionCache {
	return c.view(name, "", "")
}

// Purge drops every session of every tenant and returns how many it
// dropped. Handshakes in progress that resume a dropped session do not
// store the tickets they receive. Use it after revoking trust in a server
// key or changing trust roots.
func (c *SessionCache) Purge() int {
	return c.purge(purgeRecord{})
}

// PurgeTenant drops every session of tenant and returns how many it
// dropped.
func (c *SessionCache) PurgeTenant(tenant string) int {
	return c.purge(purgeRecord{tenant: &tenant})
}

// PurgeServer drops every session, of every tenant, for server: a server
// name as crypto/tls keys sessions (the name verified, normally the
// target's host, "backend.example") or a backend address as NewTLS keys
// them ("10.0.0.7:443"). It returns how many it dropped.
func (c *SessionCache) PurgeServer(server string) int {
	return c.purge(purgeRecord{server: &server})
}

func (c *SessionCache) purge(p purgeRecord) int {
	c.mu.Lock()
	n := 0
	for _, k := range c.lru.Keys() {
		if p.matches(k) {
			c.lru.Remove(k)
			n++
		}
	}
	c.epoch++
	p.epoch = c.epoch
	if len(c.purges) == maxPurgeRecords {
		copy(c.purges, c.purges[1:])
		c.purges = c.purges[:len(c.purges)-1]
	}
	c.purges = append(c.purges, p)
	c.mu.Unlock()
	c.invalidated.Add(uint64(n))
	return n
}

// purgedSinceLocked reports whether a session for k verified at epoch was
// dropped by a purge since (or may have been: purges too old to remember
// count as matching).
func (c *SessionCache) purgedSinceLocked(k sessionKey, epoch uint64) bool {
	if epoch == c.epoch {
		return false
	}
	if len(c.purges) == 0 || c.purges[0].epoch > epoch+1 {
		return true
	}
	for _, p := range c.purges {
		if p.epoch > epoch && p.matches(k) {
			return true
		}
	}
	return false
}

// Stats returns the cache's counters.
func (c *SessionCache) Stats() SessionCacheStats {
	c.mu.Lock()
	n := c.lru.Len()
	c.mu.Unlock()
	offered := c.offered.Load()
	return SessionCacheStats{
		Offered:          offered,
		OfferedOtherAddr: c.offeredOtherAddr.Load(),
		Resumed:          c.resumed.Load(),
		NotResumed:       c.notResumed.Load(),
		Hits:             offered,
		Misses:           c.misses.Load(),
		Puts:             c.puts.Load(),
		Evictions:        c.evictions.Load(),
		Invalidated:      c.invalidated.Load(),
		Len:              n,
	}
}

func (c *SessionCache) view(tenant, identity, addr string) sessionView {
	return sessionView{c: c, tenant: tenant, identity: identity, addr: addr}
}

// forgetLocked is the LRU's eviction callback: it keeps latest pointing
// only at stored sessions.
func (c *SessionCache) forgetLocked(k sessionKey, _ sessionEntry) {
	if k.addr == "" {
		return
	}
	nk := k
	nk.addr = ""
	if c.latest[nk] == k.addr {
		delete(c.latest, nk)
	}
}

// lookup says how to find a session.
type lookup struct {
	// anyAddr offers the session stored last for another address when
	// none exists for the key's own (WithResumptionAcrossAddresses).
	anyAddr bool
	// plain marks a lookup through a plain view, see sessionEntry.offered.
	plain bool
	// check, if set, is called outside the lock on the session found; a
	// session it rejects is dropped and not offered.
	check func(*sessionEntry) bool
}

// getLocked returns the live session stored under k, dropping it if it
// has expired.
func (c *SessionCache) getLocked(k sessionKey, now time.Time) (sessionEntry, bool, bool) {
	e, ok := c.lru.Get(k)
	if !ok {
		return sessionEntry{}, false, false
	}
	if !now.Before(e.verifiedAt.Add(c.ttl)) {
		c.lru.Remove(k)
		return sessionEntry{}, false, true
	}
	return e, true, false
}

// get looks k up and returns the session to offer and the key it was
// stored under.
func (c *SessionCache) get(k sessionKey, l lookup) (sessionEntry, sessionKey, bool) {
	now := c.now()
	found := k
	c.mu.Lock()
	e, ok, expired := c.getLocked(k, now)
	if !ok && l.anyAddr && k.addr != "" {
		nk := k
		nk.addr = ""
		if addr, has := c.latest[nk]; has {
			found.addr = addr
			var exp bool
			e, ok, exp = c.getLocked(found, now)
			expired = expired || exp
		}
	}
	if l.plain {
		if ok {
			if !e.offered {
				e.offered = true
				c.lru.Add(found, e)
			}
			c.offers.Add(found, offerMark{verifiedAt: e.verifiedAt, epoch: e.epoch})
		} else {
			c.offers.Remove(k) // nothing offered: the next ticket is from a full handshake
		}
	}
	c.mu.Unlock()

	if expired {
		c.evictions.Add(1)
		c.observer.SessionCacheEvicted(k.tenant)
	}
	if ok && l.check != nil && !l.check(&e) {
		c.remove(found, e.state)
		c.invalidated.Add(1)
		ok = false
	}
	if ok {
		c.offered.Add(1)
		if found.addr != k.addr {
			c.offeredOtherAddr.Add(1)
		}
	} else {
		c.misses.Add(1)
	}
	c.observer.SessionCacheLookup(k.tenant, ok)
	return e, found, ok
}

// remove drops the session under k if it is still state (nil: any).
func (c *SessionCache) remove(k sessionKey, state *tls.ClientSessionState) {
	c.mu.Lock()
	if e, ok := c.lru.Peek(k); ok && (state == nil || e.state == state) {
		c.lru.Remove(k)
	}
	c.mu.Unlock()
}

// restore puts e back under k, a session crypto/tls dropped (Put nil)
// when a handshake that offered it failed, if the handshake died on its
// transport (the connection reset or closed, a deadline), the session
// was not put back once already, nothing has been stored under k since,
// no purge covers it, it has not expired, and there is room for it
// without pushing out another. crypto/tls drops the session whatever the
// error, so that a client recovers from a ticket the server rejects; a
// connection cut during the handshake says nothing about the ticket, and
// dropping it turned the next connection to that backend into a full
// handshake: a reconnect storm cutting connections as they resumed cost
// one full handshake per cut that landed mid-handshake (TestDemo failed
// so in about 1 CI run of 7). Once only, so that a server that rejects a
// ticket by closing the connection costs one more failed attempt, not
// all of them.
func (c *SessionCache) restore(k sessionKey, e sessionEntry) {
	if e.kept || e.state == nil {
		return
	}
	e.kept = true
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru.Contains(k) || c.lru.Len() >= c.capacity ||
		c.purgedSinceLocked(k, e.epoch) || !now.Before(e.verifiedAt.Add(c.ttl)) {
		return
	}
	c.storeLocked(k, e) // there is room: it pushes out nothing
}

// storeLocked stores e under k, pushing out the least recently used
// session if the cache is full (returned), and makes it the latest for
// its key without address (WithResumptionAcrossAddresses).
func (c *SessionCache) storeLocked(k sessionKey, e sessionEntry) (evicted sessionKey, hadEvicted bool) {
	if !c.lru.Contains(k) && c.lru.Len() >= c.capacity {
		evicted, _, hadEvicted = c.lru.RemoveOldest()
	}
	c.lru.Add(k, e)
	if k.addr != "" {
		nk := k
		nk.addr = ""
		c.latest[nk] = k.addr
	}
	return evicted, hadEvicted
}

// stored says where a session being stored comes from.
type stored struct {
	// known: the handshake's outcome is known (NewTLS); resumed says
	// whether it resumed from, the session it was offered; a full
	// handshake verified the server at verifiedAt, in verifiedEpoch.
	known, resumed bool
	from           sessionEntry
	verifiedAt     time.Time
	verifiedEpoch  uint64
	// clientCert and certReq describe the certificate the handshake sent,
	// when it chose one with GetClientCertificate.
	clientCert string
	certReq    *tls.CertificateRequestInfo
	certSent   bool
}

func (c *SessionCache) put(k sessionKey, cs *tls.ClientSessionState, s stored) {
	if cs == nil {
		// crypto/tls invalidates a session it can no longer use; the
		// handshake goes on in full, so its ticket is not a resumption's.
		c.remove(k, nil)
		c.mu.Lock()
		c.offers.Remove(k)
		c.mu.Unlock()
		return
	}
	now := c.now()
	e := sessionEntry{state: cs, verifiedAt: now, clientCert: s.clientCert, certReq: s.certReq}
	c.mu.Lock()
	e.epoch = c.epoch
	checked := true
	switch {
	case s.known && s.resumed:
		e.verifiedAt, e.epoch = s.from.verifiedAt, s.from.epoch
		if !s.certSent {
			e.clientCert, e.certReq = s.from.clientCert, s.from.certReq
		}
	case s.known:
		e.verifiedAt, e.epoch = s.verifiedAt, s.verifiedEpoch
	default:
		// A plain view: assume a resumption if the session stored under
		// k was offered.
		// The assumption sticks (offered stays set) so that a server
		// sending several tickets per handshake cannot restart the clock.
		// A session offered and then purged or pushed out counts too
		// (offers), so a purge racing the handshake is not defeated.
		if old, ok := c.lru.Peek(k); ok && old.offered {
			e.verifiedAt, e.epoch, e.offered = old.verifiedAt, old.epoch, true
		} else if m, ok := c.offers.Peek(k); ok {
			e.verifiedAt, e.epoch, e.offered = m.verifiedAt, m.epoch, true
		} else {
			checked = false
		}
	}
	if checked && (c.purgedSinceLocked(k, e.epoch) || !now.Before(e.verifiedAt.Add(c.ttl))) {
		// Verified before a purge that covers k, or too long ago: store
		// nothing, and drop what the session came from.
		if old, ok := c.lru.Peek(k); ok && !old.verifiedAt.After(e.verifiedAt) {
			c.lru.Remove(k)
		}
		c.mu.Unlock()
		return
	}
	evicted, hadEvicted := c.storeLocked(k, e)
	c.mu.Unlock()

	c.puts.Add(1)
	if hadEvicted {
		c.evictions.Add(1)
		c.observer.SessionCacheEvicted(evicted.tenant)
	}
}

// verification returns the time and purge epoch a full handshake
// verifying the server now is credited with.
func (c *SessionCache) verification() (time.Time, uint64) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	return now, c.epoch
}

// handshakeResult records the outcome of a handshake that was offered a
// session (NewTLS).
func (c *SessionCache) handshakeResult(tenant string, resumed bool) {
	if resumed {
		c.resumed.Add(1)
	} else {
		c.notResumed.Add(1)
	}
	c.observer.SessionCacheResumption(tenant, resumed)
}

// sessionView is one partition of a SessionCache, used by crypto/tls
// directly (ForTenant and the cache's own methods).
type sessionView struct {
	c                      *SessionCache
	tenant, identity, addr string
}

// Get implements tls.ClientSessionCache.
func (v sessionView) Get(sessionKey string) (*tls.ClientSessionState, bool) {
	e, _, ok := v.c.get(v.key(sessionKey), lookup{plain: true})
	return e.state, ok
}

// Put implements tls.ClientSessionCache.
func (v sessionView) Put(sessionKey string, cs *tls.ClientSessionState) {
	v.c.put(v.key(sessionKey), cs, stored{})
}

func (v sessionView) key(name string) sessionKey {
	return sessionKey{tenant: v.tenant, identity: v.identity, addr: v.addr, name: name}
}

// handshakeView is the partition of a SessionCache one NewTLS client
// handshake uses. It sees the handshake from inside (through the
// VerifyConnection and GetClientCertificate wrappers NewTLS installs), so
// it knows whether a session it offered was resumed and which client
// certificate was sent.
type handshakeView struct {
	c       *SessionCache
	base    sessionKey // name filled per call
	lookup  lookup
	getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error) // cfg.GetClientCertificate, or nil

	mu           sync.Mutex // guards the fields below
	offered      bool
	offeredKey   sessionKey
	offeredEntry sessionEntry
	resumedKnown bool
	resumed      bool
	verifiedAt   time.Time
	verifiedEpc  uint64
	certSent     bool
	clientCert   string
	certReq      *tls.CertificateRequestInfo
	dropped      bool // crypto/tls dropped the session offered (Put nil)
}

func newHandshakeView(c *SessionCache, base sessionKey, anyAddr bool,
	getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *handshakeView {
	v := &handshakeView{c: c, base: base, getCert: getCert}
	v.lookup = lookup{anyAddr: anyAddr}
	if getCert != nil {
		v.lookup.check = v.checkClientCert
	}
	return v
}

// checkClientCert accepts a session only if the certificate the
// credentials would send now, for the request the session's certificate
// was chosen for, is that certificate.
func (v *handshakeView) checkClientCert(e *sessionEntry) bool {
	if e.certReq == nil {
		return true // the server asked for no certificate
	}
	cert, err := v.getCert(e.certReq)
	if err != nil {
		return false
	}
	return certFingerprint(cert) == e.clientCert
}

// Get implements tls.ClientSessionCache.
func (v *handshakeView) Get(name string) (*tls.ClientSessionState, bool) {
	k := v.base
	k.name = name
	e, found, ok := v.c.get(k, v.lookup)
	if ok {
		v.mu.Lock()
		v.offered, v.offeredKey, v.offeredEntry = true, found, e
		v.mu.Unlock()
	}
	return e.state, ok
}

// Put implements tls.ClientSessionCache.
func (v *handshakeView) Put(name string, cs *tls.ClientSessionState) {
	k := v.base
	k.name = name
	v.mu.Lock()
	s := stored{
		known:         v.resumedKnown,
		resumed:       v.resumed,
		from:          v.offeredEntry,
		verifiedAt:    v.verifiedAt,
		verifiedEpoch: v.verifiedEpc,
		clientCert:    v.clientCert,
		certReq:       v.certReq,
		certSent:      v.certSent,
	}
	offered, offeredKey := v.offered, v.offeredKey
	if cs == nil && offered {
		v.dropped = true // restored if the handshake dies on its transport (keepDropped)
	}
	v.mu.Unlock()
	if cs == nil && offered && offeredKey != k {
		// The session offered from another address is unusable too.
		v.c.remove(offeredKey, s.from.state)
	}
	if s.known && s.resumed && !offered {
		s.known = false // cannot happen; be conservative
	}
	v.c.put(k, cs, s)
}

// verified records the outcome crypto/tls reports to VerifyConnection,
// which it calls on every handshake before storing any ticket.
func (v *handshakeView) verified(cs tls.ConnectionState) {
	at, epoch := v.c.verification()
	v.mu.Lock()
	v.resumedKnown, v.resumed = true, cs.DidResume
	v.verifiedAt, v.verifiedEpc = at, epoch
	v.mu.Unlock()
}

// sentCert records the client certificate a full handshake sends.
func (v *handshakeView) sentCert(cri *tls.CertificateRequestInfo, cert *tls.Certificate) {
	fp := certFingerprint(cert)
	v.mu.Lock()
	v.certSent, v.clientCert, v.certReq = true, fp, cri
	v.mu.Unlock()
}

// keepDropped puts back the session crypto/tls dropped when the
// handshake failed, the handshake having died on its transport
// (SessionCache.restore).
func (v *handshakeView) keepDropped() {
	v.mu.Lock()
	dropped, k, e := v.dropped, v.offeredKey, v.offeredEntry
	v.mu.Unlock()
	if dropped {
		v.c.restore(k, e)
	}
}

// wasOffered reports whether the handshake was offered a session.
func (v *handshakeView) wasOffered() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.offered
}

// prefixView partitions a foreign tls.ClientSessionCache (one the caller
// set in tls.Config.ClientSessionCache) by prefixing its keys. The prefix
// is length-delimited so no two partitions can produce the same key.
type prefixView struct {
	inner  tls.ClientSessionCache
	prefix string
}

var _ tls.ClientSessionCache = prefixView{}

func newPrefixView(inner tls.ClientSessionCache, tenant, identity, addr string) prefixView {
	return prefixView{inner: inner, prefix: fmt.Sprintf("grpcreuse:%d:%s%d:%s%d:%s|",
		len(tenant), tenant, len(identity), identity, len(addr), addr)}
}

// Get implements tls.ClientSessionCache.
func (v prefixView) Get(sessionKey string) (*tls.ClientSessionState, bool) {
	return v.inner.Get(v.prefix + sessionKey)
}

// Put implements tls.ClientSessionCache.
func (v prefixView) Put(sessionKey string, cs *tls.ClientSessionState) {
	v.inner.Put(v.prefix+sessionKey, cs)
}
