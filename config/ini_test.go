package config

import (
	"strconv"
	"strings"
	"testing"
)

// readSection runs the INI reader and SafeConfigParser.items() on one section.
func readSection(t *testing.T, text, section string) (Options, Diagnostics, Diagnostics) {
	t.Helper()
	var errs, warns Diagnostics
	f := readINI("t.conf", []byte(text), &errs, &warns)
	for _, s := range f.sections {
		if s.name == section {
			opts, _ := f.options(s, &errs)
			return opts, errs, warns
		}
	}
	return nil, errs, warns
}

func TestINIValues(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		section string
		want    map[string]string // option -> raw value; "" keys absent
		lines   map[string]int    // option -> line of the key
		absent  []string
	}{
		{
			name:    "equals and colon separators, whitespace stripped",
			text:    "[s]\na = 1\nb: two words  \nc=3\nd:4\n",
			section: "s",
			want:    map[string]string{"a": "1", "b": "two words", "c": "3", "d": "4"},
			lines:   map[string]int{"a": 2, "b": 3, "c": 4, "d": 5},
		},
		{
			name:    "the first : or = separates, the rest is the value",
			text:    "[s]\nip = 2001:db8::1\nurl: http://x/?a=b\n",
			section: "s",
			want:    map[string]string{"ip": "2001:db8::1", "url": "http://x/?a=b"},
		},
		{
			name:    "option names are lower-cased",
			text:    "[s]\nDepool-Threshold = .5\nPROTOCOL = tcp\n",
			section: "s",
			want:    map[string]string{"depool-threshold": ".5", "protocol": "tcp"},
		},
		{
			name:    "section names are case-sensitive",
			text:    "[S]\na = upper\n[s]\na = lower\n",
			section: "s",
			want:    map[string]string{"a": "lower"},
		},
		{
			name:    "full-line # and ; comments, rem comments",
			text:    "# c1\n; c2\n[s]\n# a = no\n;b = no\nrem c = no\nREM\nc = yes\n",
			section: "s",
			want:    map[string]string{"c": "yes"},
			absent:  []string{"a", "b", "rem"},
		},
		{
			name:    "inline ; is a comment only after whitespace",
			text:    "[s]\na = x ; comment\nb = x;not comment\nc = x;y ;z\nd = ;leading\n",
			section: "s",
			want:    map[string]string{"a": "x", "b": "x;not comment", "c": "x;y ;z", "d": ";leading"},
		},
		{
			name:    "inline # is never a comment",
			text:    "[s]\nscheduler = wrr # comment\n",
			section: "s",
			want:    map[string]string{"scheduler": "wrr # comment"},
		},
		{
			name:    "continuation lines, also after blank and comment lines",
			text:    "[s]\nmonitors = [\n    'ProxyFetch',\n\n# note\n    'IdleConnection' ]\nnext = 1\n",
			section: "s",
			want:    map[string]string{"monitors": "[\n'ProxyFetch',\n'IdleConnection' ]", "next": "1"},
			lines:   map[string]int{"monitors": 2, "next": 7},
		},
		{
			name:    `"" is the empty value`,
			text:    "[s]\na = \"\"\nb =\n",
			section: "s",
			want:    map[string]string{"a": "", "b": ""},
		},
		{
			name:    "CRLF line ends",
			text:    "[s]\r\na = 1\r\nB = two\r\n",
			section: "s",
			want:    map[string]string{"a": "1", "b": "two"},
		},
		{
			name:    "[DEFAULT] is inherited and overridden",
			text:    "[DEFAULT]\nscheduler = wrr\nport = 80\n[s]\nport = 443\n",
			section: "s",
			want:    map[string]string{"scheduler": "wrr", "port": "443"},
			lines:   map[string]int{"scheduler": 2, "port": 5},
		},
		{
			name:    "%% and %(name)s interpolation from the section and [DEFAULT]",
			text:    "[DEFAULT]\nsite = eqiad\n[text_80]\nhost = cp1\nconfig = file:///p/%(site)s/%(HOST)s/%(__name__)s?x=%%41\n",
			section: "text_80",
			want:    map[string]string{"config": "file:///p/eqiad/cp1/text_80?x=%41"},
		},
		{
			name:    "nested interpolation; a section value wins over [DEFAULT]",
			text:    "[DEFAULT]\nsite = eqiad\nbase = /p/%(site)s\n[s]\nsite = codfw\nconfig = %(base)s/x\n",
			section: "s",
			want:    map[string]string{"config": "/p/codfw/x"},
		},
		{
			name:    "duplicate section headers merge",
			text:    "[s]\na = 1\n[t]\nb = 2\n[s]\nc = 3\n",
			section: "s",
			want:    map[string]string{"a": "1", "c": "3"},
			absent:  []string{"b"},
		},
		{
			name:    "the rest of a section header line is ignored",
			text:    "[s] ; comment\na = 1\n",
			section: "s",
			want:    map[string]string{"a": "1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, errs, _ := readSection(t, tt.text, tt.section)
			if len(errs) > 0 {
				t.Fatalf("unexpected errors: %v", errs)
			}
			for k, want := range tt.want {
				got, ok := opts[k]
				if !ok {
					t.Errorf("%s missing; have %v", k, opts)
					continue
				}
				if got.Raw != want {
					t.Errorf("%s = %q, want %q", k, got.Raw, want)
				}
			}
			for k, line := range tt.lines {
				if got := opts[k].Pos.Line; got != line {
					t.Errorf("%s at line %d, want %d", k, got, line)
				}
			}
			for _, k := range tt.absent {
				if _, ok := opts[k]; ok {
					t.Errorf("%s should not be set (value %q)", k, opts[k].Raw)
				}
			}
		})
	}
}

