// Package targetctx carries a channel's target through a handshake
// context, from clientconn (which knows the target of each connection it
// makes) to credentials (whose handshakes know only the server name), so
// handshake telemetry is labelled with the target as gRFC A118 asks.
package targetctx

import "context"

type key struct{}

// With returns ctx carrying target.
func With(ctx context.Context, target string) context.Context {
	return context.WithValue(ctx, key{}, target)
}

// From returns the target ctx carries, or "".
func From(ctx context.Context) string {
	t, _ := ctx.Value(key{}).(string)
	return t
}
