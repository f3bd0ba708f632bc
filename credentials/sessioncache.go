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
)

// SessionCache is a bounded TLS client session cache with a time to live,
// partitioned by tenant. It implements tls.ClientSessionCache for the ""
// tenant; ForTenant returns the view of any other tenant, and NewTLS uses
// finer views keyed also by remote address and client identity.
//
// All methods are safe for concurrent use. A SessionCache starts no
// goroutines: expiry is checked when a session is looked up, and the
// capacity bound is enforced when one is stored.
type SessionCache struct {
	ttl      time.Duration
	capacity int
	observer telemetry.SessionCacheObserver
	now      func() time.Time

	mu  sync.Mutex // guards lru; never held while calling observer
	lru *simplelru.LRU[sessionKey, sessionEntry]

	hits, misses, puts, evictions atomic.Uint64
}

// SessionCacheStats counts what a SessionCache did since it was created.
type SessionCacheStats struct {
	// Hits counts lookups that returned a live session.
	Hits uint64
	// Misses counts lookups that found nothing or only an expired session.
	Misses uint64
	// Puts counts sessions stored (crypto/tls stores one per new ticket).
	Puts uint64
	// Evictions counts sessions dropped because the cache was full or
	// their TTL had passed. Sessions crypto/tls itself invalidates are not
	// counted.
	Evictions uint64
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
	state   *tls.ClientSessionState
	expires time.Time
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
	lru, err := simplelru.NewLRU[sessionKey, sessionEntry](o.capacity, nil)
	if err != nil {
		return nil, fmt.Errorf("credentials: session cache of capacity %d: %w", o.capacity, err)
	}
	return &SessionCache{
		ttl:      o.ttl,
		capacity: o.capacity,
		observer: o.observer,
		now:      o.now,
		lru:      lru,
	}, nil
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
// (NewTLS also separates backends behind one server name, which a plain
// view cannot: crypto/tls keys sessions by server name only).
func (c *SessionCache) ForTenant(name string) tls.ClientSessionCache {
	return c.view(name, "", "")
}

// Stats returns the cache's counters.
func (c *SessionCache) Stats() SessionCacheStats {
	c.mu.Lock()
	n := c.lru.Len()
	c.mu.Unlock()
	return SessionCacheStats{
		Hits:      c.hits.Load(),
		Misses:    c.misses.Load(),
		Puts:      c.puts.Load(),
		Evictions: c.evictions.Load(),
		Len:       n,
	}
}

func (c *SessionCache) view(tenant, identity, addr string) sessionView {
	return sessionView{c: c, tenant: tenant, identity: identity, addr: addr}
}

func (c *SessionCache) get(k sessionKey) (*tls.ClientSessionState, bool) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.lru.Get(k)
	expired := ok && !now.Before(e.expires)
	if expired {
		c.lru.Remove(k)
		ok = false
	}
	c.mu.Unlock()

	if expired {
		c.evictions.Add(1)
		c.observer.SessionCacheEvicted(k.tenant)
	}
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	c.observer.SessionCacheLookup(k.tenant, ok)
	if !ok {
		return nil, false
	}
	return e.state, true
}

func (c *SessionCache) put(k sessionKey, cs *tls.ClientSessionState) {
	if cs == nil {
		// crypto/tls invalidates a session it can no longer use.
		c.mu.Lock()
		c.lru.Remove(k)
		c.mu.Unlock()
		return
	}
	e := sessionEntry{state: cs, expires: c.now().Add(c.ttl)}
	c.mu.Lock()
	var (
		evicted    sessionKey
		hadEvicted bool
	)
	if !c.lru.Contains(k) && c.lru.Len() >= c.capacity {
		evicted, _, hadEvicted = c.lru.RemoveOldest()
	}
	c.lru.Add(k, e)
	c.mu.Unlock()

	c.puts.Add(1)
	if hadEvicted {
		c.evictions.Add(1)
		c.observer.SessionCacheEvicted(evicted.tenant)
	}
}

// sessionView is one partition of a SessionCache.
type sessionView struct {
	c                      *SessionCache
	tenant, identity, addr string
}

// Get implements tls.ClientSessionCache.
func (v sessionView) Get(sessionKey string) (*tls.ClientSessionState, bool) {
	return v.c.get(v.key(sessionKey))
}

// Put implements tls.ClientSessionCache.
func (v sessionView) Put(sessionKey string, cs *tls.ClientSessionState) {
	v.c.put(v.key(sessionKey), cs)
}

func (v sessionView) key(name string) sessionKey {
	return sessionKey{tenant: v.tenant, identity: v.identity, addr: v.addr, name: name}
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
