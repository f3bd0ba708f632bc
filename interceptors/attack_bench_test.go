package interceptors_test

import (
	"context"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/interceptors"
)

// BenchmarkPolicyRoutingAfterMethodFlood: the policy chain routes each
// call by method name. After a caller has sent more distinct method names
// than the router remembers (method names are caller input), a legitimate
// method must route as cheaply, and without a shared lock, as before.
func BenchmarkPolicyRoutingAfterMethodFlood(b *testing.B) {
	cc, err := grpc.NewClient("passthrough:///bench", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	invoker := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	newChain := func() grpc.UnaryClientInterceptor {
		_, policy, err := interceptors.SplitServiceConfig(`{"grpcreuse":{"methodConfig":[
			{"name":[{"service":"other.Service"}],"circuitBreaker":{}},
			{"name":[{}],"circuitBreaker":{"scope":"target"},"concurrencyLimit":{"limit":100000}}]}}`)
		if err != nil {
			b.Fatal(err)
		}
		c, err := interceptors.NewClientChain(interceptors.WithPolicy(policy))
		if err != nil {
			b.Fatal(err)
		}
		return c.UnaryClientInterceptor()
	}
	ctx := context.Background()
	const method = "/grpc.testing.TestService/UnaryCall"
	for _, flood := range []int{0, 5000} {
		u := newChain()
		for i := range flood {
			_ = u(ctx, "/flood.Service/M"+strconv.Itoa(i), nil, nil, cc, invoker)
		}
		b.Run("flood="+strconv.Itoa(flood)+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := u(ctx, method, nil, nil, cc, invoker); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
