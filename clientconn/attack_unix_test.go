package clientconn_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/grpcreuse/grpcreuse/clientconn"
)

type echoServer struct {
	testpb.UnimplementedTestServiceServer
}

func (echoServer) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{}, nil
}

// TestUnixSocketTargets: every spelling grpc-go accepts for a unix socket
// (unix:path, unix:///abs, unix-abstract:name) reaches the server through
// the Factory, as it does through grpc.NewClient.
func TestUnixSocketTargets(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	abstract := "grpcreuse-attack-" + filepath.Base(dir)
	for _, addr := range []string{sock, "@" + abstract} {
		lis, err := net.Listen("unix", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		testpb.RegisterTestServiceServer(srv, echoServer{})
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
	}
	f := newFactory(t)
	for _, target := range []string{"unix:" + sock, "unix://" + sock, "unix-abstract:" + abstract} {
		t.Run(target, func(t *testing.T) {
			// Plain grpc-go first: the baseline.
			cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			mustUnary(t, cc)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := f.Get(ctx, target, clientconn.WithWarmUp())
			if err != nil {
				t.Fatalf("Get(%q): %v", target, err)
			}
			defer c.Close()
			mustUnary(t, c)
		})
	}
}
