package clientconn

import (
	"strings"
	"testing"
)

func TestCanonicalTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "backend:50051", want: "dns:///backend:50051"},
		{in: "dns:///backend:50051", want: "dns:///backend:50051"},
		{in: "dns:backend:50051", want: "dns:///backend:50051"},
		{in: "dns:///Backend.Example.COM:50051", want: "dns:///backend.example.com:50051"},
		{in: "backend", want: "dns:///backend:443"},
		{in: "dns:///backend", want: "dns:///backend:443"},
		{in: "127.0.0.1:8080", want: "dns:///127.0.0.1:8080"},
		{in: "[::1]:8080", want: "dns:///[::1]:8080"},
		{in: "::1", want: "dns:///[::1]:443"},
		{in: ":8080", want: "dns:///localhost:8080"},
		{in: "localhost:8080", want: "dns:///localhost:8080"},
		{in: "dns://8.8.8.8/backend:50051", want: "dns://8.8.8.8/backend:50051"},
		{in: "passthrough:///backend:50051", want: "passthrough:///backend:50051"},
		{in: "unix:///tmp/grpc.sock", want: "unix:///tmp/grpc.sock"},
		{in: "", wantErr: "target is empty"},
		{in: " backend:1", wantErr: "contains white space"},
		{in: "back end:1", wantErr: "contains white space"},
		{in: "backend:", wantErr: `"backend:" ends with a colon`},
		{in: "dns:///", wantErr: "missing host"},
		{in: "nosuchscheme://backend:1", wantErr: `no resolver is registered for scheme "nosuchscheme"`},
		{in: "a:b:c", wantErr: `"a:b:c" is not host, host:port`},
		{in: "backend:https", want: "dns:///backend:https"},
		{in: "backend:99999", wantErr: `target "backend:99999": port 99999 is out of range 1-65535`},
		{in: "backend:0", wantErr: "port 0 is out of range"},
		{in: "backend:-1", wantErr: "port -1 is out of range 1-65535"},
		{in: "backend:1x_", wantErr: `port "1x_" is neither`},
	}
	for _, tt := range tests {
		got, err := canonicalTarget(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("canonicalTarget(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("canonicalTarget(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func FuzzCanonicalTarget(f *testing.F) {
	for _, s := range []string{"h:1", "dns:///h", "passthrough:///x", "[::1]:2", "unix:/a", "%", "dns://a/b", "DNS:///H:1", "dns://8.8.8.8:53/h", "[fe80::1%25eth0]:1", "dns:[fe80::1%lo]:2", "Unix:/a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := canonicalTarget(in)
		if err != nil {
			return
		}
		// Canonical is a fixed point: canonicalising again changes nothing.
		if c2, err := canonicalTarget(c); err != nil || c2 != c {
			t.Fatalf("canonicalTarget(%q) = %q, but canonicalTarget(%q) = %q, %v", in, c, c, c2, err)
		}
	})
}
