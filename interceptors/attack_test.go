package interceptors_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/breaker"
	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// TestPanickingStreamerFreesSlotAndProbe: the unary path already treats a
// panic further in as a failure, so a probe is never stuck; the stream
// path kept the limiter slot for ever (limit 1: every later call
// rejected) and left a half-open probe to its timeout.
func TestPanickingStreamerFreesSlotAndProbe(t *testing.T) {
	cc, err := grpc.NewClient("passthrough:///attack", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	lim := newLimiter(t, telemetry.Nop{}, func(c *interceptors.LimiterConfig) { c.Limit, c.MaxQueued = 1, 0 })
	reg, err := breaker.New()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := interceptors.NewClientChain(interceptors.WithBreakers(reg), interceptors.WithLimiter(lim))
	if err != nil {
		t.Fatal(err)
	}
	si := chain.StreamClientInterceptor()
	const method = "/pkg.Svc/Stream"
	boom := func(context.Context, *grpc.StreamDesc, *grpc.ClientConn, string, ...grpc.CallOption) (grpc.ClientStream, error) {
		panic("bug further in")
	}
	for range 3 {
		func() {
			defer func() {
				if r := recover(); r == nil {
					t.Fatal("the panic did not reach the caller")
				}
			}()
			_, _ = si(context.Background(), &grpc.StreamDesc{ServerStreams: true}, cc, method, boom)
		}()
	}
	if st := lim.Stats(cc.Target(), method); st.InFlight != 0 || st.Rejected != 0 {
		t.Fatalf("limiter after panicking streams = %+v, want its slot free and no rejection", st)
	}
	if s := reg.Snapshot(); len(s) != 1 || s[0].Failures != 3 {
		t.Fatalf("breaker after 3 panicking streams = %+v, want 3 failures counted", s)
	}
}
