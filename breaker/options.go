package breaker

import (
	"errors"
	"slices"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// Option configures New.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	cfg     Config
	keyFunc func(target, method string) string
	obs     telemetry.BreakerObserver
	tenant  string
}

func defaultOptions() options {
	return options{cfg: DefaultConfig(), obs: telemetry.Nop{}}
}

// WithConfig replaces the whole policy; start from DefaultConfig and
// change what you need. New validates it.
func WithConfig(c Config) Option {
	c.FailureCodes = slices.Clone(c.FailureCodes)
	return optionFunc(func(o *options) { o.cfg = c })
}

// WithKeyFunc keys breakers by fn(target, method) instead of by
// Config.Scope; fn must be safe for concurrent use and should be cheap, as
// it runs on every call. The key it returns names the breaker in errors
// and telemetry.
func WithKeyFunc(fn func(target, method string) string) Option {
	return optionFunc(func(o *options) { o.keyFunc = fn })
}

// WithTenant labels the registry's breakers with tenant: it appears in
// Status and in the messages of rejected calls. A registry serves one
// tenant; give each tenant its own (clientconn.Factory does), so one
// tenant's failures never open another's breakers.
func WithTenant(tenant string) Option {
	return optionFunc(func(o *options) { o.tenant = tenant })
}

// WithObserver sends state changes and rejections to obs. Default:
// telemetry.Nop. obs is never called while a breaker's lock is held, so it
// may call back into the Registry.
func WithObserver(obs telemetry.BreakerObserver) Option {
	return optionFunc(func(o *options) { o.obs = obs })
}

var errNilObserver = errors.New("breaker: WithObserver(nil); pass telemetry.Nop{} to observe nothing")
