package config

import (
	"fmt"
	"strings"
)

// This file reads INI text exactly as Python 2's ConfigParser.RawConfigParser._read
// does (the parser PyBal uses), and interpolates values as SafeConfigParser.items()
// does. Where Python stops at the first problem, we record a Diagnostic and go on, so
// that one run reports every error.

// defaultSection is ConfigParser's DEFAULTSECT: its values are inherited by every section.
const defaultSection = "DEFAULT"

// maxInterpolationDepth is ConfigParser's MAX_INTERPOLATION_DEPTH.
const maxInterpolationDepth = 10

// maxInterpolatedLen bounds the size of one interpolated value, and
// maxInterpolatedTotal the sum over the file: nested references can grow
// exponentially (Python would simply run out of memory).
const (
	maxInterpolatedLen   = 1 << 20
	maxInterpolatedTotal = 16 << 20
)

type iniOption struct {
	name  string   // lower-cased
	lines []string // first line plus continuation lines, joined by "\n"
	pos   Pos
}

func (o *iniOption) value() string { return strings.Join(o.lines, "\n") }

type iniSection struct {
	name  string
	pos   Pos // the first header line of this section
	opts  map[string]*iniOption
	order []string // option names in first-seen order
}

func newSection(name string, pos Pos) *iniSection {
	return &iniSection{name: name, pos: pos, opts: map[string]*iniOption{}}
}

type iniFile struct {
	defaults *iniSection   // the [DEFAULT] section, or nil
	sections []*iniSection // every other section, in file order
	// referenced holds the option names used as %(name)s somewhere: such helper
	// variables are not "unknown keys".
	referenced map[string]bool
	budget     int // interpolated bytes left for the whole file
}

// isPySpace is Python 2 str.isspace() for one byte (and the regexp class \s).
func isPySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// pyStrip is Python 2 str.strip() on a byte string.
func pyStrip(s string) string {
	i, j := 0, len(s)
	for i < j && isPySpace(s[i]) {
		i++
	}
	for j > i && isPySpace(s[j-1]) {
		j--
	}
	return s[i:j]
}

func pyRStrip(s string) string {
	j := len(s)
	for j > 0 && isPySpace(s[j-1]) {
		j--
	}
	return s[:j]
}

// asciiLower is Python 2 str.lower() on a byte string (optionxform): ASCII only, and
// never rewrites invalid UTF-8 the way strings.ToLower would.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

// readINI parses data as ConfigParser does, appending findings to errs and warns.
func readINI(file string, data []byte, errs, warns *Diagnostics) *iniFile {
	f := &iniFile{referenced: map[string]bool{}, budget: maxInterpolatedTotal}
	byName := map[string]*iniSection{}
	var cur *iniSection
	var opt *iniOption // the option a continuation line extends (ConfigParser's optname)

	text := string(data)
	lineno := 0
	for len(text) > 0 {
		// readline(): lines end at '\n' only; a '\r' stays in the line as in Python 2.
		var line string
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			line, text = text, ""
		}
		lineno++
		pos := Pos{File: file, Line: lineno}

		// Comment or blank line. Note: only column 0 counts, and optname is kept, so a
		// continuation line may follow blank and comment lines.
		if pyStrip(line) == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		// "rem" comments, a leftover of Windows INI files that Python 2 still honours.
		if (line[0] == 'r' || line[0] == 'R') && asciiLower(firstWord(line)) == "rem" {
			continue
		}
		// Continuation line.
		if isPySpace(line[0]) && cur != nil && opt != nil {
			if v := pyStrip(line); v != "" {
				opt.lines = append(opt.lines, v)
				if v[0] == '#' || v[0] == ';' {
					*warns = append(*warns, Diagnostic{Pos: pos, Key: opt.name, Msg: fmt.Sprintf(
						"indented line %q continues the value of %q (ConfigParser continuation line); "+
							"put comments in column 0", v, opt.name)})
				}
			}
			continue
		}
		// Section header: SECTCRE = r'\[(?P<header>[^]]+)\]', matched at the line start;
		// the rest of the line is ignored.
		if line[0] == '[' {
			if end := strings.IndexByte(line, ']'); end > 1 {
				name := line[1:end]
				if rest := pyStrip(line[end+1:]); rest != "" && rest[0] != '#' && rest[0] != ';' {
					*warns = append(*warns, Diagnostic{Pos: pos, Msg: fmt.Sprintf(
						"text after the section header [%s] is ignored: %q", name, rest)})
				}
				opt = nil
				if name == defaultSection {
					if f.defaults == nil {
						f.defaults = newSection(name, pos)
					}
					cur = f.defaults
					continue
				}
				if s, ok := byName[name]; ok {
					*warns = append(*warns, Diagnostic{Pos: pos, Msg: fmt.Sprintf(
						"section [%s] already started at line %d; ConfigParser merges both", name, s.pos.Line)})
					cur = s
					continue
				}
				cur = newSection(name, pos)
				byName[name] = cur
				f.sections = append(f.sections, cur)
				continue
			}
		}
		if cur == nil {
			*errs = append(*errs, Diagnostic{Pos: pos, Msg: fmt.Sprintf(
				"line %q is outside any [section] (file contains no section headers before it)", clip(line))})
			continue
		}
		// Option line: OPTCRE = r'(?P<option>[^:=\s][^:=]*)\s*(?P<vi>[:=])\s*(?P<value>.*)$'.
		sep := strings.IndexAny(line, ":=")
		if sep <= 0 || isPySpace(line[0]) {
			*errs = append(*errs, Diagnostic{Pos: pos, Msg: fmt.Sprintf(
				"cannot parse line %q: want `key = value`, `key: value` or [section]", clip(line))})
			continue
		}
		name := asciiLower(pyRStrip(line[:sep]))
		val := line[sep+1:]
		for len(val) > 0 && isPySpace(val[0]) {
			val = val[1:]
		}
		// ';' starts an inline comment only when the first ';' follows whitespace
		// (Python 2.7 looks at the first ';' only; at offset 0 it looks at the last byte).
		if p := strings.IndexByte(val, ';'); p >= 0 {
			prev := len(val) - 1
			if p > 0 {
				prev = p - 1
			}
			if isPySpace(val[prev]) {
				val = val[:p]
			}
		}
		val = pyStrip(val)
		if val == `""` {
			val = ""
		}
		if old, ok := cur.opts[name]; ok {
			*warns = append(*warns, Diagnostic{Pos: pos, Key: name, Msg: fmt.Sprintf(
				"duplicate key in [%s]: this value replaces the one at line %d", cur.name, old.pos.Line)})
		} else {
			cur.order = append(cur.order, name)
		}
		opt = &iniOption{name: name, lines: []string{val}, pos: pos}
		cur.opts[name] = opt
	}
	return f
}

