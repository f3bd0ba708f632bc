package telemetry_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/telemetry"
)

// poolCounter implements only the pool events it cares about; the
// embedded Nop answers the rest.
type poolCounter struct {
	telemetry.Nop
	hits, misses atomic.Int64
}

func (p *poolCounter) PoolGet(_ string, hit bool) {
	if hit {
		p.hits.Add(1)
	} else {
		p.misses.Add(1)
	}
}

func ExampleNop() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(lis)
	defer srv.Stop()

	obs := &poolCounter{}
	f, err := clientconn.New(clientconn.WithTransportCredentials(insecure.NewCredentials()), clientconn.WithObserver(obs))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	for i := 0; i < 3; i++ {
		c, err := f.Get(context.Background(), lis.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
	}
	fmt.Printf("misses %d, hits %d\n", obs.misses.Load(), obs.hits.Load())
	// Output: misses 1, hits 2
}
