package pool

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const (
	pf   = "ProxyFetch"
	idle = "IdleConnection"
)

// PyBal testAssignServers: only pooled servers are in the desired state; a disabled
// server and a depooled down server are out, a down server kept by the threshold is in.
func TestAssignServers(t *testing.T) {
	h := newHarness(t, 0.3, pf)
	h.update(sc("cp1045"), sc("cp1046"), sc("cp1047"))
	h.wantPooled("cp1045", "cp1046", "cp1047")

	h.update(disabled(sc("cp1045"), "depooled by admin"), sc("cp1046"), sc("cp1047"))
	h.down("cp1046", pf, "503 Service Unavailable") // 1 >= 3*0.3: depooled
	h.down("cp1047", pf, "503 Service Unavailable") // 0 < 0.9: stays pooled
	h.wantPooled("cp1047")
	h.wantPooledDown("cp1047")
	h.wantStatus("cp1045", "disabled/up/not pooled")
	h.wantStatus("cp1046", "enabled/down/not pooled")
	h.wantStatus("cp1047", "enabled/down/pooled")
}

// PyBal assignServers effects at start-up (§4.2): new servers are pooled before any
// health check (optimistic); disabled ones are up but not pooled; unresolved ones wait.
func TestNewServersOptimistic(t *testing.T) {
	h := newHarness(t, 0.5, pf, idle)
	h.update(sc("a"), disabled(sc("b"), ""), unresolved(sc("c")))
	h.wantStatus("a", "enabled/up/pooled")
	h.wantStatus("b", "disabled/up/not pooled")
	// PyBal: no monitor instances before resolution, and calcPartialStatus of no
	// monitors is True (server.py), so an unresolved server reads "partially up".
	h.wantStatus("c", "enabled/partially up/not pooled")
	if s := h.state("c"); s.Ready || s.Why != "resolving" {
		t.Errorf("c: ready %v why %q, want not ready, resolving", s.Ready, s.Why)
	}
	h.wantLogged(slog.LevelInfo, "Added 3 server(s): 2 enabled server(s) and 1 disabled server(s)")
	h.wantLogged(slog.LevelDebug, "New enabled server a, weight 10")
	if got := (*h.logs)[0].System; got != "text_80" {
		t.Errorf("log system %q, want the service name", got)
	}

	h.c.Resolved("c", addr("c"))
	h.check()
	h.wantStatus("c", "enabled/up/pooled")
	if s := h.state("c"); s.Addr != addr("c") || !s.Ready || s.Why != "" {
		t.Errorf("c after Resolved: %+v", s)
	}
	h.wantPooled("a", "c")
}

// PyBal testRefreshPreexistingServer and testRefreshPreexistingServerDownButPooled.
func TestRefreshPreexistingServer(t *testing.T) {
	tests := []struct {
		name   string
		run    func(h *harness)
		host   string
		status string
	}{{
		name: "disabling a pooled up server depools it, bypassing the threshold",
		run: func(h *harness) {
			h.update(sc("cp1046"), sc("cp1047"))
			h.up("cp1046", pf)
			h.up("cp1047", pf)
			h.update(disabled(sc("cp1046"), "pooled=no"), disabled(sc("cp1047"), "pooled=no"))
		},
		host: "cp1046", status: "disabled/up/not pooled",
	}, {
		name: "a disabled server stays unpooled on a refresh",
		run: func(h *harness) {
			h.update(disabled(sc("cp1046"), ""), sc("cp1047"))
			h.up("cp1046", pf)
			h.update(disabled(sc("cp1046"), ""), sc("cp1047"))
		},
		host: "cp1046", status: "disabled/up/not pooled",
	}, {
		name: "a down but pooled server stays pooled while enabled",
		run: func(h *harness) {
			h.update(sc("cp1046"), sc("cp1047"))
			h.down("cp1046", pf, "timeout") // depooled: 1 >= 1
			h.down("cp1047", pf, "timeout") // kept: 0 < 1
			h.wantPooledDown("cp1047")
			h.update(sc("cp1046"), weight(sc("cp1047"), 20))
			h.wantPooledDown("cp1047")
		},
		host: "cp1047", status: "enabled/down/pooled",
	}, {
		name: "a down depooled server stays depooled on a refresh",
		run: func(h *harness) {
			h.update(sc("cp1046"), sc("cp1047"))
			h.down("cp1046", pf, "timeout")
			h.update(sc("cp1046"), sc("cp1047"))
		},
		host: "cp1046", status: "enabled/down/not pooled",
	}, {
		name: "disabling a pooled-down server removes it from the pooled-down set",
		run: func(h *harness) {
			h.update(sc("cp1046"), sc("cp1047"))
			h.down("cp1046", pf, "timeout")
			h.down("cp1047", pf, "timeout")
			h.update(sc("cp1046"), disabled(sc("cp1047"), ""))
			// The threshold is then re-ensured: down cp1046 is forced back in.
			h.wantPooledDown("cp1046")
		},
		host: "cp1047", status: "disabled/down/not pooled",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 0.5, pf)
			tt.run(h)
			h.wantStatus(tt.host, tt.status)
		})
	}
}

