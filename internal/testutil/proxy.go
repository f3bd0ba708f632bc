package testutil

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a loopback TCP proxy in front of one backend whose faults can
// be switched while traffic flows: added latency, refused connections,
// a blackhole (connections are accepted and bytes vanish both ways), and
// dropping or resetting every open connection.
type Proxy struct {
	// Addr is where clients connect, "127.0.0.1:port".
	Addr string

	target    string
	lis       net.Listener
	latency   atomic.Int64 // per forwarded chunk, nanoseconds
	blackhole atomic.Bool
	refuse    atomic.Bool
	accepts   atomic.Int64
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	closed    chan struct{}
	closeOnce sync.Once
}

// StartProxy proxies a new loopback port to target until the test ends.
func StartProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testutil: proxy listen: %v", err)
	}
	p := &Proxy{Addr: lis.Addr().String(), target: target, lis: lis, conns: map[net.Conn]struct{}{}, closed: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	tb.Cleanup(p.Close)
	return p
}

// SetLatency delays every forwarded chunk, in both directions, by d.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Blackhole makes the proxy swallow every byte, both ways, on new and open
// connections, while keeping them open: a peer that vanished without a FIN.
func (p *Proxy) Blackhole(on bool) { p.blackhole.Store(on) }

// Refuse makes new connections close at once.
func (p *Proxy) Refuse(on bool) { p.refuse.Store(on) }

// Accepts counts connections accepted (refused ones included).
func (p *Proxy) Accepts() int64 { return p.accepts.Load() }

// DropAll closes every open connection with a FIN.
func (p *Proxy) DropAll() { p.closeConns(false) }

// ResetAll closes every open connection with a RST.
func (p *Proxy) ResetAll() { p.closeConns(true) }

// Close stops the proxy and waits for its goroutines. It is idempotent.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		close(p.closed)
		p.lis.Close()
		p.closeConns(true)
	})
	p.wg.Wait()
}

func (p *Proxy) closeConns(reset bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok && reset {
			_ = tc.SetLinger(0)
		}
		c.Close()
		delete(p.conns, c)
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.accepts.Add(1)
		if p.refuse.Load() {
			client.Close()
			continue
		}
		backend, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		if !p.track(client) || !p.track(backend) {
			client.Close()
			backend.Close()
			return
		}
		p.wg.Add(2)
		go p.pipe(backend, client)
		go p.pipe(client, backend)
	}
}

// pipe copies src to dst until either side fails, then closes both.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.blackhole.Load() {
			if d := time.Duration(p.latency.Load()); d > 0 {
				select { // simulated network delay, cut short by Close
				case <-time.After(d):
				case <-p.closed:
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // EOF or a closed side: either way the pipe is done
			return
		}
	}
}
