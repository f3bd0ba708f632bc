package testutil

import (
	"context"
	"time"

	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
)

// CallTLS opens a new gRPC client to addr with creds (and opts), makes one
// unary call within 10 s, closes the client and returns the connection's
// AuthInfo: one TLS handshake per call, for tests of handshakes and
// resumption. It returns its error, so it may run off the test goroutine.
func CallTLS(creds grpccreds.TransportCredentials, addr string, opts ...grpc.DialOption) (grpccreds.AuthInfo, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Peer(&p)); err != nil {
		return nil, err
	}
	return p.AuthInfo, nil
}
