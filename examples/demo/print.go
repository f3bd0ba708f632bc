package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

func printHeader(w io.Writer, o options, capacity int) {
	fmt.Fprintf(w, `grpcreuse demo: 6 services in one process call 3 TLS backends on 127.0.0.1, two ways at once
  plain grpc-go  a grpc.NewClient per service: round_robin, a retry policy, grpc's TLS credentials
                 with tls.NewLRUClientSessionCache; plain grpc-go servers
  grpcreuse      one clientconn.Factory: grpcreuse_least_loaded, breakers and AIMD limiters from the
                 service config, per-backend TLS sessions; servers rotate ticket keys and shed load
  checkout, search, profile, feed (TestService/UnaryCall) and status (Health/Check) call b0, b1, b2;
  ledger (TestService/EmptyCall) calls b2 only. Each side has its own three backends (%d calls/s of
  capacity in all) and the same open-loop traffic: %d calls/s per service, %v deadline per call.
  p50 and p99 are of the TestService calls that succeeded; conns and TLS are counted by the backends.
`, capacity, o.rate, callTimeout)
}

func printPhase(w io.Writer, n, of int, ph phase, pr phaseReport) {
	fmt.Fprintf(w, "\n%d/%d %s (%v, %d calls/s per service): %s\n", n, of, ph.title, ph.dur.Round(10*time.Millisecond), ph.rate, ph.what)
	fmt.Fprintf(w, "  %-13s %6s %6s %6s %11s %5s %7s %7s %5s %16s %14s\n",
		"", "calls", "OK", "failed", "fast-failed", "shed", "p50", "p99", "conns", "TLS full/resumed", "pool b0/b1/b2")
	for _, name := range []string{"plain grpc-go", "grpcreuse"} {
		s := pr.sides[0]
		if name == "grpcreuse" {
			s = pr.sides[1]
		}
		fmt.Fprintf(w, "  %-13s %6d %6d %6d %11d %5d %7s %7s %5d %16s %14s\n", name, s.calls,
			s.counts[ok], s.counts[failed], s.counts[fastFailed], s.counts[shed],
			fmtDur(s.p50), fmtDur(s.p99), s.srv.accepts, fmt.Sprintf("%d/%d", s.srv.full, s.srv.resumed), shares(s.srv.pool))
	}
	p, g := pr.sides[0], pr.sides[1]
	if p.srv.failed[flakyBackend]+g.srv.failed[flakyBackend] > 0 {
		fmt.Fprintf(w, "  b2 answered UNAVAILABLE %d times to plain grpc-go, %d to grpcreuse (retries included)\n",
			p.srv.failed[flakyBackend], g.srv.failed[flakyBackend])
	}
	var events []string
	if g.tk.breakerOpens > 0 {
		events = append(events, fmt.Sprintf("breakers opened %d×", g.tk.breakerOpens))
	}
	if g.tk.breakerRejections > 0 {
		events = append(events, fmt.Sprintf("open breakers failed %s fast, sending nothing", plural(g.tk.breakerRejections, "call")))
	}
	if g.tk.ejections > 0 {
		events = append(events, fmt.Sprintf("the balancer ejected a backend that failed calls in a row %d×", g.tk.ejections))
	}
	if g.tk.limiterRejections > 0 {
		events = append(events, fmt.Sprintf("client limiters failed %s fast", plural(g.tk.limiterRejections, "call")))
	}
	if g.srv.shed > 0 {
		events = append(events, fmt.Sprintf("the servers shed %s at once", plural(g.srv.shed, "call")))
	}
	if len(events) > 0 {
		fmt.Fprintf(w, "  grpcreuse: %s\n", strings.Join(events, "; "))
	}
}

func printSummary(w io.Writer, rep *report) {
	p, g := rep.total[0], rep.total[1]
	fmt.Fprintf(w, "\nsummary, all %d phases                 %15s %15s\n", len(rep.phases), "plain grpc-go", "grpcreuse")
	row := func(label, a, b string) { fmt.Fprintf(w, "  %-37s %15s %15s\n", label, a, b) }
	num := func(label string, a, b int64) { row(label, fmt.Sprint(a), fmt.Sprint(b)) }
	num("connections opened (backends' count)", p.srv.accepts, g.srv.accepts)
	row("TLS handshakes full / resumed", fmt.Sprintf("%d / %d", p.srv.full, p.srv.resumed), fmt.Sprintf("%d / %d", g.srv.full, g.srv.resumed))
	row("p50 / p99 of OK TestService calls", fmtDur(p.p50)+" / "+fmtDur(p.p99), fmtDur(g.p50)+" / "+fmtDur(g.p99))
	num("calls", p.calls, g.calls)
	num("  OK", p.counts[ok], g.counts[ok])
	num("  failed", p.counts[failed], g.counts[failed])
	num("  fast-failed (breaker or limiter)", p.counts[fastFailed], g.counts[fastFailed])
	num("  shed by the servers", p.counts[shed], g.counts[shed])
	fmt.Fprintln(w, "every call is counted once: calls = OK + failed + fast-failed + shed, on both sides")
}

// shares formats how the pool services' calls spread over b0, b1, b2.
func shares(n [3]int64) string {
	total := n[0] + n[1] + n[2]
	if total == 0 {
		return "-"
	}
	var parts []string
	for _, v := range n {
		parts = append(parts, fmt.Sprintf("%d", (v*100+total/2)/total))
	}
	return strings.Join(parts, "/") + "%"
}

// fmtDur prints a latency with two or three significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Round(time.Millisecond)/time.Millisecond)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
