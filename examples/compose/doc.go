// Package compose proves, in its tests, that the toolkit's interceptors
// compose with go-grpc-middleware v2's. It lives in the examples module so
// that go-grpc-middleware stays out of the graph of modules that require
// grpcreuse.
package compose
