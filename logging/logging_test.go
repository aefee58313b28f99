package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func TestPyBalStyleLines(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *slog.Logger)
		want string
	}{
		{"info with system", func(l *slog.Logger) {
			l.With(SystemKey, "text_80").Info("Merged enabled server cp1001, weight 10")
		}, "[text_80] INFO: Merged enabled server cp1001, weight 10\n"},
		{"error with attrs", func(l *slog.Logger) {
			l.Error("could not fetch", SystemKey, "config-etcd", "url", "http://x/y", "err", "connection refused")
		}, "[config-etcd] ERROR: could not fetch url=http://x/y err=\"connection refused\"\n"},
		{"no system", func(l *slog.Logger) { l.Warn("hello") }, "[kubal] WARN: hello\n"},
		{"critical", func(l *slog.Logger) { l.Log(context.Background(), LevelCritical, "boom") }, "[kubal] CRITICAL: boom\n"},
		{"debug hidden at info", func(l *slog.Logger) { l.Debug("x") }, ""},
		{"group", func(l *slog.Logger) { l.WithGroup("g").Info("m", "k", 1) }, "[kubal] INFO: m g.k=1\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tc.log(New(&b, slog.LevelInfo, false))
			if b.String() != tc.want {
				t.Errorf("got %q, want %q", b.String(), tc.want)
			}
		})
	}
}

// Text mode never writes a raw control character or invalid UTF-8: not in the system,
// the message, a key or a value (issue 13: a URL path with %0d%1b, a host with \n and
// a certificate CN with ESC were written raw).
func TestTextEscapesControlAndInvalidUTF8(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *slog.Logger)
		want string
	}{
		{"path with CR ESC", func(l *slog.Logger) {
			l.Warn("admin request refused", "path", "/pools/a\r\x1b[2J/b")
		}, "[kubal] WARN: admin request refused path=\"/pools/a\\r\\x1b[2J/b\"\n"},
		{"host with newline in message", func(l *slog.Logger) {
			l.Info("Merged enabled server cp1\n[text_80] INFO: forged, weight 10")
		}, "[kubal] INFO: Merged enabled server cp1\\n[text_80] INFO: forged, weight 10\n"},
		{"CN with ESC", func(l *slog.Logger) { l.Info("admin action", "actor", "cn=\x1b]0;x\x07") },
			"[kubal] INFO: admin action actor=\"cn=\\x1b]0;x\\a\"\n"},
		{"invalid UTF-8 system and value", func(l *slog.Logger) {
			l.With(SystemKey, "pool\xff").Info("x", "host", "a\xfeb")
		}, "[pool\\xff] INFO: x host=\"a\\xfeb\"\n"},
		{"key with newline", func(l *slog.Logger) { l.Info("x", "k\ny", 1) }, "[kubal] INFO: x k\\ny=1\n"},
		{"unicode line separator", func(l *slog.Logger) { l.Info("a\u2028b") }, "[kubal] INFO: a\\u2028b\n"},
		{"quotes and unicode kept", func(l *slog.Logger) { l.Info(`unknown monitor "x" é`, "v", "é") },
			"[kubal] INFO: unknown monitor \"x\" é v=é\n"},
		{"tab quoted", func(l *slog.Logger) { l.Info("x", "v", "a\tb") }, "[kubal] INFO: x v=\"a\\tb\"\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tc.log(New(&b, slog.LevelInfo, false))
			if b.String() != tc.want {
				t.Errorf("got  %q\nwant %q", b.String(), tc.want)
			}
			if n := strings.Count(b.String(), "\n"); n != 1 {
				t.Errorf("%d lines written", n)
			}
		})
	}
}

// JSON mode writes valid JSON with every key once per object, the innermost value
// winning (With("system", ...) stacked on a logger that has one wrote "system" twice).
func TestJSONNoDuplicateKeys(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *slog.Logger)
		want map[string]any
	}{
		{"stacked With", func(l *slog.Logger) {
			l.With(SystemKey, "text_80").With(SystemKey, "text_80 ProxyFetch").Info("m")
		}, map[string]any{"system": "text_80 ProxyFetch"}},
		{"record overrides With", func(l *slog.Logger) {
			l.With(SystemKey, "a", "k", 1).Info("m", SystemKey, "b")
		}, map[string]any{"system": "b", "k": float64(1)}},
		{"groups merge", func(l *slog.Logger) {
			l.With("k", 1).WithGroup("g").With("x", 1).Info("m", "x", 2, "k", 3)
		}, map[string]any{"k": float64(1), "g": map[string]any{"x": float64(2), "k": float64(3)}}},
		{"control and invalid UTF-8 stay valid JSON", func(l *slog.Logger) {
			l.Info("m", "path", "/a\r\x1b\n\xff")
		}, map[string]any{"path": "/a\r\x1b\n\ufffd"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tc.log(New(&b, slog.LevelInfo, true))
			line := b.Bytes()
			if bytes.Count(line, []byte("\n")) != 1 {
				t.Fatalf("want one line, got %q", line)
			}
			dec := json.NewDecoder(bytes.NewReader(line))
			keys, err := topKeys(dec)
			if err != nil {
				t.Fatalf("invalid JSON %q: %v", line, err)
			}
			seen := map[string]int{}
			for _, k := range keys {
				if seen[k]++; seen[k] > 1 {
					t.Errorf("key %q written twice: %s", k, line)
				}
			}
			var got map[string]any
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if !reflect.DeepEqual(got[k], v) {
					t.Errorf("%s = %#v, want %#v (line %s)", k, got[k], v, line)
				}
			}
		})
	}
}

// topKeys returns the keys of the top-level JSON object in order, duplicates kept.
func topKeys(dec *json.Decoder) ([]string, error) {
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	return keys, nil
}
