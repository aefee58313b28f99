package source

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// PyBal defaults for a server that does not say (server.py:27-28).
const (
	DefaultWeight  = 10
	DefaultEnabled = true
)

// MaxLineBytes is the longest legacy line read; a longer one is skipped with its line
// number and the lines after it are still read.
const MaxLineBytes = 1 << 20

// LineError is one rejected server of a list: a legacy line, or a .json entry (Line is
// then the line of its key).
type LineError struct {
	Line int
	// Host is the server the line names when it could be read and is a valid name,
	// else "". A list source keeps the previous state of such a server (it does not
	// disappear because of a typo in its weight).
	Host string
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// ErrNoServers is wrapped by ParseList when a list has no valid server line although it
// is not a deliberate empty list: a 0-byte or blank file, or one where every server line
// was rejected (binary garbage, a truncated file). Such a read is a failed read: the
// last good set stays in force.
var ErrNoServers = errors.New("no valid server in the list")

// ParseList parses a server list in PyBal's formats: a JSON object when json is true
// (the URL ends in .json), else the legacy format (one Python dict literal per line).
//
// A bad server (a malformed line, an invalid host name, a weight outside 0..65535, a
// duplicate host) is skipped and returned as a LineError; a duplicate keeps the first
// occurrence (PyBal silently kept the last). The list as a whole fails (error, nil
// set) when the JSON is malformed, and when no server is valid in a list that is empty
// or has rejected lines (ErrNoServers). A legacy list of only comments, or the JSON
// object {}, is a deliberate empty list.
func ParseList(data []byte, isJSON bool) (Set, []LineError, error) {
	var (
		s   Set
		bad []LineError
		err error
	)
	if isJSON {
		s, bad, err = parseJSON(data)
		if err != nil {
			return nil, nil, err
		}
	} else {
		s, bad = parseLegacy(data)
	}
	if len(s) == 0 && (len(bytes.TrimSpace(data)) == 0 || len(bad) > 0) {
		return nil, bad, noServers(bad)
	}
	return s, bad, nil
}

func noServers(bad []LineError) error {
	if len(bad) == 0 {
		return fmt.Errorf("%w: the list is empty", ErrNoServers)
	}
	more := ""
	if len(bad) > 1 {
		more = fmt.Sprintf(" (and %d more rejected lines)", len(bad)-1)
	}
	return fmt.Errorf("%w: %v%s", ErrNoServers, bad[0], more)
}

// lineCounter converts increasing byte offsets into 1-based line numbers in O(n) total.
type lineCounter struct {
	data []byte
	off  int
	line int
}

func (c *lineCounter) at(off int64) int {
	if c.line == 0 {
		c.line = 1
	}
	o := min(int(off), len(c.data))
	if o > c.off {
		c.line += bytes.Count(c.data[c.off:o], []byte{'\n'})
		c.off = o
	}
	return c.line
}

// parseJSON reads `{"host": {"enabled": bool, "weight": int}, ...}`. PyBal's
// Server.merge applies a field only when its type is exactly right; others keep the
// default. A weight of the right type outside 0..65535 rejects the server.
func parseJSON(data []byte) (Set, []LineError, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	lines := &lineCounter{data: data}
	fail := func(err error) (Set, []LineError, error) {
		return nil, nil, fmt.Errorf("server list is not a JSON object of objects: line %d: %w", lines.at(dec.InputOffset()), err)
	}
	tok, err := dec.Token()
	if err != nil {
		return fail(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fail(fmt.Errorf("found %v, want an object", tok))
	}
	out := Set{}
	first := map[string]int{}
	var bad []LineError
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fail(err)
		}
		host := tok.(string) // object keys are always strings
		line := lines.at(dec.InputOffset())
		var fields map[string]json.RawMessage
		if err := dec.Decode(&fields); err != nil {
			var te *json.UnmarshalTypeError
			if !errors.As(err, &te) {
				return fail(err)
			}
			bad = append(bad, LineError{Line: line, Host: validOrEmpty(host), Err: fmt.Errorf("server %q: the value must be an object, not %s", host, te.Value)})
			continue
		}
		if err := CheckHost(host); err != nil {
			bad = append(bad, LineError{Line: line, Err: err})
			continue
		}
		if prev, dup := first[host]; dup {
			bad = append(bad, LineError{Line: line, Host: host, Err: fmt.Errorf("duplicate host %q (first on line %d, which is kept)", host, prev)})
			continue
		}
		s := Server{Host: host, Weight: DefaultWeight, Enabled: DefaultEnabled}
		if v, ok := fields["weight"]; ok && isJSONInt(v) {
			var n int64
			if err := json.Unmarshal(v, &n); err != nil {
				bad = append(bad, LineError{Line: line, Host: host, Err: fmt.Errorf("server %q: weight %s is out of range 0..%d", host, v, MaxWeight)})
				continue
			}
			if err := CheckWeight(n); err != nil {
				bad = append(bad, LineError{Line: line, Host: host, Err: fmt.Errorf("server %q: %w", host, err)})
				continue
			}
			s.Weight = int(n)
		}
		if v, ok := fields["enabled"]; ok {
			var b bool
			if json.Unmarshal(v, &b) == nil {
				s.Enabled = b
			}
		}
		first[host] = line
		out[host] = s
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return fail(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the JSON object")
		}
		return fail(err)
	}
	return out, bad, nil
}

