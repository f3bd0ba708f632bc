package interceptors

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/metadata"
)

// CriticalityHeader is the request metadata key that carries a request's
// criticality to a Shedder: "critical" or "sheddable" (lower case, as
// gRPC metadata keys and these values are spelled). A request without it,
// or with another value, takes its method's default
// (ShedderConfig.Criticality, else Critical). Sheddable requests are shed
// first: once ShedderConfig.SheddableShare of the in-flight limit is in
// use. The header is the client's word: a server facing clients it does
// not trust strips or overwrites it (for example in a proxy) or relies on
// the per-method defaults.
const CriticalityHeader = "grpcreuse-criticality"

// Criticality says how much a request matters when a server is
// overloaded.
type Criticality int

const (
	// Critical requests may use the whole in-flight limit. The default.
	Critical Criticality = iota
	// Sheddable requests (batch work, prefetches, retries a caller can
	// live without) may use ShedderConfig.SheddableShare of it.
	Sheddable
)

// String returns "critical" or "sheddable", the header's spelling.
func (c Criticality) String() string {
	switch c {
	case Critical:
		return "critical"
	case Sheddable:
		return "sheddable"
	}
	return "Criticality(" + strconv.Itoa(int(c)) + ")"
}

// MarshalText returns the header's spelling (String), so that a
// Criticality reads and writes as "critical" or "sheddable" in JSON, YAML
// or flag.TextVar; it fails for a value that is neither.
func (c Criticality) MarshalText() ([]byte, error) {
	if c != Critical && c != Sheddable {
		return nil, fmt.Errorf("interceptors: criticality %d is neither Critical nor Sheddable", int(c))
	}
	return []byte(c.String()), nil
}

// UnmarshalText sets c from "critical" or "sheddable", spelled as the
// header spells them; anything else is an error naming the value.
func (c *Criticality) UnmarshalText(b []byte) error {
	v, ok := parseCriticality(string(b))
	if !ok {
		return fmt.Errorf("interceptors: criticality %q is neither %q nor %q", b, Critical, Sheddable)
	}
	*c = v
	return nil
}

// WithCriticality returns ctx with outgoing metadata that marks a client's
// calls made with it as c (CriticalityHeader).
func WithCriticality(ctx context.Context, c Criticality) context.Context {
	return metadata.AppendToOutgoingContext(ctx, CriticalityHeader, c.String())
}

// parseCriticality reads a header value; ok is false for anything but the
// two spellings.
func parseCriticality(v string) (Criticality, bool) {
	switch v {
	case "critical":
		return Critical, true
	case "sheddable":
		return Sheddable, true
	}
	return Critical, false
}

// validMethodKey reports whether k is "/pkg.Service/Method" or
// "/pkg.Service/".
func validMethodKey(k string) bool {
	if len(k) < 3 || k[0] != '/' {
		return false
	}
	i := strings.IndexByte(k[1:], '/')
	return i > 0 && !strings.Contains(k[i+2:], "/")
}

// methodCriticality returns the configured default for method: its own
// entry, else its service's, else Critical.
func methodCriticality(m map[string]Criticality, method string) Criticality {
	c, _ := byMethod(m, method)
	return c // Critical when absent: the zero value
}

// byMethod looks method ("/pkg.Service/Method") up in a map keyed as the
// config keys methods: its own entry, else its service's
// ("/pkg.Service/"). Criticality and Exempt share it.
func byMethod[V any](m map[string]V, method string) (V, bool) {
	if len(m) > 0 {
		if v, ok := m[method]; ok {
			return v, true
		}
		if i := strings.LastIndexByte(method, '/'); i > 0 {
			if v, ok := m[method[:i+1]]; ok {
				return v, true
			}
		}
	}
	var zero V
	return zero, false
}
