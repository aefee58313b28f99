package conftool

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kubal/kubal/source"
)

func TestGate(t *testing.T) {
	inner := source.Set{
		"a": {Host: "a", Weight: 1, Enabled: true},
		"b": {Host: "b", Weight: 1, Enabled: false, Reason: "node NotReady"},
	}
	e := func(pooled string, weight int) entry {
		var x entry
		if pooled != "" {
			x.pooled = &pooled
		}
		if weight >= 0 {
			x.weight = &weight
		}
		return x
	}
	tests := []struct {
		name string
		keys map[string]entry
		want source.Set
	}{
		{"no keys: as the source says", nil, inner},
		{"pooled=no disables", map[string]entry{"a": e("no", -1)},
			source.Set{"a": {Host: "a", Weight: 1, Reason: "conftool: pooled=no"}, "b": inner["b"]}},
		{"pooled=inactive removes", map[string]entry{"a": e("inactive", 5)}, source.Set{"b": inner["b"]}},
		{"pooled=yes does not enable what the source disabled", map[string]entry{"b": e("yes", -1)}, inner},
		{"weight overrides", map[string]entry{"a": e("", 7), "b": e("yes", 0)},
			source.Set{"a": {Host: "a", Weight: 7, Enabled: true}, "b": {Host: "b", Weight: 0, Reason: "node NotReady"}}},
		{"keys of servers the source lacks add nothing", map[string]entry{"zz": e("yes", 3)}, inner},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := gate(inner, tt.keys); !maps.Equal(got, tt.want) {
				t.Errorf("gate = %v, want %v", got, tt.want)
			}
		})
	}
}

