// Package logging is kubal's slog handler: in text mode it keeps PyBal's readable
// `[<system>] LEVEL: message` lines (system = the pool, or "<pool> <Monitor>"), followed
// by the remaining attributes as key=value; in JSON mode it is slog's JSON handler
// behind a filter that keeps one value per key (the innermost wins).
//
// Text mode escapes every control character and invalid UTF-8 byte in the system,
// the message, keys and values (a value holding one is quoted), so that outside input
// (a URL path with %0d%1b, a host name with a newline, a certificate CN with ESC)
// can neither forge a log line nor send escape sequences to a terminal.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// SystemKey is the attribute that names the log line's system (PyBal's "[system]").
const SystemKey = "system"

// New returns a logger writing to w: PyBal-style text, or JSON when json is set.
func New(w io.Writer, level slog.Leveler, json bool) *slog.Logger {
	if json {
		return slog.New(&dedup{inner: slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
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
	b.WriteString(Escape(system))
	b.WriteString("] ")
	b.WriteString(levelName(r.Level))
	b.WriteString(": ")
	b.WriteString(Escape(r.Message))
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
	b.WriteString(Escape(key))
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
	if s == "" || strings.ContainsAny(s, " \"=") || needsEscape(s) {
		s = strconv.Quote(s) // escapes control characters and invalid UTF-8
	}
	b.WriteString(s)
}

// needsEscape reports whether s holds a byte or rune Escape would rewrite.
func needsEscape(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || unsafeRune(r) {
			return true
		}
		i += size
	}
	return false
}

// unsafeRune: control characters (C0, DEL, C1) and other non-printing runes such as
// the Unicode line and paragraph separators; a plain space is fine.
func unsafeRune(r rune) bool {
	return r != ' ' && (unicode.IsControl(r) || !unicode.IsPrint(r))
}

// Escape returns s with every control character, non-printing rune and invalid UTF-8
// byte written as a Go escape (\n, \r, \x1b, \u2028, \xff); everything else,
// quotes and backslashes included, is unchanged, so messages stay as readable as
// PyBal's.
func Escape(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// dedup is a slog.Handler in front of the JSON handler that writes each key once
// per object: a key set again (With("system", ...) on a logger that already has
// one, or in the record) replaces the earlier value in place, the innermost winning.
// slog's own handlers would write both, and most JSON readers keep only one of them.
type dedup struct {
	inner slog.Handler // never given attrs or groups: dedup builds the whole record
	// frames[0] holds the top-level attrs; each WithGroup opens a frame named by
	// groups[i-1].
	frames [][]slog.Attr
	groups []string
}

func (d *dedup) Enabled(ctx context.Context, l slog.Level) bool { return d.inner.Enabled(ctx, l) }

func (d *dedup) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return d
	}
	n := d.clone()
	last := len(n.frames) - 1
	n.frames[last] = merge(n.frames[last], as)
	return n
}

func (d *dedup) WithGroup(name string) slog.Handler {
	if name == "" {
		return d
	}
	n := d.clone()
	n.groups = append(n.groups, name)
	n.frames = append(n.frames, nil)
	return n
}

func (d *dedup) clone() *dedup {
	n := &dedup{inner: d.inner, groups: append([]string(nil), d.groups...)}
	n.frames = make([][]slog.Attr, max(len(d.frames), 1))
	for i, f := range d.frames {
		n.frames[i] = append([]slog.Attr(nil), f...)
	}
	return n
}

func (d *dedup) Handle(ctx context.Context, r slog.Record) error {
	var own []slog.Attr
	r.Attrs(func(a slog.Attr) bool {
		own = append(own, a)
		return true
	})
	frames := d.frames
	if len(frames) == 0 {
		frames = [][]slog.Attr{nil}
	}
	// Fold from the innermost group outwards.
	attrs := merge(append([]slog.Attr(nil), frames[len(frames)-1]...), own)
	for i := len(frames) - 2; i >= 0; i-- {
		g := slog.Attr{Key: d.groups[i], Value: slog.GroupValue(attrs...)}
		attrs = merge(append([]slog.Attr(nil), frames[i]...), []slog.Attr{g})
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(attrs...)
	return d.inner.Handle(ctx, nr)
}

// merge adds as to dst: a key already in dst takes the new value in place (groups
// are merged key by key), inline groups (empty key) are flattened first.
func merge(dst []slog.Attr, as []slog.Attr) []slog.Attr {
	for _, a := range as {
		a.Value = a.Value.Resolve()
		if a.Value.Kind() == slog.KindGroup && a.Key == "" {
			dst = merge(dst, a.Value.Group())
			continue
		}
		if a.Equal(slog.Attr{}) {
			continue
		}
		i := indexOf(dst, a.Key)
		switch {
		case i < 0:
			if a.Value.Kind() == slog.KindGroup {
				a.Value = slog.GroupValue(merge(nil, a.Value.Group())...)
			}
			dst = append(dst, a)
		case a.Value.Kind() == slog.KindGroup && dst[i].Value.Kind() == slog.KindGroup:
			dst[i].Value = slog.GroupValue(merge(append([]slog.Attr(nil), dst[i].Value.Group()...), a.Value.Group())...)
		default:
			if a.Value.Kind() == slog.KindGroup {
				a.Value = slog.GroupValue(merge(nil, a.Value.Group())...)
			}
			dst[i] = a
		}
	}
	return dst
}

func indexOf(as []slog.Attr, key string) int {
	for i, a := range as {
		if a.Key == key {
			return i
		}
	}
	return -1
}

// Discard returns a logger that drops everything (tests).
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
