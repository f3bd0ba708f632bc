// Package rpcerr builds errors that carry a gRPC status for RPC callers
// and still unwrap to a Go sentinel for errors.Is, so grpcreuse never has
// to choose between the two or flatten a cause into a status string.
package rpcerr

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a gRPC-status error that wraps a cause.
type Error struct {
	code  codes.Code
	msg   string
	cause error
}

// New returns an error with code and message msg that unwraps to cause.
func New(code codes.Code, msg string, cause error) *Error {
	return &Error{code: code, msg: msg, cause: cause}
}

// Error returns the message, as status errors print it.
func (e *Error) Error() string { return "rpc error: code = " + e.code.String() + " desc = " + e.msg }

// GRPCStatus lets status.FromError and status.Code see the code and message.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }

// Unwrap returns the cause, so errors.Is matches the package sentinel.
func (e *Error) Unwrap() error { return e.cause }

// ownDeadlineSlack absorbs timer latency: a DeadlineExceeded that arrives
// within this of the caller's deadline is the caller's deadline.
const ownDeadlineSlack = time.Millisecond

// CallerGaveUp reports whether the caller's context is cancelled or past
// (within 1ms of) its deadline: a call that ended then failed because of
// the caller, which says nothing about the backend. ctx.Err alone is not
// enough: the server's status for the caller's own (propagated) deadline
// can arrive before the caller's context timer has fired.
func CallerGaveUp(ctx context.Context) bool {
	if ctx == nil {
		return false
	}
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) <= ownDeadlineSlack
}