// firstWord is line.split(None, 1)[0] for a line that does not start with whitespace.
func firstWord(line string) string {
	for i := 0; i < len(line); i++ {
		if isPySpace(line[i]) {
			return line[:i]
		}
	}
	return line
}

// clip shortens a line for messages.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// options returns the section's options merged over [DEFAULT] and interpolated as
// SafeConfigParser.items(section) does. inherited lists the names that come only
// from [DEFAULT].
func (f *iniFile) options(s *iniSection, errs *Diagnostics) (opts Options, inherited map[string]bool) {
	raw := map[string]*iniOption{}
	inherited = map[string]bool{}
	if f.defaults != nil {
		for name, o := range f.defaults.opts {
			raw[name] = o
			inherited[name] = true
		}
	}
	for name, o := range s.opts {
		raw[name] = o
		delete(inherited, name)
	}
	vals := make(map[string]string, len(raw)+1)
	for name, o := range raw {
		vals[name] = o.value()
	}
	// ConfigParser stores the section name as the option __name__, usable as %(__name__)s.
	vals["__name__"] = s.name

	opts = make(Options, len(raw))
	for name, o := range raw {
		v, err := interpolate(vals[name], vals, f.referenced, min(maxInterpolatedLen, f.budget))
		f.budget -= len(v)
		if err != nil {
			where := ""
			if inherited[name] {
				where = fmt.Sprintf(" (inherited from [DEFAULT], in section [%s])", s.name)
			}
			*errs = append(*errs, Diagnostic{Pos: o.pos, Key: name, Msg: err.Error() + where})
			v = vals[name]
		}
		opts[name] = Value{Raw: v, Pos: o.pos}
	}
	return opts, inherited
}

// interpolate is SafeConfigParser._interpolate: "%%" is "%", "%(name)s" is the value
// of option name (lower-cased) of the same section or [DEFAULT], interpolated in turn.
func interpolate(raw string, vals map[string]string, referenced map[string]bool, limit int) (string, error) {
	var b strings.Builder
	if err := interpolateSome(&b, raw, vals, referenced, limit, 1); err != nil {
		return "", err
	}
	return b.String(), nil
}

func interpolateSome(b *strings.Builder, rest string, vals map[string]string, referenced map[string]bool, limit, depth int) error {
	if depth > maxInterpolationDepth {
		return fmt.Errorf("%%(...)s references nested deeper than %d (a reference loop?)", maxInterpolationDepth)
	}
	for rest != "" {
		if b.Len() > limit {
			return fmt.Errorf("value too long after %%-interpolation (limits: %d bytes per value, %d per file)",
				maxInterpolatedLen, maxInterpolatedTotal)
		}
		p := strings.IndexByte(rest, '%')
		if p < 0 {
			b.WriteString(rest)
			return nil
		}
		b.WriteString(rest[:p])
		rest = rest[p:]
		switch {
		case strings.HasPrefix(rest, "%%"):
			b.WriteByte('%')
			rest = rest[2:]
		case strings.HasPrefix(rest, "%("):
			// _interpvar_re = r"%\(([^)]+)\)s"
			end := strings.IndexByte(rest, ')')
			if end <= 2 || end+1 >= len(rest) || rest[end+1] != 's' {
				return fmt.Errorf("bad interpolation variable reference %q (want %%(name)s; write %%%% for a literal %%)", clip(rest))
			}
			name := asciiLower(rest[2:end])
			rest = rest[end+2:]
			referenced[name] = true
			v, ok := vals[name]
			if !ok {
				return fmt.Errorf("%%(%s)s refers to a key that is not set in this section or [DEFAULT]", name)
			}
			if strings.IndexByte(v, '%') >= 0 {
				if err := interpolateSome(b, v, vals, referenced, limit, depth+1); err != nil {
					return err
				}
			} else {
				b.WriteString(v)
			}
		default:
			return fmt.Errorf("'%%' must be followed by '%%' or '(', found %q (write %%%% for a literal %%, e.g. in URL-encoded text)", clip(rest))
		}
	}
	return nil
}
