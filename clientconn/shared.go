package clientconn

import (
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// key identifies what may share one connection.
type key struct {
	target        string // canonical
	tenant        string
	creds         credentials.TransportCredentials // compared by identity
	serviceConfig string                           // compacted JSON
}

// shared is one pooled connection: the handles of every service that asked
// for the same key point at it. Its *grpc.ClientConn can be replaced
// (max age); each one is a generation, and calls hold the generation they
// started on until they end, so replacing one never fails a call.
type shared struct {
	key key
	cur atomic.Pointer[generation] // the generation new calls use
	// dead is set (under Factory.mu) once the entry left the pool; calls
	// that still reach it fail with ErrClosed instead of looping.
	dead atomic.Bool
	// lastErr is the most recent dial or handshake error, for WithWarmUp.
	lastErr atomic.Pointer[connError]
	// lastAddr is the address last dialled, for plaintextProbe.
	lastAddr atomic.Pointer[string]
	// reviveMu serialises revive, so calls failing together on a
	// connection closed behind the Factory's back make one replacement.
	// Lock order: reviveMu, then Factory.mu.
	reviveMu sync.Mutex

	sc        *serviceConfig // its document, held while the entry lives
	pol       *policyState   // its tenant's breakers and limiters; nil without a policy
	tlsTenant bool           // creds are WithTLS's for key.tenant

	// Guarded by Factory.mu.
	refs        int          // live handles
	tenantCreds *tenantCreds // the WithTLS credentials this entry counts on, or nil
	idleEpoch   uint64       // bumped each time refs drops to 0
	idleTimer   *time.Timer  // closes the entry after the idle timeout
	ageTimer    *time.Timer  // replaces the generation after the max age
}

type connError struct{ err error }

func (s *shared) recordErr(err error) {
	if err != nil {
		s.lastErr.Store(&connError{err})
	}
}

func (s *shared) lastError() error {
	if e := s.lastErr.Load(); e != nil {
		return e.err
	}
	return nil
}

// acquire returns the generation a new call should use, with the call
// counted in its in-flight total, or nil if the entry is closed.
//
// The count goes up before retired is checked and retire sets retired
// before it reads the count, so either the call sees the retirement and
// moves on, or the retirement sees the call and waits for it.
func (s *shared) acquire() *generation {
	for {
		g := s.cur.Load()
		g.inflight.Add(1)
		if !g.retired.Load() {
			return g
		}
		g.release()
		// A replaced generation is retired only after its successor is
		// stored, so a retired generation that is still current means the
		// entry itself was closed.
		if s.cur.Load() == g {
			return nil
		}
	}
}

// generation is one *grpc.ClientConn of a shared entry.
type generation struct {
	cc       *grpc.ClientConn
	born     time.Time
	inflight atomic.Int64
	retired  atomic.Bool
	drained  chan struct{} // closed once retired with nothing in flight
	once     sync.Once
}

func newGeneration(cc *grpc.ClientConn, now time.Time) *generation {
	return &generation{cc: cc, born: now, drained: make(chan struct{})}
}

// closedBehindOurBack reports, for a call on g that failed with err, a
// generation whose *grpc.ClientConn is shut down although the Factory has
// not retired it: someone closed Conn.ClientConn(). grpc fails calls on a
// closed ClientConn with codes.Canceled; other errors cost nothing here.
func (g *generation) closedBehindOurBack(err error) bool {
	return status.Code(err) == codes.Canceled && !g.retired.Load() && g.cc.GetState() == connectivity.Shutdown
}

// release ends one call on g.
func (g *generation) release() {
	if g.inflight.Add(-1) == 0 && g.retired.Load() {
		g.once.Do(func() { close(g.drained) })
	}
}

// retire stops new calls from starting on g; drained closes once the
// calls already running end.
func (g *generation) retire() {
	g.retired.Store(true)
	if g.inflight.Load() == 0 {
		g.once.Do(func() { close(g.drained) })
	}
}

// streamDone releases a stream's generation exactly once: grpc calls
// OnFinish when the stream ends, but an interceptor that fails before the
// stream is created never lets grpc see it, so NewStream errors release too.
type streamDone struct {
	g    *generation
	once sync.Once
}

func (d *streamDone) finish(error) { d.once.Do(d.g.release) }
