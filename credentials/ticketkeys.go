package credentials

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

const (
	// maxTicketKeys bounds the keys of a key file and WithPreviousKeys.
	maxTicketKeys = 100
	// maxKeyFileSize bounds how much of a key file is read.
	maxKeyFileSize = 64 << 10
)

// TicketKeyRotator supplies the session ticket keys of TLS servers: the
// first key encrypts new tickets, all keys decrypt. Keys are either random
// (from crypto/rand, a new one every rotation interval, the previous
// WithPreviousKeys kept) or read from a key file shared by a fleet
// (WithTicketKeyFile, re-read every poll interval, the last good keys kept
// when the file is unreadable or invalid).
//
// Apply it to a server configuration with ServerConfig. Its methods are
// safe for concurrent use. It starts one goroutine, stopped by Close.
type TicketKeyRotator struct {
	previousKeys int
	keyFile      string

	// With WithTicketKeyFile, w reads the file (as for CertificateReloader
	// and TrustBundle), holds the keys and polls; its lock serialises
	// readings and Revoke.
	w       *watched[keySet] // nil with random keys
	revoked revokedKeys      // keys dropped by Revoke, refused from the key file; guarded by w.mu

	// With random keys.
	keys atomic.Pointer[keySet]
	mu   sync.Mutex // serialises rotations and Revoke
	loop *loop      // rotates every rotation interval

	closeOnce sync.Once
}

// keySet is one immutable generation of keys.
type keySet struct {
	keys [][32]byte
	gen  uint64
}

// NewTicketKeyRotator returns a rotator with its first keys in place and
// its background goroutine started. With WithTicketKeyFile the file must
// be valid now; later bad contents only keep the last good keys. It fails
// on a non-positive interval, a negative or too large WithPreviousKeys,
// random-key options combined with a key file, or an unreadable or invalid
// key file.
func NewTicketKeyRotator(opts ...TicketKeyOption) (*TicketKeyRotator, error) {
	o := defaultTicketKeyOptions()
	for i, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("credentials: NewTicketKeyRotator: option %d is nil", i)
		}
		opt.applyTicketKey(&o)
	}
	if o.keyFileSet && o.randomOnly != "" {
		return nil, fmt.Errorf("credentials: %s cannot be combined with WithTicketKeyFile; the key file's writer rotates its keys", o.randomOnly)
	}
	if o.keyFileSet && o.keyFile == "" {
		return nil, errors.New("credentials: WithTicketKeyFile is \"\"; must name a file")
	}
	if err := checkInterval("WithRotationInterval", o.interval); err != nil {
		return nil, err
	}
	if o.previousKeys < 0 || o.previousKeys > maxTicketKeys {
		return nil, fmt.Errorf("credentials: WithPreviousKeys is %d; must be between 0 and %d", o.previousKeys, maxTicketKeys)
	}
	if err := checkInterval("WithPollInterval", o.pollInterval); err != nil {
		return nil, err
	}
	r := &TicketKeyRotator{previousKeys: o.previousKeys, keyFile: o.keyFile}
	if !o.keyFileSet {
		r.keys.Store(&keySet{keys: [][32]byte{newTicketKey()}, gen: 1})
		r.loop = startLoop(o.newTicker(o.interval), func() { _ = r.Rotate() })
		return r, nil
	}
	w, err := newWatched(o.reloadOptions, r.parseKeyFile,
		func(a, b *keySet) bool { return slices.Equal(a.keys, b.keys) }, // unchanged keys keep their generation
		fileSpec{kind: "ticket key file", path: r.keyFile, limit: maxKeyFileSize})
	if err != nil {
		return nil, err
	}
	r.w = w
	return r, nil
}

// current returns the keys in use.
func (r *TicketKeyRotator) current() *keySet {
	if r.w != nil {
		return r.w.val.Load()
	}
	return r.keys.Load()
}

// parseKeyFile makes the next key set from the key file's contents (see
// watched.parse; it runs under r.w.mu): the file's keys without the
// revoked ones, one generation after old.
func (r *TicketKeyRotator) parseKeyFile(data [][]byte, old *keySet) (*keySet, error) {
	keys, err := parseTicketKeyFile(r.keyFile, data[0])
	if err != nil {
		return nil, err
	}
	if keys, err = r.withoutRevokedLocked(keys); err != nil {
		return nil, err
	}
	return &keySet{keys: keys, gen: nextGen(old)}, nil
}

func nextGen(old *keySet) uint64 {
	if old == nil {
		return 1
	}
	return old.gen + 1
}

