package rpcerr

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorCarriesCodeAndCause(t *testing.T) {
	sentinel := errors.New("pkg: thing happened")
	err := fmt.Errorf("wrapped: %w", New(codes.Unavailable, "pkg: key \"a\": thing happened", sentinel))
	if !errors.Is(err, sentinel) {
		t.Errorf("errors.Is(err, sentinel) = false")
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		t.Fatalf("status.FromError = %v, %v; want Unavailable", st, ok)
	}
	if got := status.Code(err); got != codes.Unavailable {
		t.Errorf("status.Code = %v", got)
	}
	if want := `rpc error: code = Unavailable desc = pkg: key "a": thing happened`; New(codes.Unavailable, `pkg: key "a": thing happened`, sentinel).Error() != want {
		t.Errorf("Error() = %q, want %q", New(codes.Unavailable, `pkg: key "a": thing happened`, sentinel).Error(), want)
	}
}
