package conftool

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kubal/kubal/source"
)

// Conftool's pooled values.
const (
	PooledYes      = "yes"      // enabled
	PooledNo       = "no"       // disabled but known: monitored, counted, never pooled
	PooledInactive = "inactive" // removed, as if the key did not exist
)

// defaultWeight is PyBal's weight for a server whose value has none (server.py:27).
const defaultWeight = 10

// Value is the part of a conftool value kubal reads and writes. Fields absent from the
// stored JSON are zero here; other JSON fields are kept untouched on write.
type Value struct {
	Pooled string `json:"pooled"`
	Weight int    `json:"weight"`
}

// entry is one decoded conftool value; a nil field was absent from the JSON.
type entry struct {
	pooled *string
	weight *int
}

// decodeEntry parses a conftool value. Fields other than pooled and weight are ignored
// (PyBal passes them through unused). It is stricter than PyBal, which silently ignored
// a weight of the wrong type: here the whole value is rejected, so the server keeps its
// previous state and the bad key is reported.
func decodeEntry(raw []byte) (entry, error) {
	fields, err := decodeFields(raw)
	if err != nil {
		return entry{}, err
	}
	return entryOf(fields)
}

func decodeFields(raw []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if fields == nil {
		return nil, errors.New("not a JSON object: null")
	}
	return fields, nil
}

func entryOf(fields map[string]json.RawMessage) (entry, error) {
	var e entry
	if p, ok := fields["pooled"]; ok {
		var s string
		if err := json.Unmarshal(p, &s); err != nil {
			return entry{}, fmt.Errorf(`"pooled" must be a string, got %s`, p)
		}
		e.pooled = &s
	}
	if w, ok := fields["weight"]; ok {
		var n int64
		if err := json.Unmarshal(w, &n); err != nil || source.CheckWeight(n) != nil {
			return entry{}, fmt.Errorf(`"weight" must be an integer 0..%d, got %s`, source.MaxWeight, w)
		}
		i := int(n)
		e.weight = &i
	}
	return e, nil
}

func (e entry) value() Value {
	var v Value
	if e.pooled != nil {
		v.Pooled = *e.pooled
	}
	if e.weight != nil {
		v.Weight = *e.weight
	}
	return v
}

// merge applies a value to a server's previous state the way PyBal's Server.merge does
// (SPEC §2.3): pooled yes = enabled, inactive = removed (keep=false), any other string
// = disabled, absent = unchanged; weight replaces the previous one when present. A
// server not known before starts with PyBal's defaults (enabled, weight 10).
func merge(prev source.Server, known bool, host string, e entry) (srv source.Server, keep bool) {
	if !known {
		prev = source.Server{Host: host, Weight: defaultWeight, Enabled: true}
	}
	if e.pooled != nil {
		switch p := *e.pooled; p {
		case PooledInactive:
			return source.Server{}, false
		case PooledYes:
			prev.Enabled, prev.Reason = true, ""
		default:
			prev.Enabled, prev.Reason = false, "conftool: pooled="+printable(p)
		}
	}
	if e.weight != nil {
		prev.Weight = *e.weight
	}
	return prev, true
}

// printable returns s, quoted when it holds control characters or invalid UTF-8, so
// that a value from etcd cannot forge lines in /pools or the logs.
func printable(s string) string {
	if utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	return strconv.Quote(s)
}
