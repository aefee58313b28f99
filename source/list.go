package source

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
)

// PyBal defaults for a server that does not say (server.py:27-28).
const (
	DefaultWeight  = 10
	DefaultEnabled = true
)

// LineError is one rejected line of a legacy server list.
type LineError struct {
	Line int
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// ParseList parses a server list in PyBal's formats: a JSON object when json is true
// (the URL ends in .json), else the legacy format (one Python dict literal per line).
// Bad legacy lines are skipped and returned as LineErrors; a JSON error fails the whole
// list (as PyBal: json.loads of the whole body).
func ParseList(data []byte, isJSON bool) (Set, []LineError, error) {
	if isJSON {
		s, err := parseJSON(data)
		return s, nil, err
	}
	s, bad := parseLegacy(data)
	return s, bad, nil
}

// parseJSON reads `{"host": {"enabled": bool, "weight": int}, ...}`. PyBal's
// Server.merge applies a field only when its type is exactly right; others keep the
// default.
func parseJSON(data []byte) (Set, error) {
	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("server list is not a JSON object of objects: %w", err)
	}
	out := make(Set, len(raw))
	for host, fields := range raw {
		s := Server{Host: host, Weight: DefaultWeight, Enabled: DefaultEnabled}
		if v, ok := fields["weight"]; ok {
			var n int
			if isJSONInt(v) && json.Unmarshal(v, &n) == nil {
				s.Weight = n
			}
		}
		if v, ok := fields["enabled"]; ok {
			var b bool
			if json.Unmarshal(v, &b) == nil {
				s.Enabled = b
			}
		}
		out[host] = s
	}
	return out, nil
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
	var bad []LineError
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		d, err := parseDict(line)
		if err != nil {
			bad = append(bad, LineError{n, err})
			continue
		}
		s, err := legacyServer(d)
		if err != nil {
			bad = append(bad, LineError{n, err})
			continue
		}
		out[s.Host] = s
	}
	if err := sc.Err(); err != nil {
		bad = append(bad, LineError{n + 1, err})
	}
	return out, bad
}

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
	s := Server{Host: host, Weight: DefaultWeight, Enabled: DefaultEnabled}
	// Type filter as Server.merge: a value of the wrong type is ignored.
	if w, ok := d["weight"].(int64); ok {
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
