package credentials

import (
	"crypto/sha256"
	"fmt"
)

// maxRevokedKeys bounds how many revoked keys a TicketKeyRotator remembers
// (by hash) to refuse them when a key file brings them back.
const maxRevokedKeys = 1024

// revokedKeys remembers revoked ticket keys by their SHA-256, never the
// keys themselves, oldest dropped first beyond maxRevokedKeys.
type revokedKeys struct {
	set   map[[32]byte]struct{}
	order [][32]byte
}

func (rk *revokedKeys) add(k [32]byte) {
	h := sha256.Sum256(k[:])
	if rk.set == nil {
		rk.set = make(map[[32]byte]struct{})
	}
	if _, ok := rk.set[h]; ok {
		return
	}
	if len(rk.order) == maxRevokedKeys {
		delete(rk.set, rk.order[0])
		rk.order = rk.order[1:]
	}
	rk.set[h] = struct{}{}
	rk.order = append(rk.order, h)
}

func (rk *revokedKeys) has(k [32]byte) bool {
	_, ok := rk.set[sha256.Sum256(k[:])]
	return ok
}

// Revoke drops every ticket key at once, so no ticket issued before the
// call resumes again, on this server, from the next handshake on: every
// client falls back to a full handshake (no call fails; crypto/tls treats a
// ticket it cannot decrypt as no ticket). Connections already established
// stay up.
//
// With random keys, one fresh key replaces them all and rotation goes on
// from it. With WithTicketKeyFile, the revoked keys are never taken from
// the file again: Revoke re-reads the file at once and uses the keys in it
// that were not revoked, and while the file holds only revoked keys the
// rotator encrypts with a fresh local key (replicas then do not resume
// each other's sessions) and Err says why, until the file holds a key that
// was never revoked. Every key in use is revoked, including a fresh key the
// rotator already read from the file, so the fleet procedure is: Revoke on
// every replica, then write one fresh key to the file (see docs/tls.md).
// The error returned is that of reading the file, nil with random keys;
// the keys are revoked in any case. Revoke may be called after Close.
func (r *TicketKeyRotator) Revoke() error {
	if r.w == nil {
		r.mu.Lock()
		old := r.keys.Load()
		r.keys.Store(&keySet{keys: [][32]byte{newTicketKey()}, gen: old.gen + 1})
		r.mu.Unlock()
		logRevoked(len(old.keys))
		return nil
	}
	// A reading of the file, as Rotate's, whose keys replace every key in
	// use even when it fails: then with a fresh local key.
	var dropped int
	err := r.w.update(func(data [][]byte, err error, old *keySet) (*keySet, error) {
		dropped = len(old.keys)
		for _, k := range old.keys {
			r.revoked.add(k)
		}
		next := &keySet{keys: [][32]byte{newTicketKey()}, gen: old.gen + 1}
		if err == nil {
			var fresh *keySet
			if fresh, err = r.parseKeyFile(data, old); err == nil {
				next = fresh
			}
		}
		return next, err
	})
	logRevoked(dropped)
	return err
}

func logRevoked(n int) {
	logger.Infof("ticket keys revoked: %d dropped, none of their tickets resumes again", n)
}

// withoutRevokedLocked returns keys without the revoked ones, or an error
// if none is left. Called with r.w.mu held (from parseKeyFile).
func (r *TicketKeyRotator) withoutRevokedLocked(keys [][32]byte) ([][32]byte, error) {
	if len(r.revoked.order) == 0 {
		return keys, nil
	}
	out := make([][32]byte, 0, len(keys))
	for _, k := range keys {
		if !r.revoked.has(k) {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("credentials: ticket key file %q: every key in it was revoked; "+
			"encrypting with a local key until the file holds a fresh one (Revoke revokes every key in use, "+
			"a fresh key already read from the file included: Revoke first, then write the fresh key)", r.keyFile)
	}
	return out, nil
}