// PyBal testResultDown and testResultUp, plus ANDed monitors.
func TestResults(t *testing.T) {
	type step struct {
		host, monitor string
		up            bool
		status        string // host's status after the step
	}
	tests := []struct {
		name     string
		monitors []string
		steps    []step
	}{{
		name:     "down result of a pooled server depools it",
		monitors: []string{pf},
		steps: []step{
			{"cp1045", pf, false, "enabled/down/not pooled"},
		},
	}, {
		name:     "down result of a not pooled server only marks it down",
		monitors: []string{pf},
		steps: []step{
			{"cp1045", pf, false, "enabled/down/not pooled"},
			{"cp1045", pf, false, "enabled/down/not pooled"},
		},
	}, {
		name:     "up result while another monitor is down changes nothing",
		monitors: []string{pf, idle},
		steps: []step{
			{"cp1045", pf, false, "enabled/down/not pooled"},
			{"cp1045", idle, true, "enabled/partially up/not pooled"},
			{"cp1045", pf, true, "enabled/up/pooled"},
			{"cp1045", pf, true, "enabled/up/pooled"}, // already up: nothing
		},
	}, {
		name:     "one monitor down is enough",
		monitors: []string{pf, idle},
		steps: []step{
			{"cp1045", pf, true, "enabled/up/pooled"},
			{"cp1045", idle, true, "enabled/up/pooled"},
			{"cp1045", idle, false, "enabled/partially up/not pooled"},
			{"cp1045", idle, true, "enabled/up/pooled"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 0.5, tt.monitors...)
			h.update(sc("cp1045"), sc("cp1046"))
			for i, st := range tt.steps {
				if st.up {
					h.up(st.host, st.monitor)
				} else {
					h.down(st.host, st.monitor, "fake down result")
				}
				if got := h.status(st.host); got != st.status {
					t.Fatalf("step %d: %s status %q, want %q", i, st.host, got, st.status)
				}
			}
		})
	}
}

func TestResultDownLogsAndWhy(t *testing.T) {
	h := newHarness(t, 0.5, pf, idle)
	h.update(sc("cp1001"), sc("cp1002"))
	h.down("cp1001", pf, "503 Service Unavailable")
	h.wantLogged(slog.LevelError, "Monitoring instance ProxyFetch reports server cp1001 (enabled/up/pooled) down: 503 Service Unavailable")
	if s := h.state("cp1001"); s.Why != "ProxyFetch: 503 Service Unavailable" {
		t.Errorf("why %q", s.Why)
	}
	h.down("cp1002", idle, "")
	h.wantLogged(slog.LevelError, "Monitoring instance IdleConnection reports server cp1002 (enabled/up/pooled) down: (reason unknown)")
	h.wantLogged(slog.LevelError, "Could not depool server cp1002 because of too many down!")
	if s := h.state("cp1002"); s.Why != "IdleConnection: (reason unknown); "+WhyPooledDown {
		t.Errorf("why %q", s.Why)
	}
	if s := h.state("cp1002"); s.Monitors[idle] != (MonitorResult{Up: false}) || len(s.Monitors) != 1 {
		t.Errorf("monitors %v", s.Monitors)
	}
	h.up("cp1001", pf)
	h.up("cp1001", idle)
	h.wantLogged(slog.LevelInfo, "Server cp1001 (enabled/partially up/not pooled) is up")
	h.wantLogged(slog.LevelInfo, "Repooling server cp1001")
}

