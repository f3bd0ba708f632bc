package clientconn_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestServicesShareConnections proves on the server side what sharing buys:
// 8 logical services talking to 3 backends open 3 TCP connections through
// one Factory, and 24 with one grpc.NewClient per service per backend.
func TestServicesShareConnections(t *testing.T) {
	const services = 8
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(t *testing.T, dial func(target string) (grpc.ClientConnInterface, func())) int64 {
		backends := make([]*testutil.Backend, 3)
		for i := range backends {
			backends[i] = testutil.StartBackend(t, testutil.BackendOptions{})
		}
		var closers []func()
		for s := 0; s < services; s++ {
			for _, b := range backends {
				cc, closeFn := dial(b.Addr)
				closers = append(closers, closeFn)
				for i := 0; i < 5; i++ {
					if err := unary(ctx, cc); err != nil {
						t.Fatalf("service %d → %s: %v", s, b.Addr, err)
					}
				}
			}
		}
		var accepts int64
		for _, b := range backends {
			accepts += b.Listener.Accepts()
		}
		for _, c := range closers {
			c()
		}
		return accepts
	}

	f := newFactory(t)
	pooled := run(t, func(target string) (grpc.ClientConnInterface, func()) {
		c := get(t, f, target)
		return c, func() { c.Close() }
	})
	plain := run(t, func(target string) (grpc.ClientConnInterface, func()) {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		return cc, func() { cc.Close() }
	})
	if pooled != 3 {
		t.Errorf("through one Factory the backends accepted %d connections, want 3", pooled)
	}
	if plain != services*3 {
		t.Errorf("with a client per service per backend they accepted %d, want %d", plain, services*3)
	}
	if st := f.Stats(); st.Misses != 3 || st.Hits != services*3-3 {
		t.Errorf("Stats = %+v, want 3 misses and %d hits", st, services*3-3)
	}
}
