package clientconn

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/grpc/resolver"
)

// dnsDefaultPort is the port grpc-go's dns resolver assumes when a target
// names none.
const dnsDefaultPort = "443"

// canonicalTarget returns the one spelling of target that grpc.NewClient
// would resolve the same way, so "h:p", "dns:h:p", "dns:///h:p" and
// "dns:///H:p" share a connection, and "dns:///h" means "dns:///h:443".
// Targets with a registered non-dns scheme (passthrough, unix, xds, ...) or
// a dns authority are kept verbatim: only their resolver knows what they
// mean.
func canonicalTarget(target string) (string, error) {
	return canonicalTargetWith(target, resolver.Get)
}

// canonicalTargetWith is canonicalTarget with the schemes that lookup
// knows: a Factory's own resolvers (WithResolvers) before grpc's registry.
func canonicalTargetWith(target string, lookup func(scheme string) resolver.Builder) (string, error) {
	if target == "" {
		return "", fmt.Errorf("clientconn: target is empty")
	}
	if strings.TrimSpace(target) != target || strings.ContainsAny(target, " \t\r\n") {
		return "", fmt.Errorf("clientconn: target %q contains white space", target)
	}
	// grpc matches schemes case-blind (url.Parse lower-cases them), so
	// "DNS:///h:p" is "dns:///h:p": spell a registered scheme in lower case.
	target = lowerScheme(target, lookup)
	// dns targets without an authority are parsed by hand, as grpc reads
	// them: the endpoint of "dns:///ep" (and of a target without a scheme,
	// which grpc prefixes with "dns:///") is URL-decoded, that of "dns:ep"
	// is taken as written.
	if ep, ok := strings.CutPrefix(target, "dns:///"); ok {
		return dnsTarget(target, ep, true)
	}
	if ep, ok := strings.CutPrefix(target, "dns:"); ok && !strings.HasPrefix(ep, "//") {
		return dnsTarget(target, ep, false)
	}
	u, parseErr := url.Parse(target)
	if parseErr == nil && u.Scheme == "dns" {
		return dnsAuthorityTarget(target, u)
	}
	if parseErr == nil && u.Scheme != "" && lookup(u.Scheme) != nil {
		return target, nil // another resolver: only it knows what the rest means
	}
	if parseErr == nil && strings.Contains(target, "://") {
		return "", fmt.Errorf("clientconn: target %q: no resolver is registered for scheme %q (hand the Factory its builder with WithResolvers)", target, u.Scheme)
	}
	// grpc.NewClient sends anything without a registered scheme to the dns
	// resolver as a whole.
	return dnsTarget(target, target, true)
}

// lowerScheme lower-cases target's scheme if it has upper-case letters
// and, lower-cased, is one that lookup knows.
func lowerScheme(target string, lookup func(scheme string) resolver.Builder) string {
	i := strings.IndexByte(target, ':')
	if i <= 0 {
		return target
	}
	scheme := target[:i]
	upper := false
	for j, r := range scheme {
		switch {
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= 'a' && r <= 'z', j > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.'):
		default:
			return target // not a scheme
		}
	}
	if !upper {
		return target
	}
	if lower := strings.ToLower(scheme); lookup(lower) != nil {
		return lower + target[i:]
	}
	return target
}

// dnsAuthorityTarget canonicalises "dns://server/h:p", which resolves h:p
// through the DNS server named by the authority. An empty endpoint is an
// error: "dns://h:p" (two slashes, a slip for "dns:///h:p") names a DNS
// server and no host, which grpc.NewClient accepts and every call then
// fails on.
func dnsAuthorityTarget(target string, u *url.URL) (string, error) {
	ep := strings.TrimPrefix(u.Path, "/")
	if u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("clientconn: target %q: a dns target is dns:///host:port or dns://dns-server/host:port", target)
	}
	if ep == "" {
		return "", fmt.Errorf("clientconn: target %q names DNS server %q but no host to resolve; did you mean %q?", target, u.Host, "dns:///"+u.Host)
	}
	hp, err := normalizeHostPort(ep)
	if err != nil {
		return "", fmt.Errorf("clientconn: target %q: %v", target, err)
	}
	return "dns://" + strings.ToLower(u.Host) + "/" + escapePercent(hp), nil
}

