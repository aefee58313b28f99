package adminstate

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func logger(buf *bytes.Buffer) *slog.Logger {
	if buf == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewJSONHandler(buf, nil))
}

func TestMissingFileIsEmpty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.json")
	f, err := Open(path, logger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Overrides("text_80"); len(got) != 0 {
		t.Fatalf("overrides %v", got)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("Open created the file: %v", err)
	}
	// The first Set creates the directory and the file.
	if _, err := f.Set("text_80", "cp1001", Override{Enabled: ptr(false)}, Audit{Actor: "alice", Action: "depool"}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("stat %v %v", st, err)
	}
}

func TestPersistAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	var logs bytes.Buffer
	f, err := Open(path, logger(&logs))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	old, err := f.Set("text_80", "cp1001", Override{Enabled: ptr(false)}, Audit{Actor: "alice", Action: "depool", Reason: "T1234", Force: true, Time: t0})
	if err != nil || !old.IsZero() {
		t.Fatalf("first set: %v %v", old, err)
	}
	if _, err := f.Set("text_80", "cp1002", Override{Weight: ptr(0)}, Audit{Actor: "bob", Action: "weight", Time: t0.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Set("upload_443", "cp2001", Override{Enabled: ptr(true), Weight: ptr(5)}, Audit{Actor: "cert:carol", Action: "pool"}); err != nil {
		t.Fatal(err)
	}
	old, err = f.Set("text_80", "cp1001", Override{Enabled: ptr(true)}, Audit{Actor: "bob", Action: "pool", Time: t0.Add(2 * time.Second)})
	if err != nil || old.Enabled == nil || *old.Enabled || old.Actor != "alice" || old.Reason != "T1234" || !old.Time.Equal(t0) {
		t.Fatalf("second set of cp1001: old %+v %v", old, err)
	}
	if !strings.Contains(logs.String(), `"actor":"alice"`) || !strings.Contains(logs.String(), `"old":"enabled=false","new":"enabled=true"`) {
		t.Fatalf("audit log: %s", logs.String())
	}

	g, err := Open(path, logger(nil))
	if err != nil {
		t.Fatal(err)
	}
	got := g.Overrides("text_80")
	if len(got) != 2 || *got["cp1001"].Enabled != true || got["cp1001"].Actor != "bob" || *got["cp1002"].Weight != 0 || got["cp1002"].Enabled != nil {
		t.Fatalf("after reopen: %+v", got)
	}
	if u := g.Overrides("upload_443")["cp2001"]; *u.Weight != 5 || u.Actor != "cert:carol" || u.Time.IsZero() {
		t.Fatalf("upload_443: %+v", u)
	}
	if p := g.Pools(); fmt.Sprint(p) != "[text_80 upload_443]" {
		t.Fatalf("pools %v", p)
	}
	trail := g.AuditTrail()
	if len(trail) != 4 || trail[0].Actor != "alice" || trail[0].Reason != "T1234" || !trail[0].Force || trail[0].Old != nil || *trail[0].New.Enabled ||
		trail[3].Old == nil || *trail[3].Old.Enabled || !*trail[3].New.Enabled {
		t.Fatalf("audit trail %+v", trail)
	}
	// Callers cannot change the store through returned values.
	*got["cp1001"].Enabled = false
	if !*g.Overrides("text_80")["cp1001"].Enabled {
		t.Fatal("Overrides returned shared pointers")
	}
}

func TestZeroOverrideRemoves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	f, _ := Open(path, logger(nil))
	if _, err := f.Set("p", "h", Override{Enabled: ptr(false)}, Audit{Actor: "a", Action: "depool"}); err != nil {
		t.Fatal(err)
	}
	old, err := f.Set("p", "h", Override{}, Audit{Actor: "a", Action: "clear"})
	if err != nil || old.Enabled == nil {
		t.Fatalf("%v %v", old, err)
	}
	g, err := Open(path, logger(nil))
	if err != nil || len(g.Overrides("p")) != 0 || len(g.Pools()) != 0 || len(g.AuditTrail()) != 2 {
		t.Fatalf("after clear: %v %v %v", g.Overrides("p"), g.Pools(), err)
	}
}

// TestCrashLeftovers: a crash between writing the temporary file and the rename
// leaves the old state file and a temporary file; Open reads the old one and removes
// the leftover.
func TestCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	f, _ := Open(path, logger(nil))
	if _, err := f.Set("p", "h", Override{Enabled: ptr(false)}, Audit{Actor: "a", Action: "depool"}); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(dir, "state.json.tmp-123456")
	if err := os.WriteFile(leftover, []byte(`{"version": 1, "pools": {"p": {"h": {"enabled": tr`), 0o640); err != nil {
		t.Fatal(err)
	}
	unrelated := filepath.Join(dir, "other.json.tmp-1")
	os.WriteFile(unrelated, nil, 0o640)
	var logs bytes.Buffer
	g, err := Open(path, logger(&logs))
	if err != nil {
		t.Fatal(err)
	}
	if o := g.Overrides("p")["h"]; o.Enabled == nil || *o.Enabled {
		t.Fatalf("override %+v", o)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatal("leftover temporary file not removed")
	}
	if _, err := os.Stat(unrelated); err != nil {
		t.Fatal("removed a file that is not ours")
	}
	if !strings.Contains(logs.String(), "interrupted write") {
		t.Fatalf("no log about the leftover: %s", logs.String())
	}
}

