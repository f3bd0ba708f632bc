// Package jsonfield reads the JSON objects of the configs the toolkit owns
// (the balancer's loadBalancingConfig, the grpcreuse policy object), strictly:
// a duplicate or unknown member is an error that names it, with the nearest
// known name, and every value error names the field exactly as spelled in
// JSON, the value received and what is allowed.
//
// Parsers open an object with Parse, read each member they know with the
// typed getters (an absent or null member leaves the destination, the
// default, alone), then call Done, which rejects what was not read.
// Errors are *Error values; each parser prefixes its policy name.
package jsonfield

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Error is the one field error of every parser: Field is the member's path
// as spelled in JSON ("ejection.baseEjectionTime", "methodConfig[0].name"),
// Value the value received as JSON spells it (clipped), Rule what is
// allowed.
type Error struct {
	Field, Value, Rule string
}

// Error returns `"field" is value; rule`.
func (e *Error) Error() string {
	if e.Value == "" {
		return strconv.Quote(e.Field) + " " + e.Rule
	}
	return strconv.Quote(e.Field) + " is " + e.Value + "; " + e.Rule
}

// Errorf returns an *Error for field with the raw value (clipped).
func Errorf(field string, raw []byte, rule string) *Error {
	return &Error{Field: field, Value: Clip(bytes.TrimSpace(raw)), Rule: rule}
}

// Object is one JSON object being read. It is not safe for concurrent use.
type Object struct {
	path    string // "" for the top level
	names   []string
	members map[string]json.RawMessage
	read    map[string]bool
	known   []string // every name asked for, for suggestions
}

// Parse decodes raw as a JSON object whose path is path ("" at the top).
// Absent or null raw is an empty object. A duplicate member is an error.
func Parse(path string, raw json.RawMessage) (*Object, error) {
	o := &Object{path: path, members: map[string]json.RawMessage{}, read: map[string]bool{}}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return o, nil
	}
	label := path
	if label == "" {
		label = "config"
	}
	notObject := &Error{Field: label, Value: Clip(raw), Rule: "must be a JSON object"}
	if raw[0] != '{' || !json.Valid(raw) {
		return nil, notObject
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, notObject
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, notObject
		}
		name, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, notObject
		}
		if _, dup := o.members[name]; dup {
			return nil, &Error{Field: o.join(name), Rule: "appears more than once"}
		}
		o.members[name] = v
		o.names = append(o.names, name)
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, notObject
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, notObject
	}
	return o, nil
}

// Path returns the path of member name of o, as errors spell it.
func (o *Object) join(name string) string {
	if o.path == "" {
		return name
	}
	return o.path + "." + name
}

// Path is the object's own path ("" at the top level).
func (o *Object) Path() string { return o.path }

// Field returns the full path of member name, for errors of the caller's own.
func (o *Object) Field(name string) string { return o.join(name) }

// Raw returns member name unless it is absent or null, and marks it known
// and read.
func (o *Object) Raw(name string) (json.RawMessage, bool) {
	o.known = append(o.known, name)
	r, ok := o.members[name]
	if !ok {
		return nil, false
	}
	o.read[name] = true
	r = bytes.TrimSpace(r)
	if bytes.Equal(r, []byte("null")) {
		return nil, false
	}
	return r, true
}

// Names returns the object's member names in their order. A caller
// reading a map (keys of its own choosing) reads each with a getter.
func (o *Object) Names() []string { return slices.Clone(o.names) }

// Has reports whether member name is present and not null.
func (o *Object) Has(name string) bool {
	r, ok := o.members[name]
	return ok && !bytes.Equal(bytes.TrimSpace(r), []byte("null"))
}

// Object returns member name as an object (empty if absent or null).
func (o *Object) Object(name string) (*Object, error) {
	r, _ := o.Raw(name)
	return Parse(o.join(name), r)
}

// Array returns member name's elements (nil if absent or null).
func (o *Object) Array(name string) ([]json.RawMessage, error) {
	r, ok := o.Raw(name)
	if !ok {
		return nil, nil
	}
	var a []json.RawMessage
	if r[0] != '[' || json.Unmarshal(r, &a) != nil {
		return nil, Errorf(o.join(name), r, "must be a JSON array")
	}
	return a, nil
}

