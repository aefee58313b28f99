package config

import (
	"fmt"
	"strconv"
	"strings"
)

// LiteralKind is the type of a parsed Python literal.
type LiteralKind int

const (
	LitString LiteralKind = iota
	LitInt
	LitFloat
	LitBool
	LitNone
	LitList
	LitName // a bare dotted name such as server.host (runcommand.arguments)
)

// Literal is a Python literal parsed without evaluation: strings, numbers, booleans,
// None, lists/tuples (nested) and bare dotted names.
type Literal struct {
	Kind  LiteralKind
	Str   string // LitString: the value; LitName: the name
	Int   int64
	Float float64
	Bool  bool
	List  []Literal
}

// String renders a literal back in Python syntax (for messages).
func (l Literal) String() string {
	switch l.Kind {
	case LitString:
		return strconv.Quote(l.Str)
	case LitInt:
		return strconv.FormatInt(l.Int, 10)
	case LitFloat:
		return strconv.FormatFloat(l.Float, 'g', -1, 64)
	case LitBool:
		if l.Bool {
			return "True"
		}
		return "False"
	case LitNone:
		return "None"
	case LitName:
		return l.Str
	case LitList:
		parts := make([]string, len(l.List))
		for i, e := range l.List {
			parts[i] = e.String()
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return "?"
}

// ParseLiteral parses one Python literal (the subset PyBal configs use). It never
// evaluates anything: names are returned as LitName for the caller to interpret.
func ParseLiteral(s string) (Literal, error) {
	p := &litParser{s: s}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return Literal{}, err
	}
	p.skipSpace()
	if p.i != len(p.s) {
		return Literal{}, fmt.Errorf("unexpected %q at offset %d", p.s[p.i:], p.i)
	}
	return v, nil
}

// maxLiteralDepth bounds list nesting so hostile input cannot exhaust the stack.
const maxLiteralDepth = 32

type litParser struct {
	s string
	i int
}

// skipSpace skips whitespace and Python comments: eval() ignores a trailing
// "# comment", and ConfigParser leaves one in the value.
func (p *litParser) skipSpace() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r', '\f', '\v':
			p.i++
		case '#':
			for p.i < len(p.s) && p.s[p.i] != '\n' {
				p.i++
			}
		default:
			return
		}
	}
}

func isASCIILetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }
func isDigit(c byte) bool       { return c >= '0' && c <= '9' }

func (p *litParser) value(depth int) (Literal, error) {
	if p.i >= len(p.s) {
		return Literal{}, fmt.Errorf("unexpected end of value")
	}
	switch c := p.s[p.i]; {
	case c == '[' || c == '(':
		if depth >= maxLiteralDepth {
			return Literal{}, fmt.Errorf("lists nested deeper than %d", maxLiteralDepth)
		}
		return p.list(depth)
	case c == '\'' || c == '"':
		return p.str(false, false)
	case c == '-' || c == '+' || c == '.' || isDigit(c):
		return p.number()
	case c == '_' || isASCIILetter(c):
		return p.name()
	default:
		return Literal{}, fmt.Errorf("unexpected %q at offset %d", c, p.i)
	}
}

// list parses [a, b] and (a, b). As in Python, (a) without a comma is just a.
func (p *litParser) list(depth int) (Literal, error) {
	open := p.s[p.i]
	closer := byte(']')
	if open == '(' {
		closer = ')'
	}
	p.i++
	out := Literal{Kind: LitList, List: []Literal{}}
	comma := false
	for {
		p.skipSpace()
		if p.i >= len(p.s) {
			return Literal{}, fmt.Errorf("unterminated list: missing %q", closer)
		}
		if p.s[p.i] == closer {
			p.i++
			if open == '(' && len(out.List) == 1 && !comma {
				return out.List[0], nil
			}
			return out, nil
		}
		v, err := p.value(depth + 1)
		if err != nil {
			return Literal{}, err
		}
		out.List = append(out.List, v)
		p.skipSpace()
		if p.i >= len(p.s) {
			return Literal{}, fmt.Errorf("unterminated list: missing %q", closer)
		}
		switch p.s[p.i] {
		case ',':
			comma = true
			p.i++
		case closer:
		default:
			return Literal{}, fmt.Errorf("expected ',' or %q at offset %d, got %q", closer, p.i, p.s[p.i])
		}
	}
}

// str parses a Python 2 string literal at p.i (after any prefix), with its escapes.
// raw: r” (backslashes kept); unicode: u” (\u and \U escapes).
func (p *litParser) str(raw, unicode bool) (Literal, error) {
	q := p.s[p.i]
	start := p.i
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == q:
			p.i++
			return Literal{Kind: LitString, Str: b.String()}, nil
		case c == '\n':
			return Literal{}, fmt.Errorf("newline in string starting at offset %d", start)
		case c == '\\' && p.i+1 < len(p.s):
			e := p.s[p.i+1]
			if raw {
				// r'...': the backslash stays, and an escaped quote does not end the string.
				b.WriteByte('\\')
				b.WriteByte(e)
				p.i += 2
				continue
			}
			if err := p.escape(&b, unicode); err != nil {
				return Literal{}, err
			}
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return Literal{}, fmt.Errorf("unterminated string starting at offset %d", start)
}