// Disabled servers follow their monitors (up/down) but are never pooled.
func TestResultUpDisabledNotPooled(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(disabled(sc("cp1045"), "pooled=no"), sc("cp1046"))
	h.down("cp1045", pf, "refused")
	h.wantStatus("cp1045", "disabled/down/not pooled")
	h.up("cp1045", pf)
	h.wantStatus("cp1045", "disabled/up/not pooled")
	if s := h.state("cp1045"); s.Why != "pooled=no" {
		t.Errorf("why %q, want the disabled reason", s.Why)
	}
}

// PyBal testResultUpFirstCheck: when the last monitor of a pooled up server delivers its
// first result, repool runs and depools pooled-down servers the threshold now allows.
func TestFirstCheckRepool(t *testing.T) {
	h := newHarness(t, 0.5, pf, idle)
	h.update(sc("a"), sc("b"), sc("c")) // need 1.5
	h.down("a", pf, "x")                // 2 >= 1.5: depooled
	h.down("b", pf, "x")                // 1 < 1.5: pooled down
	h.wantPooledDown("b")
	h.update(sc("b"), sc("c")) // need 1: b could go now, but nothing repools yet
	h.wantPooledDown("b")
	h.wantStatus("b", "enabled/down/pooled")

	h.up("c", pf) // c's first ProxyFetch result: c already up, IdleConnection pending
	h.wantPooledDown("b")
	h.up("c", idle) // c's first checks complete: repool(c) drains b
	h.wantPooledDown()
	h.wantPooled("c")
	h.wantStatus("b", "enabled/down/not pooled")
	h.wantLogged(slog.LevelInfo, "Server c (enabled/up/pooled) is up")

	*h.logs = nil
	h.up("c", idle) // a repeated result, not a first check: no repool
	h.wantNotLogged("is up")
	h.wantNotLogged("previously pooled")
}

// PyBal testDepool + test2serversCanDepool.
func TestDepoolTwoServers(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(sc("cp1045"), sc("cp1046"))
	if !h.c.Snapshot().CanDepool {
		t.Fatal("2/2 up: can depool")
	}
	h.down("cp1045", pf, "x")
	h.wantStatus("cp1045", "enabled/down/not pooled")
	h.wantPooledDown()
	if snap := h.c.Snapshot(); !snap.CanDepool || snap.CouldNotDepool != 0 {
		t.Fatalf("1/2 up: can depool (1 >= 1), got %+v", snap)
	}
	h.down("cp1046", pf, "x")
	h.wantStatus("cp1046", "enabled/down/pooled")
	h.wantPooledDown("cp1046")
	if snap := h.c.Snapshot(); snap.CanDepool || snap.CouldNotDepool != 1 {
		t.Fatalf("0/2 up: cannot depool, counter 1; got %+v", snap)
	}
}

// PyBal test4serversCanDepool: a disabled server still counts in the denominator.
func TestDepoolFourServersOneDisabled(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(disabled(sc("cp1045"), ""), sc("cp1046"), sc("cp1047"), sc("cp1048"))
	if !h.c.Snapshot().CanDepool {
		t.Fatal("3/4 up and enabled: can depool")
	}
	h.down("cp1046", pf, "x") // 2 >= 2
	h.wantStatus("cp1046", "enabled/down/not pooled")
	if !h.c.Snapshot().CanDepool {
		t.Fatal("2/4: can depool")
	}
	h.down("cp1047", pf, "x") // 1 < 2
	h.wantStatus("cp1047", "enabled/down/pooled")
	if h.c.Snapshot().CanDepool {
		t.Fatal("1/4: cannot depool")
	}
	h.wantPooled("cp1047", "cp1048")
}