// A real file:// source gated by real etcd keys: depool, inactive, weight and key
// deletion apply; an inner change passes through the gate; an etcd outage keeps the
// last keys gating and is reported.
func TestOverlayFileSource(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "servers.json")
	write := func(s string) {
		tmp := list + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, list); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"a": {"enabled": true, "weight": 1}, "b": {"enabled": true, "weight": 1}, "c": {"enabled": true, "weight": 1}}`)

	m := startEtcd(t)
	cli := newClient(t, m)
	put(t, cli, testPrefix+"a", `{"pooled": "no", "weight": 10}`)
	put(t, cli, testPrefix+"b", `{"pooled": "inactive"}`)
	inner := &source.File{Path: list, Log: testLog(t), Interval: 20 * time.Millisecond}
	ov := NewOverlay(inner, newClient(t, m), testPrefix, testLog(t), nil).(*Overlay)
	fastWatcher(ov.w)
	rec := newRecorder()
	run(t, ov, rec)

	first := rec.waitSet(t, 5*time.Second, "a gated, b removed, c as listed", func(s source.Set) bool {
		return maps.Equal(s, source.Set{
			"a": {Host: "a", Weight: 10, Enabled: false, Reason: "conftool: pooled=no"},
			"c": {Host: "c", Weight: 1, Enabled: true},
		})
	})
	if sets, _, _ := rec.snapshot(); len(sets) != 1 {
		t.Errorf("the first update must already be gated; got %v before %v", sets[:len(sets)-1], first)
	}

	del(t, cli, testPrefix+"a")
	rec.waitSet(t, 5*time.Second, "a back as the file says", func(s source.Set) bool { return s["a"] == source.Server{Host: "a", Weight: 1, Enabled: true} })
	write(`{"a": {"enabled": true, "weight": 1}, "b": {"enabled": true, "weight": 1}, "c": {"enabled": false, "weight": 2}, "d": {"enabled": true, "weight": 3}}`)
	rec.waitSet(t, 5*time.Second, "the file's change", func(s source.Set) bool {
		return maps.Equal(s, source.Set{
			"a": {Host: "a", Weight: 1, Enabled: true},
			"c": {Host: "c", Weight: 2, Enabled: false},
			"d": {Host: "d", Weight: 3, Enabled: true},
		})
	})
	put(t, cli, testPrefix+"d", `{"pooled": "no"}`)
	last := rec.waitSet(t, 5*time.Second, "d depooled", func(s source.Set) bool { return !s["d"].Enabled })

	nSets := len(must(rec.snapshot()))
	m.stop()
	rec.waitErr(t, 5*time.Second, "the etcd outage", func(err error) bool { return err != nil })
	write(`{"a": {"enabled": true, "weight": 1}, "d": {"enabled": true, "weight": 3}}`)
	rec.waitSet(t, 5*time.Second, "the file's change still gated by the last keys", func(s source.Set) bool {
		return maps.Equal(s, source.Set{"a": last["a"], "d": last["d"]})
	})
	if sets := must(rec.snapshot()); len(sets) != nSets+1 {
		t.Errorf("want exactly one update (the file's) during the outage, got %v", sets[nSets:])
	}
}

// scripted is a fake inner source driven by the test (for the failure logic only).
type scripted struct{ steps chan func(source.Events) }

func (s *scripted) Run(ctx context.Context, ev source.Events) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-s.steps:
			f(ev)
		}
	}
}

func TestOverlayReportsInnerFailure(t *testing.T) {
	m := startEtcd(t)
	inner := &scripted{steps: make(chan func(source.Events), 4)}
	ov := NewOverlay(inner, newClient(t, m), testPrefix, testLog(t), nil)
	rec := newRecorder()
	run(t, ov, rec)
	inner.steps <- func(ev source.Events) { ev.Update(source.Set{"a": {Host: "a", Weight: 1, Enabled: true}}) }
	rec.waitSet(t, 5*time.Second, "a", func(s source.Set) bool { return len(s) == 1 })
	boom := errors.New("kube-apiserver unreachable")
	inner.steps <- func(ev source.Events) { ev.Failed(boom) }
	rec.waitErr(t, 5*time.Second, "the inner error", func(err error) bool { return errors.Is(err, boom) })
	inner.steps <- func(ev source.Events) { ev.Failed(nil) }
	rec.waitErr(t, 5*time.Second, "recovery", func(err error) bool { return err == nil })
}

// etcd unreachable at start: the overlay holds the source's servers for the grace
// period (so admin-depooled servers are not pooled blindly), then passes them ungated
// and reports the etcd failure.
func TestOverlayGraceWithoutEtcd(t *testing.T) {
	dead := newMembers(t, 1)[0] // never started: nothing listens there
	inner := &scripted{steps: make(chan func(source.Events), 1)}
	ov := NewOverlay(inner, newClient(t, dead), testPrefix, testLog(t), nil).(*Overlay)
	fastWatcher(ov.w)
	ov.grace = 700 * time.Millisecond
	rec := newRecorder()
	start := time.Now()
	run(t, ov, rec)
	inner.steps <- func(ev source.Events) { ev.Update(source.Set{"a": {Host: "a", Weight: 1, Enabled: true}}) }
	rec.waitErr(t, 5*time.Second, "the etcd failure", func(err error) bool { return err != nil })
	rec.waitSet(t, 5*time.Second, "a, ungated", func(s source.Set) bool { return len(s) == 1 })
	if d := time.Since(start); d < ov.grace {
		t.Errorf("servers passed ungated after %v, before the %v grace", d, ov.grace)
	}
}

// keyTable: a malformed value keeps the host's previous key (also across a re-read);
// a delete removes it.
func TestKeyTableMalformed(t *testing.T) {
	no, five := "no", 5
	kt := &keyTable{keys: map[string]entry{}, box: newMailbox[map[string]entry](), errs: newMailbox[optErr]()}
	kt.reset([]kv{{host: "a", e: entry{pooled: &no}}, {host: "b", e: entry{weight: &five}}})
	kt.apply([]kv{{host: "a", malformed: true}})
	kt.reset([]kv{{host: "a", malformed: true}, {host: "b", malformed: true}, {host: "c", malformed: true}})
	got, ok := kt.box.take()
	if !ok || len(got) != 2 || *got["a"].pooled != "no" || *got["b"].weight != 5 {
		t.Fatalf("keys after malformed values = %v, want a and b as before", got)
	}
	kt.apply([]kv{{host: "a", deleted: true}})
	if got, _ := kt.box.take(); len(got) != 1 {
		t.Fatalf("keys after delete = %v, want only b", got)
	}
}
