package clientconn

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/jsonfield"
)

// serviceConfig is one service config document split in two: what grpc
// reads, and the parsed "grpcreuse" policy. The Factory keeps one per
// document while a pool entry uses it (the default document always), and
// the maxUnusedConfigs most recently used others, so a process that sees
// many documents over its life does not keep them all.
type serviceConfig struct {
	doc    string
	grpc   string
	policy *interceptors.Policy // nil without a policy
	refs   int                  // pool entries using it; guarded by Factory.mu
	// checked says grpc accepted the gRPC part: checked by New for the
	// default document, else by the first grpc.NewClient made with it.
	checked atomic.Bool
}

// policyKey identifies the policy state of one tenant under one document.
type policyKey struct{ doc, tenant string }

// Bounds on the documents and policy states kept without a pool entry
// using them: a tenant whose connections come and go (WithMaxIdle(0), or
// idle eviction) finds its breakers as it left them unless this many
// others were used since.
const (
	maxUnusedConfigs  = 8
	maxUnusedPolicies = 64
)

// policyState is the breakers and limiters of one (document, tenant):
// every connection of the tenant made with the document shares it, so a
// connection replaced for its age keeps its breakers' state, and no other
// tenant's calls ever reach it.
type policyState struct {
	key      policyKey
	chain    *interceptors.Chain
	dialOpts []grpc.DialOption
	refs     int // pool entries using it; guarded by Factory.mu
}

// parseServiceConfig splits doc and validates its policy, and with
// checkGRPC its gRPC part (New does, so a bad default fails New). A
// per-Get document's gRPC part is checked by the grpc.NewClient that
// uses it (dial), which is the same parser: checking it first here cost a
// second throwaway grpc.NewClient per new document. It runs without locks.
func parseServiceConfig(doc string, checkGRPC bool) (*serviceConfig, error) {
	grpcDoc, policy, err := interceptors.SplitServiceConfig(doc)
	if err != nil {
		return nil, fmt.Errorf("clientconn: service config: %w", err)
	}
	sc := &serviceConfig{doc: doc, grpc: grpcDoc, policy: policy}
	if grpcDoc == "" {
		sc.checked.Store(true)
	} else if checkGRPC {
		if err := checkGRPCServiceConfig(grpcDoc); err != nil {
			return nil, fmt.Errorf("clientconn: service config: %w", err)
		}
		sc.checked.Store(true)
	}
	return sc, nil
}

// explainDialError turns grpc.NewClient's refusal of a document not yet
// checked into the error naming its field and value.
func (sc *serviceConfig) explainDialError(err error) error {
	if sc.checked.Load() {
		return nil
	}
	if cerr := checkGRPCServiceConfig(sc.grpc); cerr != nil {
		return fmt.Errorf("clientconn: service config: %w", cerr)
	}
	return nil
}

// lookupServiceConfig returns the parsed doc: the Factory's if a live
// entry (or the default) uses it, else a fresh parse that the Factory
// keeps only if an entry comes to use it.
func (f *Factory) lookupServiceConfig(doc string) (*serviceConfig, error) {
	f.mu.Lock()
	sc, ok := f.configs[doc]
	f.mu.Unlock()
	if ok {
		return sc, nil
	}
	return parseServiceConfig(doc, false)
}

// newPolicyState builds the chain of sc's policy for tenant.
func (f *Factory) newPolicyState(sc *serviceConfig, tenant string) (*policyState, error) {
	chain, err := interceptors.NewClientChain(interceptors.WithPolicy(sc.policy),
		interceptors.WithTenant(tenant), interceptors.WithPolicyObservers(f.obs, f.obs))
	if err != nil {
		return nil, fmt.Errorf("clientconn: service config: %w", err)
	}
	return &policyState{key: policyKey{sc.doc, tenant}, chain: chain, dialOpts: chain.DialOptions()}, nil
}