// PyBal testRepoolStandard, testRepoolPreviouslyPooled, testRepoolPreviouslyPooledButDown.
func TestRepool(t *testing.T) {
	t.Run("standard", func(t *testing.T) {
		h := newHarness(t, 0.5, pf)
		h.update(sc("cp1045"), sc("cp1046"))
		h.down("cp1045", pf, "x")
		h.up("cp1045", pf)
		h.wantStatus("cp1045", "enabled/up/pooled")
	})
	t.Run("previously pooled and up", func(t *testing.T) {
		h := newHarness(t, 0.5, pf)
		h.update(sc("cp1045"), sc("cp1046"))
		h.up("cp1045", pf) // first check: repool of a pooled server
		h.wantStatus("cp1045", "enabled/up/pooled")
		h.wantLogged(slog.LevelDebug, "Leaving previously pooled server cp1045 pooled")
		h.wantNotLogged("Repooling")
	})
	t.Run("previously pooled but down", func(t *testing.T) {
		h := newHarness(t, 1, pf)
		h.update(sc("cp1045"), sc("cp1046"))
		h.down("cp1045", pf, "x")
		h.down("cp1046", pf, "x")
		h.wantPooledDown("cp1045", "cp1046")
		h.c.Reconfigure(0.5, []string{pf}) // 0 >= 1 false: both stay
		h.check()
		h.wantPooledDown("cp1045", "cp1046")
		h.up("cp1045", pf)
		h.wantLogged(slog.LevelInfo, "Leaving previously pooled but down server cp1045 pooled")
		h.wantStatus("cp1045", "enabled/up/pooled")
		h.wantStatus("cp1046", "enabled/down/not pooled") // drained: 1 >= 1
		h.wantPooledDown()
	})
	t.Run("drain is in host order and stops at the threshold", func(t *testing.T) {
		h := newHarness(t, 1, pf)
		h.update(sc("a"), sc("b"), sc("c"), sc("d"))
		for _, s := range []string{"d", "c", "b", "a"} {
			h.down(s, pf, "x")
		}
		h.wantPooledDown("a", "b", "c", "d")
		h.c.Reconfigure(0.5, []string{pf}) // need 2, 0 up: nothing drains
		h.check()
		h.up("d", pf) // 1 < 2: nothing drains
		h.wantPooledDown("a", "b", "c")
		h.up("c", pf) // 2 >= 2: drains a, then b (each keeps 2 >= 2)
		h.wantPooledDown()
		h.wantPooled("c", "d")
	})
}

// PyBal testConfigServerRemovalUpdate: added, removed and updated servers.
func TestConfigAddRemoveUpdate(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(sc("cp1045"), sc("cp1046"), sc("cp1047"), sc("cp1048"))
	for _, s := range []string{"cp1045", "cp1046", "cp1047", "cp1048"} {
		h.up(s, pf)
	}
	*h.logs = nil
	h.update(disabled(sc("cp1045"), "pooled=no"), weight(sc("cp1046"), 5), sc("cp1047"), sc("shiny-new-server"))

	snap := h.c.Snapshot()
	var hosts []string
	for _, s := range snap.Servers {
		hosts = append(hosts, s.Host)
	}
	if want := []string{"cp1045", "cp1046", "cp1047", "shiny-new-server"}; !slices.Equal(hosts, want) {
		t.Fatalf("servers %v, want %v", hosts, want)
	}
	h.wantStatus("cp1045", "disabled/up/not pooled")
	if s := h.state("cp1046"); s.Weight != 5 || !s.Pooled {
		t.Errorf("cp1046: weight %d pooled %v, want 5 pooled", s.Weight, s.Pooled)
	}
	h.wantStatus("cp1047", "enabled/up/pooled")
	h.wantStatus("shiny-new-server", "enabled/up/pooled")
	h.wantLogged(slog.LevelInfo, "Removing server cp1048 (no longer found in new configuration)")
	h.wantLogged(slog.LevelInfo, "New enabled server shiny-new-server, weight 10")
	h.wantLogged(slog.LevelInfo, "Merged disabled server cp1045, weight 10")
	h.wantLogged(slog.LevelInfo, "Merged enabled server cp1046, weight 5")
	h.wantLogged(slog.LevelDebug, "Merged enabled server cp1047, weight 10")

	// Results for a removed host are ignored.
	h.down("cp1048", pf, "x")
	if _, ok := snap.Server("cp1048"); ok {
		t.Error("cp1048 still known")
	}
}

