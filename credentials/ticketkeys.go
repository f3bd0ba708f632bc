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
	fromFile     bool
	files        *fileReader // reads keyFile; nil with random keys
	onError      func(error)

	keys atomic.Pointer[keySet]

	mu      sync.Mutex // serialises rotations, reloads and Revoke; guards err and revoked
	err     error
	revoked revokedKeys // keys dropped by Revoke, refused from the key file

	loop      *loop
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
	if o.interval <= 0 {
		return nil, fmt.Errorf("credentials: WithRotationInterval is %v; must be positive", o.interval)
	}
	if o.previousKeys < 0 || o.previousKeys > maxTicketKeys {
		return nil, fmt.Errorf("credentials: WithPreviousKeys is %d; must be between 0 and %d", o.previousKeys, maxTicketKeys)
	}
	if o.pollInterval <= 0 {
		return nil, fmt.Errorf("credentials: WithPollInterval is %v; must be positive", o.pollInterval)
	}
	r := &TicketKeyRotator{
		previousKeys: o.previousKeys,
		keyFile:      o.keyFile,
		fromFile:     o.keyFileSet,
		onError:      o.onError,
	}
	period := o.interval
	if r.fromFile {
		files, err := newFileReader(o.reloadOptions, fileSpec{kind: "ticket key file", path: r.keyFile, limit: maxKeyFileSize})
		if err != nil {
			return nil, err
		}
		r.files = files
		data, err := files.readInitial()
		if err != nil {
			return nil, err
		}
		keys, err := parseTicketKeyFile(r.keyFile, data[0])
		if err != nil {
			return nil, err
		}
		r.keys.Store(&keySet{keys: keys, gen: 1})
		period = o.pollInterval
	} else {
		r.keys.Store(&keySet{keys: [][32]byte{newTicketKey()}, gen: 1})
	}
	r.loop = startLoop(o.newTicker(period), func() { _ = r.Rotate() })
	return r, nil
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
	return perHandshake(base, r.keys.Load, func(c *tls.Config, ks *keySet) { c.SetSessionTicketKeys(ks.keys) }), nil
}

// Rotate advances now instead of waiting for the next tick. With random
// keys it makes a new encryption key and drops the oldest beyond the
// window; with a key file it re-reads the file, returning (and reporting
// to WithErrorHandler) why the file was not taken. The background
// goroutine calls it on every tick; calling it after Close is allowed.
func (r *TicketKeyRotator) Rotate() error {
	if !r.fromFile {
		r.mu.Lock()
		old := r.keys.Load()
		n := min(len(old.keys), r.previousKeys)
		keys := make([][32]byte, 0, n+1)
		keys = append(keys, newTicketKey())
		keys = append(keys, old.keys[:n]...)
		r.keys.Store(&keySet{keys: keys, gen: old.gen + 1})
		r.mu.Unlock()
		return nil
	}

	keys, changed, err := r.readTicketKeyFile()
	r.files.note(err, changed)
	r.mu.Lock()
	if err == nil {
		keys, err = r.withoutRevokedLocked(keys)
	}
	prev := r.err
	r.err = err
	if err == nil {
		if old := r.keys.Load(); !slices.Equal(old.keys, keys) {
			r.keys.Store(&keySet{keys: keys, gen: old.gen + 1})
		}
	}
	r.mu.Unlock()
	if err != nil && (prev == nil || prev.Error() != err.Error()) {
		r.onError(err)
	}
	return err
}

// Err returns why the key file was last not taken, or nil if its last
// reading succeeded (always nil with random keys). The message never
// contains key material.
func (r *TicketKeyRotator) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Close stops the background goroutine and waits for it to exit. Configs
// from ServerConfig keep working with the last keys. Close is idempotent
// and always returns nil.
func (r *TicketKeyRotator) Close() error {
	r.closeOnce.Do(func() {
		if r.files != nil {
			r.files.close() // interrupts a reading stuck on a hung mount
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

// readTicketKeyFile reads and parses the key file through the bounded,
// tear-free reader (see fileReader); its errors name the file.
func (r *TicketKeyRotator) readTicketKeyFile() (keys [][32]byte, changed bool, err error) {
	data, changed, err := r.files.read()
	if err != nil {
		return nil, false, err
	}
	keys, err = parseTicketKeyFile(r.keyFile, data[0])
	return keys, changed, err
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