// holdConfigLocked counts one more entry on s's document and policy
// state, storing them if they are new. It reports false if another entry
// stored a different policy state for the same tenant and document
// meanwhile: s was dialled with the wrong chain and must be redone.
func (f *Factory) holdConfigLocked(s *shared) bool {
	if s.pol != nil {
		if cur, ok := f.policies[s.pol.key]; ok && cur != s.pol {
			return false
		}
		f.policies[s.pol.key] = s.pol
		if s.pol.refs++; s.pol.refs == 1 {
			f.unusedPolicies.Remove(s.pol.key) // the callback sees refs > 0
		}
	}
	if cur, ok := f.configs[s.sc.doc]; ok {
		s.sc = cur
	} else {
		f.configs[s.sc.doc] = s.sc
	}
	if s.sc.refs++; s.sc.refs == 1 {
		f.unusedConfigs.Remove(s.sc.doc)
	}
	return true
}

// onUnusedPolicyEvict forgets a policy state pushed out of the unused set;
// it runs under f.mu.
func (f *Factory) onUnusedPolicyEvict(k policyKey, p *policyState) {
	if p.refs == 0 && f.policies[k] == p {
		delete(f.policies, k)
	}
}

// onUnusedConfigEvict forgets a document pushed out of the unused set; it
// runs under f.mu.
func (f *Factory) onUnusedConfigEvict(doc string, sc *serviceConfig) {
	if sc.refs == 0 && doc != f.opts.serviceConfig && f.configs[doc] == sc {
		delete(f.configs, doc)
	}
}

// releaseConfigLocked undoes holdConfigLocked when s leaves the pool.
func (f *Factory) releaseConfigLocked(s *shared) {
	if s.pol != nil {
		if s.pol.refs--; s.pol.refs == 0 && f.policies[s.pol.key] == s.pol {
			f.unusedPolicies.Add(s.pol.key, s.pol) // may push the oldest out
		}
	}
	if s.sc != nil {
		if s.sc.refs--; s.sc.refs == 0 && s.sc.doc != f.opts.serviceConfig && f.configs[s.sc.doc] == s.sc {
			f.unusedConfigs.Add(s.sc.doc, s.sc)
		}
	}
}

// PolicyStatus is the live state of the breakers and limiters that the
// "grpcreuse" policies of a Factory's connections built, one set per
// tenant and document; each entry names its tenant.
type PolicyStatus struct {
	// Breakers are every breaker, sorted by tenant and key.
	Breakers []breaker.Status
	// Limiters are every client limiter, sorted by tenant and key.
	Limiters []interceptors.LimiterStatus
}

// Policies returns the state of every breaker and limiter the Factory's
// policies hold. It copies the list of policies under the Factory's lock
// and reads their state after releasing it.
func (f *Factory) Policies() PolicyStatus {
	f.mu.Lock()
	chains := make([]*interceptors.Chain, 0, len(f.policies))
	for _, p := range f.policies {
		chains = append(chains, p.chain)
	}
	f.mu.Unlock()
	out := PolicyStatus{Breakers: []breaker.Status{}, Limiters: []interceptors.LimiterStatus{}}
	for _, c := range chains {
		out.Breakers = append(out.Breakers, c.Breakers()...)
		out.Limiters = append(out.Limiters, c.Limiters()...)
	}
	slices.SortFunc(out.Breakers, func(a, b breaker.Status) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Key, b.Key))
	})
	slices.SortFunc(out.Limiters, func(a, b interceptors.LimiterStatus) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Key, b.Key))
	})
	return out
}

// checkGRPCServiceConfig asks grpc-go to parse doc (grpc.NewClient parses
// a default service config without connecting) and, when it refuses,
// finds the top-level field it refused, so the error names the field and
// its value as well as grpc's reason.
func checkGRPCServiceConfig(doc string) error {
	err := grpcParses(doc)
	if err == nil {
		return nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal([]byte(doc), &fields) != nil {
		return err
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		one, _ := json.Marshal(map[string]json.RawMessage{k: fields[k]})
		if ferr := grpcParses(string(one)); ferr != nil {
			return fmt.Errorf("%q is %s: %w", k, jsonfield.Clip(fields[k]), ferr)
		}
	}
	return err
}

func grpcParses(doc string) error {
	cc, err := grpc.NewClient("passthrough:///grpcreuse-service-config-check",
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultServiceConfig(doc))
	if err != nil {
		return err
	}
	return cc.Close()
}