// Weight changes never touch pooling, also for pooled-down servers.
func TestWeightChange(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(sc("a"), sc("b"))
	h.down("a", pf, "x")
	h.down("b", pf, "x") // pooled down
	h.update(weight(sc("a"), 0), weight(sc("b"), 30))
	if s := h.state("a"); s.Weight != 0 || s.Pooled {
		t.Errorf("a: %+v", s)
	}
	if s := h.state("b"); s.Weight != 30 || !s.Pooled {
		t.Errorf("b: %+v", s)
	}
	h.wantPooledDown("b")
}

// PyBal testEnsureDepoolThreshold.
func TestEnsureDepoolThreshold(t *testing.T) {
	all := func(f func(ServerConfig) ServerConfig) []ServerConfig {
		var out []ServerConfig
		for _, s := range []string{"cp1045", "cp1046", "cp1047", "cp1048"} {
			out = append(out, f(sc(s)))
		}
		return out
	}
	h := newHarness(t, 0.5, pf)
	h.update(all(func(c ServerConfig) ServerConfig { return disabled(c, "") })...)
	for _, s := range []string{"cp1045", "cp1046", "cp1047", "cp1048"} {
		h.down(s, pf, "x")
	}
	h.wantLogged(LevelCritical, "Could not ensure depool threshold; insufficient enabled & ready servers.")
	h.wantPooled()

	*h.logs = nil
	// Re-enabled with every monitor down: none is up, so ensure force-pools 2 of 4.
	h.update(all(func(c ServerConfig) ServerConfig { return c })...)
	h.wantPooled("cp1045", "cp1046")
	h.wantPooledDown("cp1045", "cp1046")
	h.wantLogged(slog.LevelWarn, "Forcing cp1045 to be pooled to meet depool threshold")
	h.wantLogged(slog.LevelWarn, "Forcing cp1046 to be pooled to meet depool threshold")
	h.wantNotLogged("Could not ensure")
	if s := h.state("cp1045"); s.Why != "ProxyFetch: x; "+WhyPooledDown {
		t.Errorf("why %q", s.Why)
	}

	// A forced server that comes up leaves the pooled-down set; the other is drained.
	h.up("cp1047", pf)
	h.wantPooled("cp1045", "cp1046", "cp1047")
	h.up("cp1048", pf) // 2 >= 2: drain cp1045, then 2 >= 2 again: cp1046
	h.wantPooled("cp1047", "cp1048")
	h.wantPooledDown()
}

// Ensure waits for the new servers of an update to finish resolving (PyBal's
// DeferredList), success or failure.
func TestEnsureWaitsForResolution(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(sc("a"), sc("b"))
	h.down("a", pf, "x") // depooled, 1 >= 1
	h.update(sc("a"), sc("b"), unresolved(sc("c")), unresolved(sc("d")))
	h.wantPooled("b") // need 2, but c and d are still resolving
	h.c.ResolveFailed("c", errors.New("lookup c: no such host"))
	h.check()
	h.wantPooled("b")
	if s := h.state("c"); s.Why != "resolve failed: lookup c: no such host" {
		t.Errorf("why %q", s.Why)
	}
	h.wantLogged(slog.LevelError, "Initialization failed for server c: lookup c: no such host")
	h.c.ResolveFailed("d", errors.New("timeout"))
	h.check()
	h.wantPooled("a", "b") // all new servers done: a force-pooled
	h.wantPooledDown("a")

	// kubal retries resolution (SPEC §14 #10): a later success pools optimistically.
	h.c.ResolveFailed("c", errors.New("lookup c: no such host"))
	h.c.Resolved("c", addr("c"))
	h.check()
	h.wantStatus("c", "enabled/up/pooled")
	h.wantLogged(slog.LevelInfo, "Resolved c to "+addr("c").String()+" after earlier failures")
}