// Int reads member name as a whole number between lo and hi into dst.
func (o *Object) Int(name string, dst *int, lo, hi int) error {
	r, ok := o.Raw(name)
	if !ok {
		return nil
	}
	n, err := strconv.ParseInt(string(r), 10, 64)
	if err != nil {
		return Errorf(o.join(name), r, "must be a whole number between "+strconv.Itoa(lo)+" and "+strconv.Itoa(hi))
	}
	if n < int64(lo) || n > int64(hi) {
		return Errorf(o.join(name), r, "must be between "+strconv.Itoa(lo)+" and "+strconv.Itoa(hi))
	}
	*dst = int(n)
	return nil
}

// Float reads member name as a number into dst.
func (o *Object) Float(name string, dst *float64) error {
	r, ok := o.Raw(name)
	if !ok {
		return nil
	}
	if len(r) > 0 && (r[0] == '-' || (r[0] >= '0' && r[0] <= '9')) {
		if v, err := strconv.ParseFloat(string(r), 64); err == nil {
			*dst = v
			return nil
		}
	}
	return Errorf(o.join(name), r, "must be a number")
}

// Bool reads member name as true or false into dst.
func (o *Object) Bool(name string, dst *bool) error {
	r, ok := o.Raw(name)
	if !ok {
		return nil
	}
	switch string(r) {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		return Errorf(o.join(name), r, "must be true or false")
	}
	return nil
}

// String reads member name as a string into dst.
func (o *Object) String(name string, dst *string) error {
	r, ok := o.Raw(name)
	if !ok {
		return nil
	}
	if r[0] != '"' || json.Unmarshal(r, dst) != nil {
		return Errorf(o.join(name), r, "must be a string")
	}
	return nil
}

// Enum reads member name as one of allowed into dst.
func (o *Object) Enum(name string, dst *string, allowed ...string) error {
	r, ok := o.Raw(name)
	if !ok {
		return nil
	}
	var s string
	if json.Unmarshal(r, &s) == nil && slices.Contains(allowed, s) {
		*dst = s
		return nil
	}
	q := make([]string, len(allowed))
	for i, a := range allowed {
		q[i] = strconv.Quote(a)
	}
	return Errorf(o.join(name), r, "must be "+strings.Join(q, " or "))
}

// Duration reads member name as a proto-JSON duration string ("0.25s")
// into dst.
func (o *Object) Duration(name string, dst *time.Duration) error {
	r, ok := o.Raw(name)
	if !ok {
		return nil
	}
	d, err := ParseDuration(o.join(name), r, *dst)
	if err != nil {
		return err
	}
	*dst = d
	return nil
}

// Done returns an error naming the first member that no getter read, with
// the nearest known name when one is close. extra lists names that are
// known but deliberately not read (accepted and ignored).
func (o *Object) Done(extra ...string) error {
	for _, name := range o.names {
		if o.read[name] || slices.Contains(extra, name) {
			continue
		}
		rule := "is not a known field"
		if near := Nearest(name, append(o.known, extra...)); near != "" {
			rule += "; did you mean " + strconv.Quote(near) + "?"
		} else if len(o.known) > 0 {
			rule += "; known fields: " + strings.Join(uniq(o.known), ", ")
		}
		return &Error{Field: o.join(name), Rule: rule}
	}
	return nil
}

func uniq(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// Nearest returns the name in known closest to name (case-insensitive edit
// distance at most a third of its length, at least 2), or "".
func Nearest(name string, known []string) string {
	best, bestD := "", -1
	for _, k := range known {
		d := distance(strings.ToLower(name), strings.ToLower(k))
		if bestD < 0 || d < bestD {
			best, bestD = k, d
		}
	}
	if bestD < 0 || bestD > max(2, len(name)/3) {
		return ""
	}
	return best
}

// distance is the Levenshtein distance between a and b, in bytes.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Clip keeps error messages short when a caller sends a huge value.
func Clip(raw []byte) string {
	const limit = 40
	if len(raw) > limit {
		return string(raw[:limit]) + "…"
	}
	return string(raw)
}
