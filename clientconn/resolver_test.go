package clientconn_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/grpcreuse/grpcreuse/clientconn"
	"github.com/grpcreuse/grpcreuse/internal/testutil"
)

// TestWithResolversNeedsNoRegistration proves a scheme nobody registered
// works when its builder is handed to the Factory, that two schemes
// resolving to the same backend never share a connection, and that the
// Factory's builder is used even where the registry has none.
func TestWithResolversNeedsNoRegistration(t *testing.T) {
	b := testutil.StartBackend(t, testutil.BackendOptions{})
	state := resolver.State{Endpoints: []resolver.Endpoint{{Addresses: []resolver.Address{{Addr: b.Addr}}}}}
	one := manual.NewBuilderWithScheme("grpcreuse-one")
	one.InitialState(state)
	two := manual.NewBuilderWithScheme("grpcreuse-two")
	two.InitialState(state)
	if resolver.Get("grpcreuse-one") != nil {
		t.Fatal("scheme registered globally; the test needs it not to be")
	}
	f := newFactory(t, clientconn.WithResolvers(one, two))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, target := range []string{"grpcreuse-one:///svc", "grpcreuse-two:///svc", "grpcreuse-one:///svc"} {
		c, err := f.Get(ctx, target, clientconn.WithWarmUp())
		if err != nil {
			t.Fatalf("Get(%q): %v", target, err)
		}
		mustUnary(t, c)
		defer c.Close()
	}
	if st := f.Stats(); st.Misses != 2 || st.Hits != 1 {
		t.Errorf("Stats = %+v; want 2 misses (one per scheme) and 1 hit", st)
	}
	if got := b.Listener.Accepts(); got != 2 {
		t.Errorf("backend accepted %d connections, want 2: schemes must not share", got)
	}
	// Without the builder, the scheme is an error that says what to do.
	g := newFactory(t)
	if _, err := g.Get(ctx, "grpcreuse-one:///svc"); err == nil || !strings.Contains(err.Error(), "WithResolvers") {
		t.Errorf("Get of an unknown scheme = %v, want an error pointing at WithResolvers", err)
	}
}

func TestWithResolversBadInput(t *testing.T) {
	tests := []struct {
		name    string
		opt     clientconn.Option
		wantErr string
	}{
		{"nil builder", clientconn.WithResolvers(nil), "WithResolvers: builder 0 is nil"},
		{"duplicate scheme", clientconn.WithResolvers(manual.NewBuilderWithScheme("dup"), manual.NewBuilderWithScheme("dup")), `WithResolvers: two builders for scheme "dup"`},
		{"upper-case scheme", clientconn.WithResolvers(manual.NewBuilderWithScheme("Upper")), `WithResolvers: builder 0 has scheme "Upper"`},
		{"empty scheme", clientconn.WithResolvers(manual.NewBuilderWithScheme("")), `WithResolvers: builder 0 has scheme ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := clientconn.New(plaintext, tt.opt)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v, want error containing %q", err, tt.wantErr)
			}
			if f != nil {
				t.Error("New returned a Factory with its error")
			}
		})
	}
}
