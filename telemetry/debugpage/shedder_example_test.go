package debugpage_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/grpcreuse/grpcreuse/interceptors"
	"github.com/grpcreuse/grpcreuse/telemetry/debugpage"
)

// A server-only process (no clientconn.Factory) shows its Shedder on the
// debug page: the snapshot's fields as they are, one row per Shedder.
// Mount the handler on an internal-only listener, as
// http.Handle("/debug/grpcreuse", page).
func ExampleNewHandler_shedder() {
	shed, err := interceptors.NewShedder() // and grpc.NewServer(append(shed.ServerOptions(), ...)...)
	if err != nil {
		fmt.Println(err)
		return
	}
	page := debugpage.NewHandler(func() debugpage.Snapshot {
		s := shed.Snapshot()
		return debugpage.Snapshot{Generated: time.Now(), Server: &debugpage.Server{Shedders: []debugpage.Shedder{{
			Name: "api :8443", Limit: s.Limit, InFlight: s.InFlight, Queued: s.Queued, Reserved: s.Reserved, Shed: s.Shed,
		}}}}
	})

	srv := httptest.NewServer(page)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "?format=json")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Println(err)
		return
	}
	var got struct {
		Server json.RawMessage `json:"server"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		fmt.Println(err)
		return
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, got.Server); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(compact.String())
	// Output:
	// {"shedders":[{"name":"api :8443","limit":100,"inFlight":0,"queued":0,"reserved":0,"shed":{"deadline":0,"expired":0,"limit":0,"sheddable":0,"stream_limit":0}}],"handshakes":[]}
}
