package interceptors_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// Tests of situations the field meets and no earlier test named: each runs
// the same calls against a plain grpc-go server and one with a Shedder,
// and the Shedder, when the server is not overloaded, must not fail a call
// the plain server serves.

// cacheLike answers at once, or after slow when the request asks for a
// miss (ResponseSize 1): a method whose service time has two modes, as one
// behind a cache has.
func cacheLike(slow time.Duration) func(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	miss := working(func() time.Duration { return slow })
	return func(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if req.GetResponseSize() == 1 {
			return miss(ctx, req)
		}
		return &testpb.SimpleResponse{}, nil
	}
}

// TestShedderDeadlineShedOnlyForHopelessDeadlines: one method, mostly
// cache hits (no work) and a few misses (300 ms), called one at a time.
// Callers with a 60 ms deadline get hits, and the plain server serves
// every one of them. The deadline shed compared their deadline with the
// method's mean service time, which three misses had raised to about
// 100 ms, and shed all of them on a server that had nothing else to do:
// a deadline shorter than the mean is not one that would time out
// anyway. The default config, on both paths.
func TestShedderDeadlineShedOnlyForHopelessDeadlines(t *testing.T) {
	sides := []struct {
		name string
		opts func() []grpc.ServerOption
	}{{"plain grpc-go", func() []grpc.ServerOption { return nil }}}
	for _, path := range shedPaths {
		sides = append(sides, struct {
			name string
			opts func() []grpc.ServerOption
		}{"shedder " + path.name, func() []grpc.ServerOption { return path.opts(makeShedder(t, &events{}, nil)) }})
	}
	for _, side := range sides {
		t.Run(side.name, func(t *testing.T) {
			be := testutil.StartBackend(t, testutil.BackendOptions{ServerOptions: side.opts(), Unary: cacheLike(300 * time.Millisecond)})
			c := dial(t, be.Addr)
			for range 10 { // hits: the service time is measured (MinSamples)
				if err := unary(context.Background(), c); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			for range 3 { // misses, with time to wait for them
				wg.Go(func() {
					if _, err := c.UnaryCall(context.Background(), &testpb.SimpleRequest{ResponseSize: 1}); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			got := map[codes.Code]int{}
			for range 10 {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Millisecond)
				err := unary(ctx, c)
				cancel()
				got[status.Code(err)]++
			}
			if got[codes.OK] != 10 {
				t.Errorf("10 hits with a 60ms deadline on an idle server: %v, want all OK as on a plain grpc-go server", got)
			}
		})
	}
}
