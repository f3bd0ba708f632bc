package interceptors_test

import (
	"bytes"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawH2 is a minimal HTTP/2 gRPC client for what grpc-go's client will
// not send: deadlines already past on arrival, streams reset before their
// message, requests that never reset.
type rawH2 struct {
	t    testing.TB
	conn net.Conn
	fr   *http2.Framer
	next uint32
	dec  *hpack.Decoder // one per connection: the server's table spans streams
}

func dialRawH2(t testing.TB, addr string) *rawH2 {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &rawH2{t: t, conn: conn, fr: fr, next: 1, dec: hpack.NewDecoder(4096, nil)}
}

// start sends the HEADERS of a call to method with the given grpc-timeout
// ("" for none) and extra header fields, and returns its stream id.
func (c *rawH2) start(method, timeout string, endStream bool, extra ...[2]string) uint32 {
	c.t.Helper()
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
		{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if timeout != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "grpc-timeout", Value: timeout})
	}
	for _, f := range extra {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	id := c.next
	c.next += 2
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndHeaders: true, EndStream: endStream}); err != nil {
		c.t.Fatal(err)
	}
	return id
}

// message sends one empty gRPC message and ends the stream.
func (c *rawH2) message(id uint32) {
	c.t.Helper()
	if err := c.fr.WriteData(id, true, []byte{0, 0, 0, 0, 0}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawH2) reset(id uint32) {
	c.t.Helper()
	if err := c.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
		c.t.Fatal(err)
	}
}

// sync returns once the server has read every frame sent before it: it
// sends a PING and waits for its ack, which the server's transport writes
// only after reading (and, for HEADERS, running the tap handle on) every
// earlier frame of the connection.
func (c *rawH2) sync() {
	c.t.Helper()
	data := [8]byte{'s', 'y', 'n', 'c', byte(c.next), byte(c.next >> 8)}
	if err := c.fr.WritePing(false, data); err != nil {
		c.t.Fatal(err)
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("raw h2: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if f.IsAck() && f.Data == data {
				return
			}
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			if _, err := c.dec.DecodeFull(f.HeaderBlockFragment()); err != nil { // keep the table in step
				c.t.Fatal(err)
			}
		case *http2.GoAwayFrame:
			c.t.Fatalf("raw h2: GOAWAY %v", f.ErrCode)
		}
	}
}

// status reads frames until stream id ends with trailers and returns its
// grpc-status and grpc-message.
func (c *rawH2) status(id uint32) (int, string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	code, msg := -1, ""
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("raw h2: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = c.fr.WritePing(true, f.Data)
			}
		case *http2.HeadersFrame:
			fields, err := c.dec.DecodeFull(f.HeaderBlockFragment())
			if err != nil {
				c.t.Fatal(err)
			}
			if f.StreamID != id {
				continue
			}
			for _, hf := range fields {
				switch hf.Name {
				case "grpc-status":
					code, _ = strconv.Atoi(hf.Value)
				case "grpc-message":
					msg = hf.Value
				}
			}
			if f.StreamEnded() {
				return code, msg
			}
		case *http2.GoAwayFrame:
			c.t.Fatalf("raw h2: GOAWAY %v", f.ErrCode)
		}
	}
}