func TestINIDiagnostics(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		wantErrs  []string // "line:key:substring"
		wantWarns []string
	}{
		{
			name:     "option before any section",
			text:     "a = 1\n[s]\nb = 2\n",
			wantErrs: []string{"1::outside any [section]"},
		},
		{
			name:     "line without separator",
			text:     "[s]\njust words\n",
			wantErrs: []string{"2::cannot parse line"},
		},
		{
			name:     "indented line right after a header",
			text:     "[s]\n  a = 1\n",
			wantErrs: []string{"2::cannot parse line"},
		},
		{
			name:     "lone % in a URL",
			text:     "[s]\n\nconfig = http://x/a%2Fb\n",
			wantErrs: []string{"3:config:'%' must be followed by '%' or '('"},
		},
		{
			name:     "bad %( reference",
			text:     "[s]\na = %(b\n",
			wantErrs: []string{"2:a:bad interpolation variable reference"},
		},
		{
			name:     "reference to a missing key",
			text:     "[s]\na = x\nb = %(nope)s\n",
			wantErrs: []string{"3:b:%(nope)s refers to a key that is not set"},
		},
		{
			name:     "reference loop",
			text:     "[s]\na = %(b)s\nb = %(a)s\n",
			wantErrs: []string{"2:a:nested deeper than 10", "3:b:nested deeper than 10"},
		},
		{
			name:      "duplicate key: last wins, with a warning",
			text:      "[s]\na = 1\na = 2\n",
			wantWarns: []string{"3:a:duplicate key in [s]: this value replaces the one at line 2"},
		},
		{
			name:      "indented comment continues a value",
			text:      "[s]\na = 1\n  # not a comment\n",
			wantWarns: []string{"3:a:continues the value of \"a\""},
		},
		{
			name:      "junk after a header",
			text:      "[s] junk\n",
			wantWarns: []string{"1::text after the section header"},
		},
		{
			name:      "section started twice",
			text:      "[s]\n[t]\n[s]\n",
			wantWarns: []string{"3::already started at line 1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errs, warns := readSection(t, tt.text, "s")
			checkDiags(t, "error", errs, tt.wantErrs)
			checkDiags(t, "warning", warns, tt.wantWarns)
		})
	}
}

// checkDiags asserts that got holds exactly the findings of want ("line:key:substring").
func checkDiags(t *testing.T, kind string, got Diagnostics, want []string) {
	t.Helper()
	got = finish(got)
	if len(got) != len(want) {
		t.Errorf("got %d %ss, want %d:\n%v", len(got), kind, len(want), got)
		return
	}
	for i, w := range want {
		parts := strings.SplitN(w, ":", 3)
		d := got[i]
		if strconv.Itoa(d.Pos.Line) != parts[0] || d.Key != parts[1] || !strings.Contains(d.Msg, parts[2]) {
			t.Errorf("%s %d = %q, want line %s key %q containing %q", kind, i, d, parts[0], parts[1], parts[2])
		}
	}
}

func TestInterpolationSizeBound(t *testing.T) {
	// Each level doubles the value; ten levels of 64 refs would be 64^10 bytes.
	var b strings.Builder
	b.WriteString("[s]\n")
	names := "abcdefghijk"
	for i := 0; i < 10; i++ {
		b.WriteString(string(names[i]) + " = " + strings.Repeat("%("+string(names[i+1])+")s", 64) + "\n")
	}
	b.WriteString("k = xxxxxxxxxxxxxxxx\n")
	_, errs, _ := readSection(t, b.String(), "s")
	if len(errs) == 0 || !strings.Contains(errs.Error(), "too long after %-interpolation") {
		t.Fatalf("want a size error, got %v", errs)
	}
}

func TestInterpolationFileBudget(t *testing.T) {
	// 40 sections x 4 options x 512 KiB each exceeds the 16 MiB file budget.
	var b strings.Builder
	b.WriteString("[DEFAULT]\nk = " + strings.Repeat("x", 512) + "\n")
	b.WriteString("j = " + strings.Repeat("%(k)s", 1024) + "\n")
	for i := 0; i < 4; i++ {
		b.WriteString("o" + strconv.Itoa(i) + " = %(j)s\n")
	}
	for i := 0; i < 40; i++ {
		b.WriteString("[s" + strconv.Itoa(i) + "]\n")
	}
	var errs, warns Diagnostics
	f := readINI("t.conf", []byte(b.String()), &errs, &warns)
	for _, s := range f.sections {
		f.options(s, &errs)
	}
	if len(errs) == 0 || !strings.Contains(errs.Error(), "per file") {
		t.Fatalf("want a budget error, got %d errors", len(errs))
	}
}
