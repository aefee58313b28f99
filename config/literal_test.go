package config

import (
	"reflect"
	"strings"
	"testing"
)

func str(s string) Literal  { return Literal{Kind: LitString, Str: s} }
func num(n int64) Literal   { return Literal{Kind: LitInt, Int: n} }
func name(s string) Literal { return Literal{Kind: LitName, Str: s} }
func list(l ...Literal) Literal {
	if l == nil {
		l = []Literal{}
	}
	return Literal{Kind: LitList, List: l}
}

func TestParseLiteral(t *testing.T) {
	tests := []struct {
		in   string
		want Literal
	}{
		{`'a'`, str("a")},
		{`"b"`, str("b")},
		{`[ 'ProxyFetch', "IdleConnection" ]`, list(str("ProxyFetch"), str("IdleConnection"))},
		{`["x", "y",]`, list(str("x"), str("y"))},
		{`[]`, list()},
		{`()`, list()},
		{`('a',)`, list(str("a"))},
		{`('a')`, str("a")}, // parentheses, not a tuple
		{`('a', 'b')`, list(str("a"), str("b"))},
		{`[['a', 1], ('b', [2.5, True]), None]`, list(list(str("a"), num(1)),
			list(str("b"), list(Literal{Kind: LitFloat, Float: 2.5}, Literal{Kind: LitBool, Bool: true})),
			Literal{Kind: LitNone})},
		{`[ '/etc/pybal/command-test', server.host, 'one', '2', 'III' ]`,
			list(str("/etc/pybal/command-test"), name("server.host"), str("one"), str("2"), str("III"))},
		{`[server.ip, server.port]`, list(name("server.ip"), name("server.port"))},
		{"[\n'a',\n'b' ]", list(str("a"), str("b"))},
		{`['a'] # trailing comment`, list(str("a"))},
		{"['a', # one\n 'b']", list(str("a"), str("b"))},
		{`"it's"`, str("it's")},
		{`'say \"hi\"'`, str(`say "hi"`)},
		{`'tab\there'`, str("tab\there")},
		{`'a\nb\\c'`, str("a\nb\\c")},
		{`'\x41\101\0'`, str("AA\x00")},
		{`'\d\w'`, str(`\d\w`)}, // unknown escapes stay verbatim
		{`'\a\b\f\v'`, str("\a\b\f\v")},
		{`r'\d\n'`, str(`\d\n`)},
		{`u'caf\u00e9'`, str("café")},
		{`'caf\u00e9'`, str(`caf\u00e9`)}, // \u only in unicode literals
		{`b"x"`, str("x")},
		{"'line\\\ncontinued'", str("linecontinued")},
		{`42`, num(42)},
		{`-7`, num(-7)},
		{`+3`, num(3)},
		{`0x1F`, num(31)},
		{`010`, num(8)}, // Python 2 octal
		{`0o10`, num(8)},
		{`0b101`, num(5)},
		{`10L`, num(10)},
		{`0`, num(0)},
		{`.5`, Literal{Kind: LitFloat, Float: 0.5}},
		{`1e3`, Literal{Kind: LitFloat, Float: 1000}},
		{`-2.5e-1`, Literal{Kind: LitFloat, Float: -0.25}},
		{`False`, Literal{Kind: LitBool}},
		{`  [ 1 ]  `, list(num(1))},
	}
	for _, tt := range tests {
		got, err := ParseLiteral(tt.in)
		if err != nil {
			t.Errorf("ParseLiteral(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseLiteral(%q) = %#v, want %#v", tt.in, got, tt.want)
		}
	}
}

func TestParseLiteralErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{``, "unexpected end"},
		{`[`, "unterminated list"},
		{`['a'`, "unterminated list"},
		{`['a' 'b']`, "expected ','"},
		{`[,]`, "unexpected ','"},
		{`'abc`, "unterminated string"},
		{"'a\nb'", "newline in string"},
		{`ProxyFetch, IdleConnection`, "unexpected"},
		{`{'a': 1}`, "unexpected '{'"},
		{`__import__('os').system('x')`, "unexpected"},
		{`1 + 1`, "unexpected"},
		{`08`, "bad number"},
		{`1_000`, "bad number"},
		{`12abc`, "bad number"},
		{`0x`, "bad number"},
		{`99999999999999999999`, "bad number"},
		{`-`, "bad number"},
		{`server.`, "bad name"},
		{`a..b`, "bad name"},
		{`server.1`, "bad name"},
		{`'\x4'`, `invalid \x escape`},
		{`u'\ud800'`, `invalid \u escape`},
		{`é`, "unexpected"},
		{strings.Repeat("[", 40) + strings.Repeat("]", 40), "nested deeper"},
		{`['a'] ]`, "unexpected"},
	}
	for _, tt := range tests {
		_, err := ParseLiteral(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseLiteral(%q) error = %v, want one containing %q", tt.in, err, tt.want)
		}
	}
}

func TestLiteralStrings(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{`['a', "b"]`, []string{"a", "b"}, false},
		{`('a', 'b')`, []string{"a", "b"}, false},
		{`'http://x/'`, []string{"http://x/"}, false}, // SPEC §14 #4: a bare string is one URL
		{`[]`, []string{}, false},
		{`['a', 1]`, nil, true},
		{`[server.host]`, nil, true},
		{`42`, nil, true},
	}
	for _, tt := range tests {
		lit, err := ParseLiteral(tt.in)
		if err != nil {
			t.Fatalf("ParseLiteral(%q): %v", tt.in, err)
		}
		got, err := lit.Strings()
		if (err != nil) != tt.wantErr {
			t.Errorf("Strings(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Strings(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLiteralString(t *testing.T) {
	lit, err := ParseLiteral(`['a', 1, 2.5, True, None, server.host, []]`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := lit.String(), `["a", 1, 2.5, True, None, server.host, []]`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
}