// dnsTarget returns "dns:///" and the normalised endpoint, URL-decoded
// first if decode: grpc decodes the path of a URL, so an IPv6 zone is
// written "%25" ("[fe80::1%25eth0]:80"), and a bare "%" fails to parse
// in grpc.NewClient as here. The result is escaped again, so grpc reads
// the endpoint normalised here.
func dnsTarget(target, endpoint string, decode bool) (string, error) {
	if decode {
		ep, err := url.PathUnescape(endpoint)
		if err != nil {
			return "", fmt.Errorf("clientconn: target %q: %v (grpc reads the target as a URL: write the %% of an IPv6 zone as %%25)", target, err)
		}
		endpoint = ep
	}
	hp, err := normalizeHostPort(endpoint)
	if err != nil {
		return "", fmt.Errorf("clientconn: target %q: %v", target, err)
	}
	return "dns:///" + escapePercent(hp), nil
}

// escapePercent writes a normalised endpoint's "%" (an IPv6 zone's) as
// grpc's URL parsing needs it.
func escapePercent(hp string) string { return strings.ReplaceAll(hp, "%", "%25") }

// normalizeHostPort mirrors grpc-go's dns resolver (parseTarget): a
// missing port is 443, a missing host is localhost; host names are
// lower-cased because DNS ignores case, and IP addresses are written
// the one way netip writes them.
func normalizeHostPort(ep string) (string, error) {
	if ep == "" {
		return "", fmt.Errorf("missing host")
	}
	if ip, err := netip.ParseAddr(ep); err == nil {
		if !validZone(ip.Zone()) {
			return "", fmt.Errorf("%q has IPv6 zone %q; a zone is an interface name or number", ep, ip.Zone())
		}
		return net.JoinHostPort(ip.String(), dnsDefaultPort), nil
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		host, port, err = net.SplitHostPort(ep + ":" + dnsDefaultPort)
		if err != nil {
			return "", fmt.Errorf("%q is not host, host:port or [ipv6]:port", ep)
		}
	}
	if port == "" {
		return "", fmt.Errorf("%q ends with a colon but names no port", ep)
	}
	if host == "" {
		host = "localhost"
	}
	if !validHost(host) {
		return "", fmt.Errorf("%q is not host, host:port or [ipv6]:port", ep)
	}
	if err := checkPort(port); err != nil {
		return "", err // the caller names the target
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.String() // one spelling per address; zones keep their case
	} else {
		host = strings.ToLower(host)
	}
	return net.JoinHostPort(host, port), nil
}

// validHost accepts IP addresses (with zones) and DNS names.
func validHost(h string) bool {
	if ip, err := netip.ParseAddr(h); err == nil {
		return validZone(ip.Zone())
	}
	return nameChars(h)
}

// validZone accepts no zone, or an interface name or number: netip takes
// any text after "%", but "]" or "%" there cannot be written back as a
// target grpc parses.
func validZone(z string) bool { return nameChars(z) }

func nameChars(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// checkPort accepts port numbers 1-65535 and service names ("https":
// a letter, then letters, digits and hyphens), which the dns resolver
// looks up.
func checkPort(p string) error {
	if n, err := strconv.Atoi(p); err == nil {
		if n < 1 || n > 65535 {
			return fmt.Errorf("port %d is out of range 1-65535", n)
		}
		return nil
	}
	for i, r := range p {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || !(r >= '0' && r <= '9' || r == '-')) {
			return fmt.Errorf("port %q is neither a number nor a service name", p)
		}
	}
	return nil
}
