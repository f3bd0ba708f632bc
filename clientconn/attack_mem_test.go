package clientconn_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestIdlePlaintextConnectionCostsNoMoreThanGrpcGo: grpc-go (1.85, Linux)
// reads a plaintext *net.TCPConn without pinning a read buffer while the
// connection is idle. A Factory connection must keep that: wrapping the
// conn (for diagnostics) made grpc fall back to a 32 KiB bufio.Reader per
// connection, 1.7x the memory of plain grpc-go per idle connection. The
// two are measured in the same run (server side included in both).
func TestIdlePlaintextConnectionCostsNoMoreThanGrpcGo(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("grpc-go's non-pinning reads are Linux-only")
	}
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	const n = 100
	base := heapInUse()
	var ccs []*grpc.ClientConn
	for range n {
		cc, err := grpc.NewClient(b.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		mustUnary(t, cc)
		ccs = append(ccs, cc)
	}
	plain := int64(heapInUse()) - int64(base)
	for _, cc := range ccs {
		cc.Close()
	}
	f := newFactory(t)
	base = heapInUse()
	var cs []*clientconn.Conn
	for i := range n {
		c, err := f.Get(context.Background(), b.Addr, clientconn.WithTenant(fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		mustUnary(t, c)
		cs = append(cs, c)
	}
	pooled := int64(heapInUse()) - int64(base)
	for _, c := range cs {
		c.Close()
	}
	ratio := float64(pooled) / float64(plain)
	t.Logf("heap per idle connection: plain grpc-go %d KiB, Factory %d KiB (ratio %.2f)", plain/n/1024, pooled/n/1024, ratio)
	if ratio > 1.3 {
		t.Errorf("a Factory connection costs %.2fx the heap of a plain grpc-go one, want at most 1.3x", ratio)
	}
}
