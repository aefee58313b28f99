package source

import (
	"fmt"
	"strconv"
	"strings"
)

// parseDict parses one Python dict literal as ast.literal_eval would for the values a
// server list uses: string keys; string, int, float, bool, None and list values.
// Values come back as string, int64, float64, bool, nil or []any.
func parseDict(s string) (map[string]any, error) {
	p := &dictParser{s: s}
	p.space()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(p.s) {
		return nil, fmt.Errorf("unexpected %q after the dict", p.s[p.i:])
	}
	d, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("not a dict literal")
	}
	return d, nil
}

type dictParser struct {
	s string
	i int
}

func (p *dictParser) space() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *dictParser) eat(c byte) bool {
	p.space()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *dictParser) value(depth int) (any, error) {
	if depth > 16 {
		return nil, fmt.Errorf("nested too deeply")
	}
	p.space()
	if p.i >= len(p.s) {
		return nil, fmt.Errorf("unexpected end of line")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		d := map[string]any{}
		for {
			if p.eat('}') {
				return d, nil
			}
			k, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("dict key %v is not a string", k)
			}
			if !p.eat(':') {
				return nil, fmt.Errorf("expected ':' after key %q", ks)
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			d[ks] = v
			if !p.eat(',') {
				if p.eat('}') {
					return d, nil
				}
				return nil, fmt.Errorf("expected ',' or '}' at offset %d", p.i)
			}
		}
	case c == '[':
		p.i++
		var l []any
		for {
			if p.eat(']') {
				return l, nil
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
			if !p.eat(',') {
				if p.eat(']') {
					return l, nil
				}
				return nil, fmt.Errorf("expected ',' or ']' at offset %d", p.i)
			}
		}
	case c == '\'' || c == '"':
		p.i++
		var b strings.Builder
		for p.i < len(p.s) {
			ch := p.s[p.i]
			if ch == c {
				p.i++
				return b.String(), nil
			}
			if ch == '\\' && p.i+1 < len(p.s) {
				p.i++
				ch = p.s[p.i]
				switch ch {
				case 'n':
					ch = '\n'
				case 't':
					ch = '\t'
				}
			}
			b.WriteByte(ch)
			p.i++
		}
		return nil, fmt.Errorf("unterminated string")
	default:
		start := p.i
		for p.i < len(p.s) && strings.IndexByte(",:}] \t", p.s[p.i]) < 0 {
			p.i++
		}
		tok := p.s[start:p.i]
		switch tok {
		case "True":
			return true, nil
		case "False":
			return false, nil
		case "None":
			return nil, nil
		}
		if n, err := strconv.ParseInt(tok, 10, 64); err == nil {
			return n, nil
		}
		if f, err := strconv.ParseFloat(tok, 64); err == nil {
			return f, nil
		}
		return nil, fmt.Errorf("malformed value %q (names are not allowed: literals only)", tok)
	}
}
