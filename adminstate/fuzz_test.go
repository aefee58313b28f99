package adminstate

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubal/kubal/source"
)

// FuzzOpen: any state file either fails to open with an error naming the path, or
// opens with every override within the edge rules, and survives a write and a re-open.
func FuzzOpen(f *testing.F) {
	for _, s := range []string{
		`{"version": 1, "pools": {"p": {"h": {"enabled": false, "weight": 3, "reason": "x", "actor": "a", "time": "2026-01-01T00:00:00Z"}}}, "audit": []}`,
		`{"version": 1, "pools": {"p": {"h": {"weight": 10000000000000}}}}`,
		`{"version": 1, "pools": {"p": {"h": {"weight": -1}}}}`,
		`{"version": 1, "pools": {}} {}`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "state.json")
		if err := os.WriteFile(path, data, 0o640); err != nil {
			t.Fatal(err)
		}
		st, err := Open(path, logger(nil))
		if err != nil {
			return
		}
		n := 0
		for _, p := range st.Pools() {
			for h, o := range st.Overrides(p) {
				n++
				if p == "" || h == "" {
					t.Fatalf("empty name in %q", data)
				}
				if o.Weight != nil && source.CheckWeight(int64(*o.Weight)) != nil {
					t.Fatalf("weight %d accepted from %q", *o.Weight, data)
				}
			}
		}
		if _, err := st.Set("fuzz", "mw1", Override{Weight: ptr(1)}, Audit{Actor: "fuzz", Action: "weight"}); err != nil {
			t.Fatal(err)
		}
		again, err := Open(path, logger(nil))
		if err != nil {
			t.Fatalf("re-open after a write: %v", err)
		}
		m := 0
		for _, p := range again.Pools() {
			m += len(again.Overrides(p))
		}
		if m != n+1 && m != n { // n when fuzz/mw1 already existed
			t.Fatalf("%d overrides after a write, had %d", m, n)
		}
	})
}
