package interceptors_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// TestShedderNoRetryInfoWhenRetryWouldBeLate: a shed whose request has
// less of its deadline left than Pushback says "do not retry" in its
// details as in its trailer: no RetryInfo (a client reading details would
// otherwise wait Pushback and retry past its deadline), the ErrorInfo and
// the stable message as always. With time left, or no deadline, the
// RetryInfo is there. Both paths, the answers cached apart.
func TestShedderNoRetryInfoWhenRetryWouldBeLate(t *testing.T) {
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait, c.Pushback = 1, 0, time.Second })
			be := startGated(t, path.opts(shed)...)
			holdSlots(t, be, 1)
			c := dial(t, be.Addr)
			for round := range 2 { // the second round takes the cached answers
				for _, d := range []time.Duration{200 * time.Millisecond, 0, 5 * time.Second} {
					ctx, cancel := context.Background(), context.CancelFunc(func() {})
					if d > 0 {
						ctx, cancel = context.WithTimeout(ctx, d)
					}
					var trailer metadata.MD
					_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&trailer))
					cancel()
					if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
						t.Fatalf("round %d, deadline %v: %v, want the limit's shed", round, d, err)
					}
					info, retry := shedInfo(err)
					if info == nil || info.GetReason() != interceptors.ErrorInfoReasonLimit {
						t.Errorf("round %d, deadline %v: ErrorInfo %v, want reason %s", round, d, info, interceptors.ErrorInfoReasonLimit)
					}
					late := d > 0 && d < time.Second
					switch {
					case late && retry != nil:
						t.Errorf("round %d, deadline %v (under the 1 s pushback): RetryInfo %v, want none", round, d, retry)
					case !late && (retry == nil || retry.GetRetryDelay().AsDuration() != time.Second):
						t.Errorf("round %d, deadline %v: RetryInfo %v, want 1s", round, d, retry)
					}
					if path.name == "interceptor" {
						want := map[bool]string{true: "-1", false: "1000"}[late]
						if got := trailer.Get(interceptors.PushbackTrailer); len(got) != 1 || got[0] != want {
							t.Errorf("round %d, deadline %v: pushback trailer %q, want [%q]", round, d, got, want)
						}
					}
				}
			}
		})
	}
}
