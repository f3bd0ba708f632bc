package observerattr

import (
	"testing"
	"time"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"

	"github.com/grpcreuse/grpcreuse/telemetry"
)

type recorder struct {
	telemetry.Nop
	events []string // makes the type non-comparable on purpose
}

func (r *recorder) SubchannelState(_, ep string, _ connectivity.State) {
	r.events = append(r.events, ep)
}

type valueObserver struct{ telemetry.Nop }

type sliceObserver struct {
	telemetry.Nop
	s []int
}

func (sliceObserver) EndpointEjected(string, string, time.Duration) {}

func TestGetAbsentIsNop(t *testing.T) {
	if _, ok := Get(resolver.State{}).(telemetry.Nop); !ok {
		t.Fatalf("Get(empty state) = %T, want telemetry.Nop", Get(resolver.State{}))
	}
	if _, ok := Get(Set(resolver.State{}, nil)).(telemetry.Nop); !ok {
		t.Fatal("Get(Set(nil)) is not telemetry.Nop")
	}
}

func TestSetGetRoundTrip(t *testing.T) {
	r := &recorder{}
	s := resolver.State{Attributes: attributes.New("other", "kept")}
	s = Set(s, r)
	if got := Get(s); got != r {
		t.Fatalf("Get = %v, want the observer passed to Set", got)
	}
	if s.Attributes.Value("other") != "kept" {
		t.Fatal("Set dropped an existing attribute")
	}
	// The last Set wins.
	r2 := &recorder{}
	if got := Get(Set(s, r2)); got != r2 {
		t.Fatal("a second Set did not replace the observer")
	}
}

func TestEqualNeverPanics(t *testing.T) {
	// A non-comparable observer value must not make attribute comparison panic.
	a := Set(resolver.State{}, sliceObserver{s: []int{1}})
	b := Set(resolver.State{}, sliceObserver{s: []int{1}})
	if a.Attributes.Equal(b.Attributes) {
		t.Error("non-comparable observers compared equal")
	}
	c := Set(resolver.State{}, valueObserver{})
	d := Set(resolver.State{}, valueObserver{})
	if !c.Attributes.Equal(d.Attributes) {
		t.Error("equal comparable observers compared unequal")
	}
	if c.Attributes.Equal(a.Attributes) {
		t.Error("observers of different types compared equal")
	}
	if got := c.Attributes.String(); got == "" {
		t.Error("empty String")
	}
}
