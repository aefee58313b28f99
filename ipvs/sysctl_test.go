package ipvs

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

var aaSysctls = []Sysctl{
	{Name: "net.ipv4.vs.sloppy_tcp", Value: "1", Why: "test"},
	{Name: "net.ipv4.vs.schedule_icmp", Value: "1", Why: "test"},
}

// stuckSysctls accepts writes but keeps one sysctl at 0, as a read-only or
// namespaced-away setting would; another read fails.
type stuckSysctls struct {
	*Fake
	readErr error
}

func (s stuckSysctls) Sysctl(name string) (string, error) {
	if strings.HasSuffix(name, "schedule_icmp") && s.readErr != nil {
		return "", s.readErr
	}
	if strings.HasSuffix(name, "sloppy_tcp") {
		return "0", nil
	}
	return s.Fake.Sysctl(name)
}

// noSysctls is a Backend without SysctlBackend.
type noSysctls struct{ Backend }

func TestReconcilerKeepsSysctls(t *testing.T) {
	tests := []struct {
		name   string
		b      func(f *Fake) Backend
		alerts []string
	}{
		{name: "set and verified", b: func(f *Fake) Backend { return f }},
		{name: "set but not in force, and unreadable", b: func(f *Fake) Backend { return stuckSysctls{f, errors.New("permission denied")} },
			alerts: []string{"sysctl net.ipv4.vs.sloppy_tcp is 0, should be 1 (test): set but not in force",
				"sysctl net.ipv4.vs.schedule_icmp should be 1 (test): permission denied"}},
		{name: "backend without sysctls", b: func(f *Fake) Backend { return noSysctls{f} },
			alerts: []string{"cannot set sysctls; set them by hand: net.ipv4.vs.sloppy_tcp=1 net.ipv4.vs.schedule_icmp=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFake()
			r, _, _ := newTestReconciler(t, tt.b(f))
			r.SetSysctls(aaSysctls)
			if err := r.Reconcile(context.Background(), false); err != nil {
				t.Fatal(err)
			}
			got := r.Alerts()
			if len(got) != len(tt.alerts) {
				t.Fatalf("alerts %q, want %d containing %q", got, len(tt.alerts), tt.alerts)
			}
			for i, want := range tt.alerts {
				if !strings.HasPrefix(got[i], "IPVS kernel setting: ") || !strings.Contains(got[i], want) {
					t.Errorf("alert %d = %q, want it to contain %q", i, got[i], want)
				}
			}
			if tt.alerts == nil {
				for _, s := range aaSysctls {
					if v, _ := f.Sysctl(s.Name); v != "1" {
						t.Errorf("%s = %s after a pass, want 1", s.Name, v)
					}
				}
			}
		})
	}
}

// A setting changed behind kubal's back is repaired at the next full pass (resync).
func TestReconcilerRepairsSysctlsOnResync(t *testing.T) {
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	r.SetSysctls(aaSysctls)
	if err := r.Reconcile(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	_ = f.SetSysctl("net.ipv4.vs.sloppy_tcp", "0")
	if err := r.Reconcile(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Sysctl("net.ipv4.vs.sloppy_tcp"); v != "0" {
		t.Fatalf("an incremental pass touched the sysctl (%s): only resyncs and SetSysctls do", v)
	}
	if err := r.Reconcile(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Sysctl("net.ipv4.vs.sloppy_tcp"); v != "1" {
		t.Errorf("sloppy_tcp = %s after a resync, want 1 (repaired)", v)
	}
}

func TestProcSys(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "net/ipv4/vs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "net/ipv4/vs/sloppy_tcp"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := ProcSys(dir)
	if v, err := p.Sysctl("net.ipv4.vs.sloppy_tcp"); err != nil || v != "0" {
		t.Fatalf("read: %q %v", v, err)
	}
	if err := p.SetSysctl("net.ipv4.vs.sloppy_tcp", "1"); err != nil {
		t.Fatal(err)
	}
	if v, err := p.Sysctl("net.ipv4.vs.sloppy_tcp"); err != nil || v != "1" {
		t.Fatalf("after set: %q %v", v, err)
	}
	if _, err := p.Sysctl("net.ipv4.vs.missing"); err == nil || !strings.Contains(err.Error(), "is the ip_vs module loaded") {
		t.Errorf("missing sysctl: %v", err)
	}
	for _, bad := range []string{"net..vs", "net.ipv4/../../etc", "..", ""} {
		if _, err := p.Sysctl(bad); err == nil || !strings.Contains(err.Error(), "not a sysctl name") {
			t.Errorf("Sysctl(%q): %v, want 'not a sysctl name'", bad, err)
		}
	}
}

// countLevels counts log records by level and message.
type countLevels struct {
	mu sync.Mutex
	n  map[string]int // "LEVEL message"
}

func (c *countLevels) Enabled(context.Context, slog.Level) bool { return true }
func (c *countLevels) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[r.Level.String()+" "+r.Message]++
	return nil
}
func (c *countLevels) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *countLevels) WithGroup(string) slog.Handler      { return c }

// A setting kubal cannot write (a read-only /proc/sys under a sandbox, as the
// systemd rig showed without ReadWritePaths) is in /alerts and retried at every
// resync, but logged at INFO/WARN once, not every 5 s; a new error is logged again.
func TestSysctlFailureLoggedOnce(t *testing.T) {
	f := NewFake()
	b := &readOnlySysctls{Fake: f, err: errors.New("read-only file system")}
	logs := &countLevels{n: map[string]int{}}
	r := NewReconciler(b, slog.New(logs), prometheus.NewRegistry())
	r.SetSysctls(aaSysctls[:1])
	for range 3 {
		if err := r.Reconcile(context.Background(), true); err != nil {
			t.Fatal(err)
		}
	}
	if got := logs.n["WARN ipvs: kernel setting not in force; retrying at the next resync"]; got != 1 {
		t.Errorf("WARN logged %d times over 3 resyncs, want 1: %v", got, logs.n)
	}
	if got := logs.n["INFO ipvs: setting a kernel setting"]; got != 1 {
		t.Errorf("INFO 'setting' logged %d times over 3 resyncs, want 1: %v", got, logs.n)
	}
	if len(r.Alerts()) != 1 {
		t.Errorf("alerts %q, want the setting", r.Alerts())
	}
	b.err = errors.New("permission denied")
	if err := r.Reconcile(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if got := logs.n["WARN ipvs: kernel setting not in force; retrying at the next resync"]; got != 2 {
		t.Errorf("a new error: WARN logged %d times in all, want 2", got)
	}
	b.err = nil
	if err := r.Reconcile(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if len(r.Alerts()) != 0 {
		t.Errorf("alerts %q after the write worked", r.Alerts())
	}
}

// readOnlySysctls fails every write with err (nil: writes work).
type readOnlySysctls struct {
	*Fake
	err error
}

func (s *readOnlySysctls) SetSysctl(name, value string) error {
	if s.err != nil {
		return s.err
	}
	return s.Fake.SetSysctl(name, value)
}
