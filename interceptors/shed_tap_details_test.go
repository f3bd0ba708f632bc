package interceptors_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestShedderTapDetailsBudget: the tap's answers carry status details up
// to its budget each second (2 here, 1,000 outside tests), and beyond it
// the code and the stable message only, each shed still counted; the
// interceptor path's answers always carry them.
func TestShedderTapDetailsBudget(t *testing.T) {
	const calls, budget = 20, 2
	for _, path := range shedPaths {
		t.Run(path.name, func(t *testing.T) {
			shed := makeShedder(t, &events{}, func(c *interceptors.ShedderConfig) { c.Limit, c.MaxWait = 1, 0 })
			interceptors.SetShedderTapDetails(shed, budget)
			be := startGated(t, path.opts(shed)...)
			defer close(be.gate)
			c := testpb.NewTestServiceClient(dialConn(t, be.Addr))
			ctx := context.Background()
			go func() { _ = unary(ctx, c) }()
			testutil.Eventually(t, 5*time.Second, func() bool { return be.inflight.Load() == 1 }, "the slot is held")

			start := time.Now()
			detailed := 0
			for i := range calls {
				err := unary(ctx, c)
				if status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != interceptors.MessageShedLimit {
					t.Fatalf("call %d at the limit = %v, want ResourceExhausted %q", i, err, interceptors.MessageShedLimit)
				}
				info, _ := shedInfo(err)
				switch {
				case info != nil && info.Reason == interceptors.ErrorInfoReasonLimit && info.Metadata["limit"] == "1":
					detailed++
				case info != nil || len(status.Convert(err).Details()) > 0:
					t.Fatalf("call %d: details %v, want ErrorInfo %s with limit 1, or none", i, status.Convert(err).Details(), interceptors.ErrorInfoReasonLimit)
				case path.name == "interceptor":
					t.Fatalf("call %d: the interceptor's answer carries no details", i)
				case i < budget:
					t.Fatalf("call %d: no details within the second's budget of %d", i, budget)
				}
			}
			// The calls may span the Shedder's seconds: each second has its budget.
			seconds := int(time.Since(start)/time.Second) + 2
			if path.name == "tap" && detailed > budget*seconds {
				t.Fatalf("%d of %d tap answers in under %d s had details, want at most %d a second", detailed, calls, seconds-1, budget)
			}
			if n := shed.Snapshot().Shed[interceptors.ReasonLimit]; n != calls {
				t.Fatalf("%d sheds counted, want %d", n, calls)
			}
		})
	}
}
