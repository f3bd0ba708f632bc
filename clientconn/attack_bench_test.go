package clientconn_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/clientconn"
)

// BenchmarkGetMissWithTargetServiceConfig: a Get that creates a connection
// with a per-Get service config not seen before (a new document each
// time), beside plain grpc.NewClient with the same default service config.
// Nothing connects (no calls), so this is the cost of parsing, validating
// and building the entry.
func BenchmarkGetMissWithTargetServiceConfig(b *testing.B) {
	doc := func(i int) string {
		return fmt.Sprintf(`{"methodConfig":[{"name":[{"service":"s%d"}],"timeout":"1s"}]}`, i)
	}
	b.Run("grpc.NewClient", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			cc, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultServiceConfig(doc(i)))
			if err != nil {
				b.Fatal(err)
			}
			cc.Close()
		}
	})
	b.Run("Factory.Get", func(b *testing.B) {
		f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithMaxIdle(0))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			c, err := f.Get(context.Background(), "127.0.0.1:1", clientconn.WithTargetServiceConfig(doc(i)))
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}
