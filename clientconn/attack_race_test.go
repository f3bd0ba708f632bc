package clientconn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestChaosGetCallCloseDebugFactoryClose: Gets (tenants, per-Get service
// configs, warm-ups), calls, streams, handle Closes (twice), the debug
// page and max-age rotation all race with Factory.Close. Nothing may
// panic, deadlock, race or leak; every call ends in success or an error
// with a code (never a hang), calls after Close fail with ErrClosed.
func TestChaosGetCallCloseDebugFactoryClose(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	for round := range 3 {
		f, err := clientconn.New(plaintext, clientconn.WithMaxIdle(2), clientconn.WithIdleTimeout(5*time.Millisecond),
			clientconn.WithMaxConnectionAge(20*time.Millisecond), clientconn.WithDrainTimeout(time.Second),
			clientconn.WithServiceConfig(breakerServiceConfig))
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(f.DebugHandler())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var wg sync.WaitGroup
		errc := make(chan error, 100)
		stop := make(chan struct{})
		for w := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 60; i++ {
					select {
					case <-stop:
						return
					default:
					}
					var opts []clientconn.GetOption
					opts = append(opts, clientconn.WithTenant(fmt.Sprint("t", (w+i)%5)))
					if i%3 == 0 {
						opts = append(opts, clientconn.WithTargetServiceConfig(fmt.Sprintf(`{"methodConfig":[{"name":[{"service":"s%d"}],"timeout":"1s"}]}`, i%4)))
					}
					if i%7 == 0 {
						opts = append(opts, clientconn.WithWarmUp())
					}
					c, err := f.Get(ctx, b.Addr, opts...)
					if err != nil {
						if !errors.Is(err, clientconn.ErrClosed) {
							errc <- fmt.Errorf("Get: %w", err)
						}
						continue
					}
					cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
					err = unary(cctx, c)
					if i%5 == 0 {
						st, serr := testpbStream(cctx, c)
						if serr == nil {
							_ = st.CloseSend()
							_, _ = st.Recv()
						}
					}
					ccancel()
					if err != nil && status.Code(err) != codes.Canceled && status.Code(err) != codes.Unavailable {
						errc <- fmt.Errorf("call: %w", err)
					}
					c.Close()
					c.Close()
					if err := unary(ctx, c); !errors.Is(err, clientconn.ErrClosed) {
						errc <- fmt.Errorf("call on a closed Conn: %v, want ErrClosed", err)
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				resp, err := http.Get(srv.URL + "?format=json")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				_ = f.Stats()
				_ = f.Policies()
			}
		}()
		time.AfterFunc(time.Duration(20*(round+1))*time.Millisecond, func() { f.Close() })
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			close(stop)
			t.Fatal("workers did not finish: a Get, a call or Close hangs")
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		srv.Close()
		cancel()
		close(errc)
		for err := range errc {
			t.Errorf("round %d: %v", round, err)
		}
		if st := f.Stats(); st.Open != 0 || st.Handles != 0 {
			t.Errorf("round %d: Stats after Close = %+v, want nothing open", round, st)
		}
	}
}

func testpbStream(ctx context.Context, c *clientconn.Conn) (testpb.TestService_FullDuplexCallClient, error) {
	return testpb.NewTestServiceClient(c).FullDuplexCall(ctx)
}

// TestConcurrentGetsOfOneTenantNeverGiveUp: Gets that race to create one
// tenant's connection retry a bounded number of times. With WithTLS (the
// tenant's credentials are made by the first Get and dropped with its
// last connection), WithMaxIdle(0) and a policy, many goroutines
// getting and closing one tenant's connection must never see Get fail.
func TestConcurrentGetsOfOneTenantNeverGiveUp(t *testing.T) {
	pki := testutil.NewPKI(t, testutil.ECDSAP256)
	be := testutil.StartBackend(t, testutil.BackendOptions{TLS: pki.ServerConfig(t)})
	f := mustNew(t, clientconn.WithTLS(pki.ClientConfig("")), clientconn.WithMaxIdle(0),
		clientconn.WithServiceConfig(breakerServiceConfig))
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				c, err := f.Get(context.Background(), be.Addr, clientconn.WithTenant(fmt.Sprint("t", (w+i)%2)))
				if err != nil {
					errc <- err
					return
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}
