package interceptors_test

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// BenchmarkShedResetFlood measures what a client that opens streams and
// resets them at once (one HEADERS and one RST_STREAM frame each, at
// about pairs-per-second; the HTTP/2 "rapid reset" shape) costs honest
// callers, in one run: 16 closed-loop callers of a 1 ms method on a server
// of limit 8, for 1 s, beside the flood, on plain grpc-go (no Shedder), on
// the interceptors alone and on the tap path. The tap admits each reset
// request and counts it against the free slots until its stream ends:
// the honest callers' OK calls show what that count costs them. Report:
// honest-ok/s, and the pairs the flood sent (pairs/s).
//
//	go test -run '^$' -bench BenchmarkShedResetFlood -benchtime 1x -count 3 ./interceptors/
func BenchmarkShedResetFlood(b *testing.B) {
	const limit, callers, work, run = 8, 16, time.Millisecond, time.Second
	for _, rate := range []int{0, 4000, 16000} {
		for _, side := range []struct {
			name string
			opts func(*interceptors.Shedder) []grpc.ServerOption
		}{
			{"plain", func(*interceptors.Shedder) []grpc.ServerOption { return nil }},
			{shedPaths[1].name, shedPaths[1].opts},
			{shedPaths[0].name, shedPaths[0].opts},
		} {
			b.Run(side.name+"/"+strconv.Itoa(rate)+"-pairs", func(b *testing.B) {
				var okPerSec, pairsPerSec float64
				for range b.N {
					shed := makeShedder(b, telemetry.Nop{}, func(c *interceptors.ShedderConfig) { c.Limit, c.LogInterval = limit, 0 })
					be := testutil.StartBackend(b, testutil.BackendOptions{ServerOptions: side.opts(shed),
						Unary: func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
							t := time.NewTimer(work)
							<-t.C
							return &testpb.SimpleResponse{}, nil
						}})
					c := dial(b, be.Addr)
					for range 20 { // the method measured: the tap decides on it
						if err := unary(context.Background(), c); err != nil {
							b.Fatal(err)
						}
					}
					fl := startResetFlood(b, be.Addr, rate) // 0: a connection that sends nothing, for the sides' shares without a flood
					var oks atomic.Int64
					var wg sync.WaitGroup
					stop := time.Now().Add(run)
					for range callers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for time.Now().Before(stop) {
								ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
								if unary(ctx, c) == nil {
									oks.Add(1)
								}
								cancel()
							}
						}()
					}
					wg.Wait()
					pairsPerSec += float64(fl.stop()) / run.Seconds()
					okPerSec += float64(oks.Load()) / run.Seconds()
				}
				b.ReportMetric(okPerSec/float64(b.N), "honest-ok/s")
				b.ReportMetric(pairsPerSec/float64(b.N), "pairs/s")
			})
		}
	}
}

// resetFlood is a raw HTTP/2 connection sending HEADERS+RST_STREAM pairs
// for the unary method, at a rate, until stop.
type resetFlood struct {
	conn  net.Conn
	done  chan struct{}
	sent  atomic.Int64
	wg    sync.WaitGroup
	close sync.Once
}

func startResetFlood(b *testing.B, addr string, rate int) *resetFlood {
	b.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	f := &resetFlood{conn: conn, done: make(chan struct{})}
	b.Cleanup(func() { f.stop() })
	var mu sync.Mutex // serialises w's writes
	fr := http2.NewFramer(nil, conn)
	w := http2.NewFramer(conn, nil)
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		b.Fatal(err)
	}
	if err := w.WriteSettings(); err != nil {
		b.Fatal(err)
	}
	f.wg.Add(2)
	go func() { // read and answer what the server sends, until the connection closes
		defer f.wg.Done()
		for {
			frame, err := fr.ReadFrame()
			if err != nil {
				return
			}
			mu.Lock()
			switch frame := frame.(type) {
			case *http2.SettingsFrame:
				if !frame.IsAck() {
					_ = w.WriteSettingsAck()
				}
			case *http2.PingFrame:
				if !frame.IsAck() {
					_ = w.WritePing(true, frame.Data)
				}
			}
			mu.Unlock()
		}
	}()
	go func() {
		defer f.wg.Done()
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		for _, h := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", unaryMethod},
			{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			_ = enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1], Sensitive: true}) // never indexed: each block stands alone
		}
		block := buf.Bytes()
		const tick = time.Millisecond
		perTick := rate / int(time.Second/tick)
		t := time.NewTicker(tick)
		defer t.Stop()
		id := uint32(1)
		for {
			select {
			case <-f.done:
				return
			case <-t.C:
			}
			mu.Lock()
			for range perTick {
				if w.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true}) != nil ||
					w.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
					mu.Unlock()
					return
				}
				id += 2
				f.sent.Add(1)
			}
			mu.Unlock()
		}
	}()
	return f
}

// stop ends the flood, closes its connection and returns the pairs sent.
func (f *resetFlood) stop() int64 {
	f.close.Do(func() {
		close(f.done)
		_ = f.conn.Close() // unblocks both goroutines
		f.wg.Wait()
	})
	return f.sent.Load()
}
