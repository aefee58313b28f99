package config

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
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

func (p *litParser) skipSpace() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == '\n' || p.s[p.i] == '\r') {
		p.i++
	}
}

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
		return p.str()
	case c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9'):
		return p.number()
	case c == '_' || unicode.IsLetter(rune(c)):
		return p.name()
	default:
		return Literal{}, fmt.Errorf("unexpected %q at offset %d", c, p.i)
	}
}

func (p *litParser) list(depth int) (Literal, error) {
	open := p.s[p.i]
	closer := byte(']')
	if open == '(' {
		closer = ')'
	}
	p.i++
	out := Literal{Kind: LitList, List: []Literal{}}
	for {
		p.skipSpace()
		if p.i >= len(p.s) {
			return Literal{}, fmt.Errorf("unterminated list: missing %q", closer)
		}
		if p.s[p.i] == closer {
			p.i++
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
			p.i++
		case closer:
		default:
			return Literal{}, fmt.Errorf("expected ',' or %q at offset %d, got %q", closer, p.i, p.s[p.i])
		}
	}
}

func (p *litParser) str() (Literal, error) {
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
		case c == '\\' && p.i+1 < len(p.s):
			p.i++
			e := p.s[p.i]
			switch e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case '\\', '\'', '"':
				b.WriteByte(e)
			default: // Python keeps unknown escapes verbatim
				b.WriteByte('\\')
				b.WriteByte(e)
			}
			p.i++
		case c == '\n':
			return Literal{}, fmt.Errorf("newline in string starting at offset %d", start)
		default:
			b.WriteByte(c)
			p.i++
		}
	}
	return Literal{}, fmt.Errorf("unterminated string starting at offset %d", start)
}

func (p *litParser) number() (Literal, error) {
	start := p.i
	if p.s[p.i] == '-' || p.s[p.i] == '+' {
		p.i++
	}
	for p.i < len(p.s) && strings.IndexByte("0123456789.eE+-_xXabcdefABCDEF", p.s[p.i]) >= 0 {
		// stop a sign that is not part of an exponent
		if (p.s[p.i] == '+' || p.s[p.i] == '-') && !(p.s[p.i-1] == 'e' || p.s[p.i-1] == 'E') {
			break
		}
		p.i++
	}
	tok := p.s[start:p.i]
	if n, err := strconv.ParseInt(tok, 0, 64); err == nil {
		return Literal{Kind: LitInt, Int: n}, nil
	}
	if f, err := strconv.ParseFloat(tok, 64); err == nil && !strings.ContainsAny(tok, "xX_") {
		return Literal{Kind: LitFloat, Float: f}, nil
	}
	return Literal{}, fmt.Errorf("bad number %q at offset %d", tok, start)
}

func (p *litParser) name() (Literal, error) {
	start := p.i
	for p.i < len(p.s) {
		c := rune(p.s[p.i])
		if c == '_' || c == '.' || unicode.IsLetter(c) || unicode.IsDigit(c) {
			p.i++
			continue
		}
		break
	}
	tok := p.s[start:p.i]
	switch tok {
	case "True":
		return Literal{Kind: LitBool, Bool: true}, nil
	case "False":
		return Literal{Kind: LitBool, Bool: false}, nil
	case "None":
		return Literal{Kind: LitNone}, nil
	}
	if strings.HasPrefix(tok, ".") || strings.HasSuffix(tok, ".") || strings.Contains(tok, "..") {
		return Literal{}, fmt.Errorf("bad name %q at offset %d", tok, start)
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
