package source

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// Every kind of bad server-list input found by the adversarial pass (issue 13): what
// the parser keeps, which lines it rejects, and when the whole read fails.
func TestParseListBadInput(t *testing.T) {
	good := `{'host': 'mw1', 'weight': 10, 'enabled': True}`
	long := "# " + strings.Repeat("x", MaxLineBytes) // a comment, but too long to read
	tests := []struct {
		name    string
		in      string
		json    bool
		want    map[string]int // host -> weight; nil: the read fails (legacy: ErrNoServers)
		bad     []int          // rejected line numbers
		badHost []string       // LineError.Host per rejected line
		errHas  string         // in the first rejection's message
	}{
		{name: "binary garbage", in: "\x00\x01\xfe\xff\x89PNG\r\n\x1a\n\x00\x00", want: nil, bad: []int{1, 2, 3}},
		{name: "0-byte file", in: "", want: nil},
		{name: "blank file", in: "\n \n\t\n", want: nil},
		{name: "truncated first line", in: `{'host': 'mw1', 'wei`, want: nil, bad: []int{1}},
		{name: "only comments is a deliberate empty list", in: "# no servers today\n", want: map[string]int{}},
		{name: "json empty object is a deliberate empty list", in: `{}`, json: true, want: map[string]int{}},
		{name: "json 0-byte", in: ``, json: true, want: nil},
		{name: "json every entry rejected", in: `{"a": {"weight": -1}}`, json: true, want: nil, bad: []int{1}},
		{name: "line over 1 MiB is skipped, the next read", in: long + "\n" + good + "\n",
			want: map[string]int{"mw1": 10}, bad: []int{1}, errHas: "longer than"},
		{name: "duplicate keeps the first", in: good + "\n" + `{'host': 'mw1', 'weight': 1, 'enabled': False}` + "\n",
			want: map[string]int{"mw1": 10}, bad: []int{2}, badHost: []string{"mw1"}, errHas: "first on line 1"},
		{name: "json duplicate keeps the first", in: "{\"a\": {\"weight\": 3},\n \"a\": {\"weight\": 4}}", json: true,
			want: map[string]int{"a": 3}, bad: []int{2}, badHost: []string{"a"}, errHas: "first on line 1"},
		{name: "ip literal with an invalid-UTF-8 zone", in: "{'host': '::ffff:127.0.0.1%\xff', 'weight': 1, 'enabled': True}\n" + good,
			want: map[string]int{"mw1": 10}, bad: []int{1}, badHost: []string{""}},
		{name: "json ip literal with an invalid-UTF-8 zone", in: "{\"::ffff:127.0.0.1%\xff\": {}, \"b\": {}}", json: true,
			want: map[string]int{"b": 10}, bad: []int{1}, badHost: []string{""}},
		{name: "json newline in a key", in: `{"a\nforged:\tenabled/up/pooled": {}, "b": {}}`, json: true,
			want: map[string]int{"b": 10}, bad: []int{1}, errHas: "control character"},
		{name: "host over 253 characters", in: "{'host': '" + strings.Repeat("a.", 127) + "', 'weight': 1, 'enabled': True}\n" + good,
			want: map[string]int{"mw1": 10}, bad: []int{1}, errHas: "longer than 253"},
		{name: "valid ip literals and zone", in: "{'host': 'fe80::1%eth0', 'weight': 1, 'enabled': True}\n{'host': '10.0.0.1', 'weight': 2, 'enabled': True}",
			want: map[string]int{"fe80::1%eth0": 1, "10.0.0.1": 2}},
		{name: "bad ipv4-looking name", in: "{'host': '10.0.0', 'weight': 1, 'enabled': True}\n" + good,
			want: map[string]int{"mw1": 10}, bad: []int{1}},
		{name: "legacy negative weight", in: good + "\n{'host': 'mw2', 'weight': -7, 'enabled': True}",
			want: map[string]int{"mw1": 10}, bad: []int{2}, badHost: []string{"mw2"}, errHas: "out of range 0..65535"},
		{name: "legacy weight 65536", in: good + "\n{'host': 'mw2', 'weight': 65536, 'enabled': True}",
			want: map[string]int{"mw1": 10}, bad: []int{2}, badHost: []string{"mw2"}},
		{name: "legacy weight 65535 and 0", in: "{'host': 'a', 'weight': 65535, 'enabled': True}\n{'host': 'b', 'weight': 0, 'enabled': True}",
			want: map[string]int{"a": 65535, "b": 0}},
		{name: "json negative weight with its line", in: "{\n \"a\": {\"weight\": 1},\n \"b\": {\"weight\": -7}\n}", json: true,
			want: map[string]int{"a": 1}, bad: []int{3}, badHost: []string{"b"}, errHas: "out of range"},
		{name: "json weight 1e13 as an integer", in: `{"a": {}, "b": {"weight": 10000000000000}}`, json: true,
			want: map[string]int{"a": 10}, bad: []int{1}, badHost: []string{"b"}},
		{name: "json weight beyond int64", in: `{"a": {}, "b": {"weight": 99999999999999999999999}}`, json: true,
			want: map[string]int{"a": 10}, bad: []int{1}, badHost: []string{"b"}},
		{name: "json value not an object", in: `{"a": {}, "b": [1]}`, json: true,
			want: map[string]int{"a": 10}, bad: []int{1}, badHost: []string{"b"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, bad, err := ParseList([]byte(tc.in), tc.json)
			if tc.want == nil {
				if err == nil || got != nil || !tc.json && !errors.Is(err, ErrNoServers) {
					t.Fatalf("got %v, err %v; want a failed read", got, err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(tc.want) {
					t.Errorf("got %v, want %v", got, tc.want)
				}
				for h, w := range tc.want {
					if s, ok := got[h]; !ok || s.Weight != w || s.Host != h {
						t.Errorf("%s: got %+v, want weight %d", h, s, w)
					}
				}
			}
			var lines []int
			for _, b := range bad {
				lines = append(lines, b.Line)
			}
			if len(lines) != len(tc.bad) {
				t.Fatalf("rejected lines %v, want %v (%v)", lines, tc.bad, bad)
			}
			for i := range lines {
				if lines[i] != tc.bad[i] {
					t.Errorf("rejected lines %v, want %v", lines, tc.bad)
				}
				if tc.badHost != nil && bad[i].Host != tc.badHost[i] {
					t.Errorf("line %d: Host %q, want %q", lines[i], bad[i].Host, tc.badHost[i])
				}
			}
			if tc.errHas != "" && (len(bad) == 0 || !strings.Contains(bad[0].Error(), tc.errHas)) {
				t.Errorf("rejections %v, want one saying %q", bad, tc.errHas)
			}
		})
	}
}

func TestCheckHost(t *testing.T) {
	tests := []struct {
		host string
		ok   bool
	}{
		{"mw1001.eqiad.wmnet", true},
		{"mw1001.eqiad.wmnet.", true},
		{"kube_node-1", true},
		{"10.64.0.1", true},
		{"2001:db8::1", true},
		{"fe80::1%eth0", true},
		{"::ffff:127.0.0.1", true},
		{strings.Repeat("a", 63) + ".b", true},
		{"", false},
		{"::ffff:127.0.0.1%\xff", false},
		{"fe80::1%eth 0", false},
		{"fe80::1%", false},
		{"a\nb", false},
		{"a\x1bb", false},
		{"a\xffb", false},
		{"a b", false},
		{"a..b", false},
		{"-a.b", false},
		{"a-.b", false},
		{strings.Repeat("a", 64) + ".b", false},
		{strings.Repeat("a.", 126) + "ab", false}, // 254 bytes
		{"10.0.0", false},
		{"10.0.0.256", false},
		{"mw1/../x", false},
		{"ünïcode.example", false},
	}
	for _, tc := range tests {
		err := CheckHost(tc.host)
		if (err == nil) != tc.ok {
			t.Errorf("CheckHost(%q) = %v, want ok=%v", tc.host, err, tc.ok)
		}
		if err != nil && bytes.ContainsAny([]byte(err.Error()), "\n\x1b") {
			t.Errorf("CheckHost(%q): the error carries a raw control character: %q", tc.host, err)
		}
	}
}
