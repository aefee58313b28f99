package main

import "testing"

func TestMatch(t *testing.T) {
	tests := []struct {
		name      string
		want, got []string
		ok        bool
	}{
		{"exact", []string{"a", "b"}, []string{"a", "b"}, true},
		{"differs", []string{"a", "b"}, []string{"a", "c"}, false},
		{"missing line", []string{"a", "b"}, []string{"a"}, false},
		{"extra line", []string{"a"}, []string{"a", "b"}, false},
		{"in-line wildcard", []string{"still disabled (...): pool"}, []string{"still disabled (x y z): pool"}, true},
		{"in-line wildcard keeps the ends", []string{"a...b"}, []string{"a x c"}, false},
		{"two wildcards", []string{"a...b...c"}, []string{"a1b2c"}, true},
		{"line wildcard none", []string{"a", "...", "b"}, []string{"a", "b"}, true},
		{"line wildcard many", []string{"a", "...", "b"}, []string{"a", "x", "y", "b"}, true},
		{"line wildcard at end", []string{"a", "..."}, []string{"a", "x"}, true},
		{"no output wanted", nil, nil, true},
		{"no output wanted, some printed", nil, []string{"x"}, false},
	}
	for _, tc := range tests {
		if got := match(tc.want, tc.got); got != tc.ok {
			t.Errorf("%s: match = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestParse(t *testing.T) {
	doc := "text\n<!-- runnable: touch x -->\n   ```\n   $ echo a\n   a\n   $ true\n   ```\n```\n$ not run\n```\n"
	bs, err := parse("d.md", doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].setup != "touch x" || len(bs[0].cmds) != 2 || bs[0].cmds[0].text != "echo a" ||
		len(bs[0].cmds[0].want) != 1 || bs[0].cmds[0].want[0] != "a" || bs[0].cmds[1].want != nil || bs[0].cmds[0].line != 4 {
		t.Fatalf("%+v", bs)
	}
	if _, err := parse("d.md", "<!-- runnable -->\ntext\n"); err == nil {
		t.Fatal("a marker without a block must be an error")
	}
}
