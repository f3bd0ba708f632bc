package credentials

import (
	"crypto/tls"
	"sync/atomic"
)

// perHandshake returns a copy of base whose handshakes see the value
// current returns at the time: apply writes it into each handshake's
// config through GetConfigForClient, which (unlike setting fields once)
// reaches the clones grpc's credentials and NewTLS make. A config from
// base's own GetConfigForClient is copied and gets the value too;
// otherwise the copy of base is cached until current returns another
// value, so a handshake does not clone the config. The returned config
// itself carries the value current returned now.
//
// TicketKeyRotator (ticket keys) and TrustBundle (client CAs) are built on
// it, and compose in either order.
func perHandshake[V comparable](base *tls.Config, current func() V, apply func(*tls.Config, V)) *tls.Config {
	inner := base.GetConfigForClient
	tmpl := base.Clone()
	tmpl.GetConfigForClient = nil
	type derived struct {
		v   V
		cfg *tls.Config
	}
	var cur atomic.Pointer[derived]
	out := base.Clone()
	apply(out, current())
	out.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		v := current()
		if inner != nil {
			c, err := inner(hello)
			if err != nil {
				return nil, err
			}
			if c != nil {
				c = c.Clone()
				apply(c, v)
				return c, nil
			}
		}
		if d := cur.Load(); d != nil && d.v == v {
			return d.cfg, nil
		}
		c := tmpl.Clone()
		apply(c, v)
		cur.Store(&derived{v: v, cfg: c})
		return c, nil
	}
	return out
}
