// Package logging is kubal's slog handler: in text mode it keeps PyBal's readable
// `[<system>] LEVEL: message` lines (system = the pool, or "<pool> <Monitor>"), followed
// by the remaining attributes as key=value; in JSON mode it is slog's JSON handler.
package logging

import (
	"context"

	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SystemKey is the attribute that names the log line's system (PyBal's "[system]").
const SystemKey = "system"

// New returns a logger writing to w: PyBal-style text, or JSON when json is set.
func New(w io.Writer, level slog.Leveler, json bool) *slog.Logger {
	if json {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
	}
	return slog.New(&Handler{w: w, level: level, mu: &sync.Mutex{}})
}

// Handler formats records as `[system] LEVEL: message k=v ...`. PyBal wrote no
// timestamps (journald adds them); neither do we.
type Handler struct {
	w      io.Writer
	level  slog.Leveler
	mu     *sync.Mutex
	system string
	attrs  string // preformatted attrs from WithAttrs
	group  string
}

// Enabled implements slog.Handler.
func (h *Handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

// Handle implements slog.Handler.
func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	system := h.system
	var rest strings.Builder
	rest.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == SystemKey && h.group == "" {
			system = a.Value.String()
			return true
		}
		appendAttr(&rest, h.group, a)
		return true
	})
	if system == "" {
		system = "kubal"
	}
	b.WriteString("[")
	b.WriteString(system)
	b.WriteString("] ")
	b.WriteString(levelName(r.Level))
	b.WriteString(": ")
	b.WriteString(r.Message)
	b.WriteString(rest.String())
	b.WriteString("\n")
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		if a.Key == SystemKey && h.group == "" {
			n.system = a.Value.String()
			continue
		}
		appendAttr(&b, h.group, a)
	}
	n.attrs = b.String()
	return &n
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	n := *h
	if n.group != "" {
		n.group += "." + name
	} else {
		n.group = name
	}
	return &n
}

// levelName uses PyBal's level words (WARN, not WARNING).
func levelName(l slog.Level) string {
	switch {
	case l >= slog.LevelError+4:
		return "CRITICAL"
	case l >= slog.LevelError:
		return "ERROR"
	case l >= slog.LevelWarn:
		return "WARN"
	case l >= slog.LevelInfo:
		return "INFO"
	}
	return "DEBUG"
}

// LevelCritical is PyBal's CRITICAL, above ERROR.
const LevelCritical = slog.LevelError + 4

func appendAttr(b *strings.Builder, group string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	key := a.Key
	if group != "" {
		key = group + "." + key
	}
	if a.Value.Kind() == slog.KindGroup {
		for _, ga := range a.Value.Group() {
			appendAttr(b, key, ga)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(key)
	b.WriteByte('=')
	var s string
	switch a.Value.Kind() {
	case slog.KindDuration:
		s = a.Value.Duration().String()
	case slog.KindTime:
		s = a.Value.Time().Format(time.RFC3339Nano)
	default:
		s = a.Value.String()
	}
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		s = strconv.Quote(s)
	}
	b.WriteString(s)
}

// Discard returns a logger that drops everything (tests).
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