// escape decodes the backslash escape at p.i.
func (p *litParser) escape(b *strings.Builder, unicode bool) error {
	at := p.i
	e := p.s[p.i+1]
	p.i += 2
	switch e {
	case '\n': // backslash-newline: line continuation inside the string
	case 'n':
		b.WriteByte('\n')
	case 't':
		b.WriteByte('\t')
	case 'r':
		b.WriteByte('\r')
	case 'a':
		b.WriteByte('\a')
	case 'b':
		b.WriteByte('\b')
	case 'f':
		b.WriteByte('\f')
	case 'v':
		b.WriteByte('\v')
	case '\\', '\'', '"':
		b.WriteByte(e)
	case 'x':
		if p.i+2 > len(p.s) {
			return fmt.Errorf(`invalid \x escape at offset %d`, at)
		}
		n, err := strconv.ParseUint(p.s[p.i:p.i+2], 16, 8)
		if err != nil {
			return fmt.Errorf(`invalid \x escape at offset %d`, at)
		}
		b.WriteByte(byte(n))
		p.i += 2
	case '0', '1', '2', '3', '4', '5', '6', '7':
		n := int(e - '0')
		for k := 0; k < 2 && p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '7'; k++ {
			n = n*8 + int(p.s[p.i]-'0')
			p.i++
		}
		b.WriteByte(byte(n))
	case 'u', 'U':
		if !unicode {
			b.WriteByte('\\')
			b.WriteByte(e)
			break
		}
		size := 4
		if e == 'U' {
			size = 8
		}
		if p.i+size > len(p.s) {
			return fmt.Errorf(`truncated \%c escape at offset %d`, e, at)
		}
		n, err := strconv.ParseUint(p.s[p.i:p.i+size], 16, 32)
		if err != nil || n > unicodeMax || (n >= 0xD800 && n <= 0xDFFF) {
			return fmt.Errorf(`invalid \%c escape at offset %d`, e, at)
		}
		b.WriteRune(rune(n))
		p.i += size
	default: // Python keeps unknown escapes verbatim
		b.WriteByte('\\')
		b.WriteByte(e)
	}
	return nil
}

const unicodeMax = 0x10FFFF

// number parses Python 2 int and float literals: decimal, 0x hex, 0o/0b and legacy
// leading-0 octal, an optional L suffix, and floats with a fraction or exponent.
func (p *litParser) number() (Literal, error) {
	start := p.i
	if p.s[p.i] == '-' || p.s[p.i] == '+' {
		p.i++
	}
	for p.i < len(p.s) {
		c := p.s[p.i]
		if isDigit(c) || isASCIILetter(c) || c == '.' || c == '_' ||
			((c == '+' || c == '-') && (p.s[p.i-1] == 'e' || p.s[p.i-1] == 'E') && !isHexPrefixed(p.s[start:p.i])) {
			p.i++
			continue
		}
		break
	}
	tok := p.s[start:p.i]
	bad := fmt.Errorf("bad number %q at offset %d", tok, start)
	body := strings.TrimLeft(tok, "+-")
	if body == "" || strings.Contains(body, "_") {
		return Literal{}, bad
	}
	if isHexPrefixed(body) || !strings.ContainsAny(body, ".eE") {
		digits := strings.TrimSuffix(strings.TrimSuffix(tok, "L"), "l")
		if len(body) > 1 && body[0] == '0' && isDigit(body[1]) {
			// Python 2 legacy octal (010 == 8); Go's base 0 reads it the same way.
			if strings.ContainsAny(strings.TrimLeft(digits, "+-"), "89") {
				return Literal{}, bad
			}
		}
		n, err := strconv.ParseInt(digits, 0, 64)
		if err != nil {
			return Literal{}, bad
		}
		return Literal{Kind: LitInt, Int: n}, nil
	}
	for i := 0; i < len(body); i++ {
		if c := body[i]; isASCIILetter(c) && c != 'e' && c != 'E' {
			return Literal{}, bad
		}
	}
	f, err := strconv.ParseFloat(tok, 64)
	if err != nil {
		return Literal{}, bad
	}
	return Literal{Kind: LitFloat, Float: f}, nil
}

func isHexPrefixed(s string) bool {
	s = strings.TrimLeft(s, "+-")
	return len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')
}

func (p *litParser) name() (Literal, error) {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '_' || c == '.' || isASCIILetter(c) || isDigit(c) {
			p.i++
			continue
		}
		break
	}
	tok := p.s[start:p.i]
	// String prefixes: u'', r'', b'', ur'', br'' (any case).
	if p.i < len(p.s) && (p.s[p.i] == '\'' || p.s[p.i] == '"') {
		switch strings.ToLower(tok) {
		case "u", "b":
			return p.str(false, tok[0] == 'u' || tok[0] == 'U')
		case "r", "ur", "br":
			return p.str(true, false)
		}
	}
	switch tok {
	case "True":
		return Literal{Kind: LitBool, Bool: true}, nil
	case "False":
		return Literal{Kind: LitBool, Bool: false}, nil
	case "None":
		return Literal{Kind: LitNone}, nil
	}
	if strings.HasSuffix(tok, ".") || strings.Contains(tok, "..") {
		return Literal{}, fmt.Errorf("bad name %q at offset %d", tok, start)
	}
	for _, part := range strings.Split(tok, ".") {
		if isDigit(part[0]) {
			return Literal{}, fmt.Errorf("bad name %q at offset %d", tok, start)
		}
	}
	return Literal{Kind: LitName, Str: tok}, nil
}

// Strings returns the elements of a list literal of strings (a bare string is
// accepted as a one-element list, unlike PyBal, which then picked characters: SPEC §14 #4).
func (l Literal) Strings() ([]string, error) {
	if l.Kind == LitString {
		return []string{l.Str}, nil
	}
	if l.Kind != LitList {
		return nil, fmt.Errorf("want a list of strings, got %s", l)
	}
	out := make([]string, 0, len(l.List))
	for _, e := range l.List {
		if e.Kind != LitString {
			return nil, fmt.Errorf("want a list of strings, element %s is not a string", e)
		}
		out = append(out, e.Str)
	}
	return out, nil
}