// Update gives an address to a server that was waiting for one.
func TestUpdateAddressMakesReady(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(unresolved(sc("a")))
	h.wantStatus("a", "enabled/partially up/not pooled") // PyBal, see TestNewServersOptimistic
	h.update(unresolved(disabled(sc("a"), "")))
	h.wantStatus("a", "disabled/partially up/not pooled")
	h.update(unresolved(sc("a")))
	h.update(sc("a"))
	h.wantStatus("a", "enabled/up/pooled")
	other := netip.MustParseAddr("10.9.9.9")
	h.c.Resolved("a", other)
	if s := h.state("a"); s.Addr != other {
		t.Errorf("addr %v, want %v", s.Addr, other)
	}
	h.c.ResolveFailed("a", errors.New("temporary")) // keeps the last address
	if s := h.state("a"); s.Addr != other || !s.Ready {
		t.Errorf("after failed re-resolution: %+v", s)
	}
}

// SPEC §14 #5: PyBal master asserts (and half-applies the update) when a disabled
// server with healthy monitors is re-enabled. kubal pools it iff all monitors are up.
func TestReenableFix5(t *testing.T) {
	tests := []struct {
		name    string
		results map[string]bool // monitor -> up, reported while disabled
		status  string
		why     string
	}{
		{"all monitors up", map[string]bool{pf: true, idle: true}, "enabled/up/pooled", ""},
		{"one monitor down", map[string]bool{pf: true, idle: false}, "enabled/partially up/not pooled", "IdleConnection: x"},
		{"one monitor pending", map[string]bool{pf: true}, "enabled/partially up/not pooled", "waiting for first check: IdleConnection"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 0.5, pf, idle)
			h.update(disabled(sc("a"), "maintenance"), sc("b"))
			for _, m := range []string{pf, idle} {
				if up, ok := tt.results[m]; ok {
					if up {
						h.up("a", m)
					} else {
						h.down("a", m, "x")
					}
				}
			}
			h.update(sc("a"), sc("b"))
			h.wantStatus("a", tt.status)
			if s := h.state("a"); s.Why != tt.why {
				t.Errorf("why %q, want %q", s.Why, tt.why)
			}
		})
	}
	t.Run("pending monitor reports up later", func(t *testing.T) {
		h := newHarness(t, 0.5, pf, idle)
		h.update(disabled(sc("a"), ""), sc("b"))
		h.up("a", pf)
		h.update(sc("a"), sc("b"))
		h.up("a", idle)
		h.wantStatus("a", "enabled/up/pooled")
	})
}

// SPEC §4.7: a service without monitors keeps its servers up and pooled while enabled,
// across updates, disable and re-enable (PyBal master asserted here too, §14 #5).
func TestMonitorless(t *testing.T) {
	h := newHarness(t, 0.5)
	h.update(sc("a"), sc("b"))
	h.wantPooled("a", "b")
	h.update(weight(sc("a"), 3), sc("b"))
	h.wantPooled("a", "b")
	h.update(disabled(sc("a"), "drain"), sc("b"))
	h.wantStatus("a", "disabled/up/not pooled")
	h.update(sc("a"), sc("b"))
	h.wantStatus("a", "enabled/up/pooled")
	h.c.Result("a", pf, MonitorResult{Up: false}) // unconfigured monitor: ignored
	h.check()
	h.wantStatus("a", "enabled/up/pooled")
	if s := h.c.Snapshot(); !s.CanDepool || len(s.PooledDown) != 0 {
		t.Errorf("snapshot %+v", s)
	}
}

// SPEC §14 #11: a removed server leaves the pooled-down set (PyBal kept it, a stale
// /alerts CRITICAL).
func TestRemovePooledDownFix11(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(sc("a"), sc("b"), sc("c"))
	h.down("a", pf, "x") // 2 >= 1.5
	h.down("b", pf, "x") // 1 < 1.5: pooled down
	h.wantPooledDown("b")
	h.update(sc("a"), sc("c"))
	h.wantPooledDown()
	if snap := h.c.Snapshot(); len(snap.Servers) != 2 {
		t.Fatalf("servers %+v", snap.Servers)
	}
	h.up("a", pf) // repool drains nothing stale
	h.wantPooled("a", "c")
}

