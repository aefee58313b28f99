package service

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/source"
)

// fakeWatcher records the monitors watched per host and lets the test report.
type fakeWatcher struct {
	mu      sync.Mutex
	reports map[string]func(monitor.Result) // "host|monitor"
	names   []string
}

func (f *fakeWatcher) Watch(_ *config.Service, name string, t monitor.Target, report func(monitor.Result)) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports[t.Host+"|"+name] = report
	f.names = append(f.names, name)
	return func() {}, nil
}

func (f *fakeWatcher) report(t *testing.T, host, name string, r monitor.Result) {
	t.Helper()
	f.mu.Lock()
	rep := f.reports[host+"|"+name]
	f.mu.Unlock()
	if rep == nil {
		t.Fatalf("%s not watched on %s", name, host)
	}
	rep(r)
}

// The service watches the forwarded probe next to the direct one, and a forwarded
// failure while the direct probe passes carries monitor.ForwardedReason - re-judged
// when the direct result changes. Both results are in the snapshot (/v1 monitors).
func TestForwardedResultPassesThrough(t *testing.T) {
	src := chanSource{sets: make(chan source.Set, 8)}
	st := &memStore{in: admin.Intent{Revision: 1, Loaded: true}}
	w := &fakeWatcher{reports: map[string]func(monitor.Result){}}
	cfg := &config.Service{Name: "web_80", DepoolThreshold: 0.5, Protocol: "tcp", Port: 80,
		Monitors: []string{"TCP"}, Options: config.Options{"tcp.path": {Raw: "forwarded"}}}
	s := New(cfg, Deps{Source: src, Store: st, Monitors: w, Log: slog.New(slog.DiscardHandler),
		Resolve: func(context.Context, string, bool) (netip.Addr, error) { return netip.Addr{}, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	src.sets <- nodes("")
	waitState(t, s, "watched", func(*State) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.reports) == 8
	})
	w.mu.Lock()
	if !slices.Contains(w.names, "TCP") || !slices.Contains(w.names, "TCP/forwarded") {
		t.Errorf("watched %v, want TCP and TCP/forwarded", w.names)
	}
	w.mu.Unlock()
	for _, h := range []string{"n1", "n2", "n3", "n4"} {
		w.report(t, h, "TCP", monitor.Result{Up: true})
		w.report(t, h, "TCP/forwarded", monitor.Result{Up: true})
	}
	waitState(t, s, "all pooled", func(st *State) bool { return pooled(st) == 4 })

	server := func(st *State) pool.ServerState {
		for _, sv := range st.Snapshot.Servers {
			if sv.Host == "n2" {
				return sv
			}
		}
		return pool.ServerState{}
	}
	w.report(t, "n2", "TCP/forwarded", monitor.Result{Reason: "timed out"})
	got := waitState(t, s, "n2 depooled", func(st *State) bool { return pooled(st) == 3 })
	sv := server(got)
	if r := sv.Monitors["TCP/forwarded"]; r.Up || r.Reason != monitor.ForwardedReason+": timed out" {
		t.Errorf("forwarded result %+v, want down with %q", r, monitor.ForwardedReason)
	}
	if !sv.Monitors["TCP"].Up {
		t.Errorf("direct result %+v, want up (both visible)", sv.Monitors["TCP"])
	}
	// The direct probe fails too: the forwarded one is no longer "only the VIP".
	w.report(t, "n2", "TCP", monitor.Result{Reason: "refused"})
	got = waitState(t, s, "re-judged", func(st *State) bool { return !server(st).Monitors["TCP"].Up })
	if r := server(got).Monitors["TCP/forwarded"]; r.Up || strings.Contains(r.Reason, monitor.ForwardedReason) {
		t.Errorf("with the direct probe down the forwarded result is %+v, want its own reason", r)
	}
}
