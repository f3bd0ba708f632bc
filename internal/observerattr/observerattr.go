// Package observerattr carries a telemetry.SubchannelObserver from a channel
// to the grpcreuse load balancer.
//
// grpc builds balancers from a global registry, so a balancer cannot be
// handed an observer at construction. Instead the channel (clientconn's
// Factory, by wrapping its resolver) stores the observer in the
// resolver.State it reports, and the balancer reads it on every
// UpdateClientConnState.
package observerattr

import (
	"reflect"

	"google.golang.org/grpc/resolver"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

// key is the resolver.State attribute key; unexported so nobody else can
// read or overwrite the value.
type key struct{}

// holder wraps the observer so that attribute comparison never panics on
// an observer whose dynamic type is not comparable, and so that
// Attributes.String does not print the observer's internals.
type holder struct{ o telemetry.SubchannelObserver }

// Equal reports whether other holds the same observer. Observers of a
// non-comparable type are equal only to themselves by identity of type and
// never by value, which at worst makes grpc see a changed state.
func (h holder) Equal(other any) bool {
	oh, ok := other.(holder)
	if !ok {
		return false
	}
	if h.o == nil || oh.o == nil {
		return h.o == nil && oh.o == nil
	}
	if reflect.TypeOf(h.o) != reflect.TypeOf(oh.o) || !reflect.TypeOf(h.o).Comparable() {
		return false
	}
	return h.o == oh.o
}

// String keeps resolver.State printing short.
func (holder) String() string { return "grpcreuse-observer" }

// Set returns s with o stored in s.Attributes. A nil o removes nothing and
// stores nothing: Get then returns telemetry.Nop{}.
func Set(s resolver.State, o telemetry.SubchannelObserver) resolver.State {
	if o == nil {
		return s
	}
	s.Attributes = s.Attributes.WithValue(key{}, holder{o: o})
	return s
}

// Get returns the observer stored by Set, or telemetry.Nop{} when there is
// none.
func Get(s resolver.State) telemetry.SubchannelObserver {
	if h, ok := s.Attributes.Value(key{}).(holder); ok && h.o != nil {
		return h.o
	}
	return telemetry.Nop{}
}