func validOrEmpty(h string) string {
	if CheckHost(h) != nil {
		return ""
	}
	return h
}

func isJSONInt(v json.RawMessage) bool {
	t := bytes.TrimSpace(v)
	if len(t) == 0 {
		return false
	}
	return !bytes.ContainsAny(t, ".eE\"tfn[{")
}

// parseLegacy reads one `{ 'host': ..., 'weight': ..., 'enabled': ... }` per line.
// Blank lines and lines starting with '#' are skipped; all three keys are required
// (config.py:90-108).
func parseLegacy(data []byte) (Set, []LineError) {
	out := Set{}
	first := map[string]int{}
	var bad []LineError
	for n := 1; len(data) > 0; n++ {
		raw := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			raw, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(raw) > MaxLineBytes {
			bad = append(bad, LineError{Line: n, Err: fmt.Errorf("line of %d bytes is longer than %d; skipped", len(raw), MaxLineBytes)})
			continue
		}
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		d, err := parseDict(line)
		if err != nil {
			bad = append(bad, LineError{Line: n, Err: err})
			continue
		}
		s, err := legacyServer(d)
		if err != nil {
			bad = append(bad, LineError{Line: n, Host: s.Host, Err: err})
			continue
		}
		if prev, dup := first[s.Host]; dup {
			bad = append(bad, LineError{Line: n, Host: s.Host, Err: fmt.Errorf("duplicate host %q (first on line %d, which is kept)", s.Host, prev)})
			continue
		}
		first[s.Host] = n
		out[s.Host] = s
	}
	return out, bad
}

// legacyServer builds a server from a parsed line. On error, the returned Server's
// Host is set when the line names a valid host.
func legacyServer(d map[string]any) (Server, error) {
	for _, k := range []string{"host", "weight", "enabled"} {
		if _, ok := d[k]; !ok {
			return Server{}, fmt.Errorf("missing key %q (host, weight and enabled are all required)", k)
		}
	}
	host, ok := d["host"].(string)
	if !ok || host == "" {
		return Server{}, fmt.Errorf("host must be a non-empty string")
	}
	if err := CheckHost(host); err != nil {
		return Server{}, err
	}
	s := Server{Host: host, Weight: DefaultWeight, Enabled: DefaultEnabled}
	// Type filter as Server.merge: a value of the wrong type is ignored.
	if w, ok := d["weight"].(int64); ok {
		if err := CheckWeight(w); err != nil {
			return Server{Host: host}, fmt.Errorf("server %q: %w", host, err)
		}
		s.Weight = int(w)
	}
	if e, ok := d["enabled"].(bool); ok {
		s.Enabled = e
	}
	return s, nil
}

// logLineErrors logs skipped lines with their numbers.
func logLineErrors(log *slog.Logger, where string, bad []LineError) {
	for _, b := range bad {
		log.Error("skipping bad server-list line", "source", where, "line", b.Line, "err", b.Err)
	}
}
