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
	// dns targets without an authority are parsed by hand: url.Parse
	// rejects some valid endpoints, such as IPv6 zones.
	if ep, ok := strings.CutPrefix(target, "dns:///"); ok {
		return dnsTarget(target, ep)
	}
	if ep, ok := strings.CutPrefix(target, "dns:"); ok && !strings.HasPrefix(ep, "//") {
		return dnsTarget(target, ep)
	}
	u, parseErr := url.Parse(target)
	if parseErr == nil && u.Scheme != "" && lookup(u.Scheme) != nil {
		return target, nil // another resolver, or dns with an authority
	}
	if parseErr == nil && strings.Contains(target, "://") {
		return "", fmt.Errorf("clientconn: target %q: no resolver is registered for scheme %q (hand the Factory its builder with WithResolvers)", target, u.Scheme)
	}
	// grpc.NewClient sends anything without a registered scheme to the dns
	// resolver as a whole.
	return dnsTarget(target, target)
}

func dnsTarget(target, endpoint string) (string, error) {
	hp, err := normalizeHostPort(endpoint)
	if err != nil {
		return "", fmt.Errorf("clientconn: target %q: %v", target, err)
	}
	return "dns:///" + hp, nil
}

// normalizeHostPort mirrors grpc-go's dns resolver (parseTarget): a
// missing port is 443, a missing host is localhost; host names are
// lower-cased because DNS ignores case, and IP addresses are written
// the one way netip writes them.
func normalizeHostPort(ep string) (string, error) {
	if ep == "" {
		return "", fmt.Errorf("missing host")
	}
	if ip, err := netip.ParseAddr(ep); err == nil {
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
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	for _, r := range h {
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