func TestReconfigure(t *testing.T) {
	t.Run("removed monitor's results are dropped and servers come up", func(t *testing.T) {
		h := newHarness(t, 0.5, pf, idle)
		h.update(sc("a"), sc("b"))
		h.up("a", pf)
		h.down("a", idle, "refused") // depooled
		h.c.Reconfigure(0.5, []string{pf})
		h.check()
		h.wantStatus("a", "enabled/up/pooled")
		if s := h.state("a"); len(s.Monitors) != 1 || s.Why != "" {
			t.Errorf("a: monitors %v why %q", s.Monitors, s.Why)
		}
	})
	t.Run("all monitors removed: monitor-less semantics", func(t *testing.T) {
		h := newHarness(t, 0.5, pf)
		h.update(sc("a"), sc("b"))
		h.down("a", pf, "x")
		h.c.Reconfigure(0.5, nil)
		h.check()
		h.wantPooled("a", "b")
	})
	t.Run("lower threshold drains pooled-down servers", func(t *testing.T) {
		h := newHarness(t, 0.75, pf)
		h.update(sc("a"), sc("b"), sc("c"), sc("d"))
		h.down("a", pf, "x") // 3 >= 3
		h.down("b", pf, "x") // 2 < 3: pooled down
		h.wantPooledDown("b")
		h.c.Reconfigure(0.5, []string{pf})
		h.check()
		h.wantPooledDown()
		h.wantPooled("c", "d")
		if s := h.c.Snapshot(); s.Threshold != 0.5 {
			t.Errorf("threshold %v", s.Threshold)
		}
	})
	t.Run("higher threshold force-pools", func(t *testing.T) {
		h := newHarness(t, 0.5, pf)
		h.update(sc("a"), sc("b"), sc("c"), sc("d"))
		h.down("a", pf, "x")
		h.down("b", pf, "x")
		h.wantPooled("c", "d")
		h.c.Reconfigure(0.75, []string{pf})
		h.check()
		h.wantPooled("a", "c", "d")
		h.wantPooledDown("a")
	})
	t.Run("added monitor's first result counts", func(t *testing.T) {
		h := newHarness(t, 0.5, pf)
		h.update(sc("a"), sc("b"))
		h.up("a", pf)
		h.c.Reconfigure(0.5, []string{pf, idle})
		h.check()
		h.wantStatus("a", "enabled/up/pooled")
		h.down("a", idle, "refused")
		h.wantStatus("a", "enabled/partially up/not pooled")
	})
}

// Snapshot is a deep copy: mutating it does not change the coordinator.
func TestSnapshotDeepCopy(t *testing.T) {
	h := newHarness(t, 0.5, pf)
	h.update(sc("b"), sc("a"), sc("c"))
	h.down("b", pf, "x")
	snap := h.c.Snapshot()
	if got := []string{snap.Servers[0].Host, snap.Servers[1].Host, snap.Servers[2].Host}; !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("not sorted: %v", got)
	}
	snap.Servers[1].Monitors[pf] = MonitorResult{Up: true}
	snap.Servers[1].Pooled = true
	again := h.c.Snapshot()
	if s, _ := again.Server("b"); s.Monitors[pf].Up || s.Pooled {
		t.Errorf("snapshot aliases coordinator state: %+v", s)
	}
	if snap.Name != "text_80" || snap.Threshold != 0.5 {
		t.Errorf("snapshot header %+v", snap)
	}
}

func TestNilLoggerAndEmptyHost(t *testing.T) {
	c := New("x", 0.5, nil, nil)
	c.Update([]ServerConfig{{Host: ""}, sc("a"), sc("a")})
	if err := invariants(c); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Snapshot().Servers); n != 1 {
		t.Fatalf("%d servers, want 1", n)
	}
	c.Resolved("nope", addr("nope"))
	c.ResolveFailed("nope", nil)
	c.Result("nope", "m", MonitorResult{})
}