func TestCorruptFile(t *testing.T) {
	for _, tc := range []struct{ name, content, want string }{
		{"truncated", "{\"version\": 1,\n \"pools\": {\"p\": {\"h\": {\"enabled\": tr", "offset 51 (line 2, column 37)"},
		{"syntax", "{\"version\": 1,\n \"pools\": {\"p\": {\"h\": {\"enabled\": nope}}}}", "offset 51 (line 2, column 37)"},
		{"wrong type", "{\"version\": 1, \"pools\": {\"p\": {\"h\": {\"weight\": \"ten\"}}}}", "cannot unmarshal string"},
		{"unknown field", `{"version": 1, "pools": {}, "extra": 1}`, `unknown field "extra"`},
		{"trailing", `{"version": 1, "pools": {}} {}`, "offset 29 (line 1, column 30): invalid character '{' after top-level value"},
		{"version", `{"version": 2, "pools": {}}`, "version 2"},
		{"no version", `{"pools": {}}`, "version 0"},
		{"negative weight", `{"version": 1, "pools": {"p": {"h": {"weight": -1}}}}`, `pool "p" host "h": field "weight": weight -1 is out of range 0..65535`},
		{"weight above 65535", `{"version": 1, "pools": {"p": {"h": {"weight": 65536}}}}`, `pool "p" host "h": field "weight": weight 65536 is out of range`},
		{"weight 1e13", `{"version": 1, "pools": {"p": {"h": {"weight": 10000000000000}}}}`, `pool "p" host "h": field "weight": weight 10000000000000 is out of range`},
		{"weight 1e13 as a float", `{"version": 1, "pools": {"p": {"h": {"weight": 1e13}}}}`, `cannot unmarshal number 1e13`},
		{"empty host", `{"version": 1, "pools": {"p": {"": {}}}}`, "empty host name"},
		{"empty", ``, "offset 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			os.WriteFile(path, []byte(tc.content), 0o640)
			_, err := Open(path, logger(nil))
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want the path and %q", err, tc.want)
			}
			// The corrupt file is left alone for the operator.
			if b, _ := os.ReadFile(path); string(b) != tc.content {
				t.Fatal("corrupt file modified")
			}
		})
	}
}

func TestFailedWriteChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "state.json")
	f, _ := Open(path, logger(nil))
	if _, err := f.Set("p", "h", Override{Enabled: ptr(false)}, Audit{Actor: "a", Action: "depool"}); err != nil {
		t.Fatal(err)
	}
	// A regular file where the directory should be makes every write fail, even as root.
	os.RemoveAll(dir)
	os.WriteFile(dir, nil, 0o640)
	if _, err := f.Set("p", "h", Override{Enabled: ptr(true)}, Audit{Actor: "a", Action: "pool"}); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("write into a missing directory: %v", err)
	}
	if o := f.Overrides("p")["h"]; *o.Enabled || len(f.AuditTrail()) != 1 {
		t.Fatalf("memory changed after a failed write: %+v", o)
	}
	for _, w := range []int{-1, 65536, 1e13} {
		if _, err := f.Set("p", "h", Override{Weight: ptr(w)}, Audit{}); err == nil || !strings.Contains(err.Error(), "out of range 0..65535") {
			t.Fatalf("weight %d: %v", w, err)
		}
	}
	for _, h := range []string{"a\nb", "::ffff:127.0.0.1%\xff", strings.Repeat("a.", 127)} {
		if _, err := f.Set("p", h, Override{Weight: ptr(1)}, Audit{}); err == nil {
			t.Fatalf("host %q accepted", h)
		}
	}
}

func TestConcurrentSets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	f, _ := Open(path, logger(nil))
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.Set(fmt.Sprintf("p%d", i%3), fmt.Sprintf("h%d", i), Override{Weight: ptr(i)}, Audit{Actor: "a", Action: "weight"}); err != nil {
				t.Error(err)
			}
			f.Overrides("p0")
		}()
	}
	wg.Wait()
	g, err := Open(path, logger(nil))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range g.Pools() {
		for h, o := range g.Overrides(p) {
			if fmt.Sprintf("h%d", *o.Weight) != h {
				t.Errorf("%s/%s weight %d", p, h, *o.Weight)
			}
			n++
		}
	}
	if n != 20 || len(g.AuditTrail()) != 20 {
		t.Fatalf("%d overrides, %d audit entries after 20 concurrent sets", n, len(g.AuditTrail()))
	}
	if left, _ := filepath.Glob(path + ".tmp-*"); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestAuditBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	f, _ := Open(path, logger(nil))
	f.auditLimit = 20 // AuditLimit fsync'd writes take too long for a unit test
	for i := 0; i < f.auditLimit+5; i++ {
		if _, err := f.Set("p", "h", Override{Weight: ptr(i)}, Audit{Actor: "a", Action: "weight"}); err != nil {
			t.Fatal(err)
		}
	}
	g, _ := Open(path, logger(nil))
	trail := g.AuditTrail()
	if len(trail) != 20 || *trail[0].New.Weight != 5 || *trail[len(trail)-1].New.Weight != 24 {
		t.Fatalf("trail of %d, first %d", len(trail), *trail[0].New.Weight)
	}
}
