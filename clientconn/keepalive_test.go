package clientconn

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

func TestKeepaliveValidate(t *testing.T) {
	tests := []struct {
		name    string
		k       Keepalive
		wantErr string
	}{
		{name: "default preset", k: KeepaliveDefault()},
		{name: "fast preset", k: KeepaliveFastDetect()},
		{name: "no client pings", k: Keepalive{}},
		{name: "below grpc minimum", k: Keepalive{Client: keepalive.ClientParameters{Time: 5 * time.Second}},
			wantErr: "client keepalive Time is 5s; grpc-go raises anything below 10s"},
		{name: "negative", k: Keepalive{Client: keepalive.ClientParameters{Timeout: -time.Second}}, wantErr: "must not be negative"},
		{name: "server default policy", k: Keepalive{Client: KeepaliveDefault().Client},
			wantErr: `client keepalive Time 1m0s is shorter than the server's EnforcementPolicy.MinTime 5m0s`},
		{name: "server stricter", k: Keepalive{Client: keepalive.ClientParameters{Time: 20 * time.Second},
			Enforcement: keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true}}, wantErr: "too_many_pings"},
		{name: "idle pings not permitted", k: Keepalive{Client: keepalive.ClientParameters{Time: time.Minute, PermitWithoutStream: true},
			Enforcement: keepalive.EnforcementPolicy{MinTime: 30 * time.Second}}, wantErr: "PermitWithoutStream is true but the server's"},
	}
	for _, tt := range tests {
		err := tt.k.Validate()
		if tt.wantErr == "" && err != nil {
			t.Errorf("%s: Validate() = %v, want nil", tt.name, err)
		}
		if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: Validate() = %v, want error containing %q", tt.name, err, tt.wantErr)
		}
	}
}

// scaled divides every interval of k by n, so a test can run in seconds
// what takes minutes in production. grpc-go's client refuses to ping more
// often than every 10s, so the pings come from a raw HTTP/2 client that
// pings the way grpc-go's does: once per Client.Time of silence.
func scaled(k Keepalive, n time.Duration) Keepalive {
	k.Client.Time /= n
	k.Client.Timeout /= n
	k.Server.Time /= n
	k.Server.Timeout /= n
	k.Enforcement.MinTime /= n
	return k
}

// pingServer pings a server with k's server options every interval, count
// times, on a connection without streams. It returns the number of ping
// acks and the GOAWAY debug data, if the server sent one.
func pingServer(t *testing.T, k Keepalive, interval time.Duration, count int) (acks int, goaway string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(k.ServerOptions()...)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	defer func() { srv.Stop(); <-served }()

	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	var wmu sync.Mutex // the Framer allows one writer at a time
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	type event struct {
		ack    bool
		goaway string
		err    error
	}
	events := make(chan event, 2*count+8)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				events <- event{err: err}
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					wmu.Lock()
					_ = fr.WriteSettingsAck()
					wmu.Unlock()
				}
			case *http2.PingFrame:
				if f.IsAck() {
					events <- event{ack: true}
				}
			case *http2.GoAwayFrame:
				events <- event{goaway: string(f.DebugData())}
			}
		}
	}()
	deadline := time.After(time.Duration(count)*interval + 10*time.Second)
	for i := 0; i < count; i++ {
		wmu.Lock()
		err := fr.WritePing(false, [8]byte{byte(i)})
		wmu.Unlock()
		if err != nil {
			return acks, goaway
		}
		// Wait for this ping's answer, then stay silent for the interval.
		for got := false; !got; {
			select {
			case e := <-events:
				switch {
				case e.ack:
					acks++
					got = true
				case e.goaway != "":
					return acks, e.goaway
				case e.err != nil:
					return acks, goaway
				}
			case <-deadline:
				t.Fatalf("no answer to ping %d", i)
			}
		}
		time.Sleep(interval) // the client's keepalive interval, not synchronisation
	}
	return acks, ""
}

func TestKeepalivePresetsExchangePingsWithoutGoaway(t *testing.T) {
	for name, k := range map[string]Keepalive{"default": KeepaliveDefault(), "fast": KeepaliveFastDetect()} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			k := scaled(k, k.Client.Time/(60*time.Millisecond)) // client pings every 60ms
			if err := k.validatePair(); err != nil {
				t.Fatalf("scaled preset invalid: %v", err)
			}
			acks, goaway := pingServer(t, k, k.Client.Time, 32)
			if goaway != "" || acks != 32 {
				t.Fatalf("got %d acks of 32 pings, GOAWAY %q; want all acked, no GOAWAY", acks, goaway)
			}
		})
	}
}

func TestKeepaliveMismatchIsRejectedAndWouldGoaway(t *testing.T) {
	t.Parallel()
	k := scaled(KeepaliveDefault(), 500) // client 120ms, server MinTime 60ms
	k.Enforcement.MinTime = 4 * k.Client.Time
	err := k.validatePair()
	if err == nil || !strings.Contains(err.Error(), "too_many_pings") {
		t.Fatalf("validatePair() = %v, want a too_many_pings explanation", err)
	}
	// What Validate predicts is what the server does.
	_, goaway := pingServer(t, k, k.Client.Time, 10)
	if goaway != "too_many_pings" {
		t.Fatalf("server GOAWAY debug data = %q, want too_many_pings", goaway)
	}
}