// pool-unchecked = no: new servers wait for a verdict from every monitor, are not
// force-pooled while they wait, and a first round that finds them down re-ensures
// the depool threshold (a checker wrong about all of them must not empty the pool).
func TestCheckFirst(t *testing.T) {
	type step struct {
		host, monitor string
		up            bool
		pooled        []string
		pooledDown    []string
		awaiting      []string
	}
	tests := []struct {
		name      string
		threshold float64
		monitors  []string
		steps     []step
	}{{
		name: "pooled once every monitor passed", threshold: 0.5, monitors: []string{"ProxyFetch", "Kubernetes"},
		steps: []step{
			{awaiting: []string{"a", "b", "c"}},
			{host: "a", monitor: "ProxyFetch", up: true, awaiting: []string{"a", "b", "c"}},
			{host: "a", monitor: "Kubernetes", up: true, pooled: []string{"a"}, awaiting: []string{"b", "c"}},
			{host: "b", monitor: "Kubernetes", up: true, pooled: []string{"a"}, awaiting: []string{"b", "c"}},
			{host: "b", monitor: "ProxyFetch", up: true, pooled: []string{"a", "b"}, awaiting: []string{"c"}},
		},
	}, {
		name: "first rounds down: held at the threshold", threshold: 0.5, monitors: []string{"ProxyFetch"},
		steps: []step{
			{awaiting: []string{"a", "b", "c"}},
			{host: "c", monitor: "ProxyFetch", up: false, pooled: []string{"c"}, pooledDown: []string{"c"}, awaiting: []string{"a", "b"}},
			{host: "b", monitor: "ProxyFetch", up: false, pooled: []string{"b", "c"}, pooledDown: []string{"b", "c"}, awaiting: []string{"a"}},
			// 2 of 3 pooled meets 1.5: a stays out.
			{host: "a", monitor: "ProxyFetch", up: false, pooled: []string{"b", "c"}, pooledDown: []string{"b", "c"}},
			// a comes up and is pooled; 1 up of 3 is below 1.5, so b and c stay pooled down.
			{host: "a", monitor: "ProxyFetch", up: true, pooled: []string{"a", "b", "c"}, pooledDown: []string{"b", "c"}},
			// a second up server lets the set drain: c up, b depooled.
			{host: "c", monitor: "ProxyFetch", up: true, pooled: []string{"a", "c"}},
		},
	}, {
		name: "no monitors: pooled at once", threshold: 0.5,
		steps: []step{{pooled: []string{"a", "b", "c"}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.threshold, tt.monitors...)
			h.c.SetPoolUnchecked(false)
			h.update(sc("a"), sc("b"), sc("c"))
			for i, st := range tt.steps {
				if st.host != "" {
					if st.up {
						h.up(st.host, st.monitor)
					} else {
						h.down(st.host, st.monitor, "down")
					}
				}
				var awaiting []string
				for _, s := range h.c.Snapshot().Servers {
					if s.Awaiting {
						awaiting = append(awaiting, s.Host)
						if !strings.Contains(s.Why, "waiting for first check") {
							t.Errorf("step %d: %s awaiting, why %q", i, s.Host, s.Why)
						}
					}
				}
				if !slices.Equal(awaiting, st.awaiting) {
					t.Errorf("step %d: awaiting %v, want %v", i, awaiting, st.awaiting)
				}
				h.wantPooled(st.pooled...)
				h.wantPooledDown(st.pooledDown...)
			}
			if h.logged(LevelCritical, "Could not ensure depool threshold; insufficient enabled & ready servers.") {
				t.Errorf("CRITICAL logged while servers awaited their first check:\n%s", h.dumpLogs())
			}
		})
	}
}

// The PyBal default keeps optimistic pooling; switching to check-first later leaves
// the servers already pooled as they are and applies to new ones.
func TestCheckFirstOnlyNewServers(t *testing.T) {
	h := newHarness(t, 0.5, "ProxyFetch")
	h.update(sc("a"), sc("b"))
	h.wantPooled("a", "b")
	h.c.SetPoolUnchecked(false)
	h.check()
	h.update(sc("a"), sc("b"), sc("c"))
	h.wantPooled("a", "b")
	if !h.state("c").Awaiting || h.state("a").Awaiting {
		t.Errorf("awaiting: a %v, c %v; want c only", h.state("a").Awaiting, h.state("c").Awaiting)
	}
	h.up("c", "ProxyFetch")
	h.wantPooled("a", "b", "c")
}
