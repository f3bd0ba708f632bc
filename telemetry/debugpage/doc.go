// Package debugpage renders the live state of grpcreuse for operators, in
// the spirit of Envoy's admin /clusters page: an HTML page that refreshes
// itself and needs no JavaScript, or JSON with ?format=json.
//
// Its types are plain data ([Snapshot] and the rows it holds); the owner
// of the state builds a Snapshot on demand, and [NewHandler] serves it.
// clientconn's Factory.DebugHandler is the usual way in; mount it at
// /debug/grpcreuse on an internal-only listener, since it shows targets
// and tenants.
//
// The package imports nothing else of grpcreuse, registers nothing in
// init and starts no goroutine. Handlers are safe for concurrent use.
package debugpage