// ServerConfig returns a copy of base whose handshakes use the rotator's
// current keys. It works through tls.Config.GetConfigForClient (calling
// base's own first, if set), so it keeps working when the config is cloned,
// as grpc's credentials.NewTLS and this package's NewTLS do. (Calling
// SetSessionTicketKeys on a config does not reach its clones.)
//
// It fails if base is nil or has SessionTicketsDisabled set.
func (r *TicketKeyRotator) ServerConfig(base *tls.Config) (*tls.Config, error) {
	if base == nil {
		return nil, errors.New("credentials: ServerConfig: tls.Config is nil")
	}
	if base.SessionTicketsDisabled {
		return nil, errors.New("credentials: ServerConfig: tls.Config.SessionTicketsDisabled is true; ticket keys would never be used")
	}
	// Each key set is a new *keySet, so the pointer changes with the keys.
	return perHandshake(base, r.current, func(c *tls.Config, ks *keySet) { c.SetSessionTicketKeys(ks.keys) }), nil
}

// Rotate advances now instead of waiting for the next tick. With random
// keys it makes a new encryption key and drops the oldest beyond the
// window; with a key file it re-reads the file, returning (and reporting
// to WithErrorHandler) why the file was not taken. The background
// goroutine calls it on every tick; calling it after Close is allowed.
func (r *TicketKeyRotator) Rotate() error {
	if r.w != nil {
		return r.w.reload()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.keys.Load()
	n := min(len(old.keys), r.previousKeys)
	keys := make([][32]byte, 0, n+1)
	keys = append(keys, newTicketKey())
	keys = append(keys, old.keys[:n]...)
	r.keys.Store(&keySet{keys: keys, gen: old.gen + 1})
	return nil
}

// Err returns why the key file was last not taken, or nil if its last
// reading succeeded (always nil with random keys). The message never
// contains key material.
func (r *TicketKeyRotator) Err() error {
	if r.w == nil {
		return nil
	}
	return r.w.files.lastErr()
}

// Close stops the background goroutine and waits for it to exit. Configs
// from ServerConfig keep working with the last keys. Close is idempotent
// and always returns nil.
func (r *TicketKeyRotator) Close() error {
	r.closeOnce.Do(func() {
		if r.w != nil {
			r.w.close() // interrupts a reading stuck on a hung mount
			return
		}
		r.loop.stop()
	})
	return nil
}

func newTicketKey() [32]byte {
	var k [32]byte
	_, _ = rand.Read(k[:]) // crypto/rand.Read never fails; it crashes the program instead.
	return k
}

func parseTicketKeyFile(path string, data []byte) ([][32]byte, error) {
	keys, err := parseTicketKeys(data)
	if err != nil {
		return nil, fmt.Errorf("credentials: ticket key file %q: %w", path, err)
	}
	return keys, nil
}

// errNoTicketKeys is returned (wrapped) for a key file without any key.
var errNoTicketKeys = errors.New("no keys; want at least one base64-encoded 32-byte key per line")

// parseTicketKeys parses the key file format: one key per line, each the
// standard base64 encoding (with padding) of exactly 32 bytes; surrounding
// spaces, blank lines and lines starting with '#' are ignored. Errors give
// line numbers and lengths, never key material.
func parseTicketKeys(data []byte) ([][32]byte, error) {
	if bytes.HasPrefix(data, []byte("\uFEFF")) {
		return nil, errors.New("line 1: starts with a UTF-8 byte-order mark (saved by a Windows editor?); save the file without it")
	}
	var keys [][32]byte
	for i, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		lineNo := i + 1
		if len(keys) == maxTicketKeys {
			return nil, fmt.Errorf("line %d: more than %d keys", lineNo, maxTicketKeys)
		}
		buf := make([]byte, base64.StdEncoding.DecodedLen(len(line)))
		n, err := base64.StdEncoding.Decode(buf, line)
		if err != nil {
			var ce base64.CorruptInputError
			if errors.As(err, &ce) {
				return nil, fmt.Errorf("line %d: not standard base64 (bad data at byte %d)", lineNo, int64(ce))
			}
			return nil, fmt.Errorf("line %d: not standard base64", lineNo)
		}
		if n != 32 {
			clear(buf)
			return nil, fmt.Errorf("line %d: key is %d bytes; want 32", lineNo, n)
		}
		var k [32]byte
		copy(k[:], buf[:n])
		clear(buf)
		if k == ([32]byte{}) {
			return nil, fmt.Errorf("line %d: key is all zero bytes", lineNo)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errNoTicketKeys
	}
	return keys, nil
}
