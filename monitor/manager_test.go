package monitor

import (
	"io"
	"strings"
	"testing"
	"time"
)

// Two services with the same host, port and monitor config share one probe; both
// see its results, each under its own service label; the probe stops with its last
// watcher.
func TestManagerSharedProbe(t *testing.T) {
	m, reg := newTestManager(t)
	b := newTCPBackend(t, 0)
	kv := []string{"idleconnection.max-delay", "300"}
	ra, rb := newReports(), newReports()
	stopA, err := m.Watch(testService("text_80", []string{"IdleConnection"}, kv...), "IdleConnection", loopback(b.port), ra.report)
	if err != nil {
		t.Fatal(err)
	}
	stopB, err := m.Watch(testService("upload_80", []string{"IdleConnection"}, kv...), "IdleConnection", loopback(b.port), rb.report)
	if err != nil {
		t.Fatal(err)
	}
	if m.Probes() != 1 {
		t.Fatalf("%d probes, want 1 shared", m.Probes())
	}
	if !ra.next(t, 5*time.Second).Up || !rb.next(t, 5*time.Second).Up {
		t.Fatal("both watchers should see up")
	}
	conn := b.accepted(t)
	select {
	case <-b.conns:
		t.Fatal("a second connection: probe not shared")
	case <-time.After(50 * time.Millisecond):
	}
	for _, svc := range []string{"text_80", "upload_80"} {
		if v, ok := metricValue(t, reg, "pybal_monitor_status", map[string]string{"service": svc, "host": "host1", "monitor": "IdleConnection"}); !ok || v != 1 {
			t.Errorf("%s status %v %v", svc, v, ok)
		}
		if v, _ := metricValue(t, reg, "pybal_monitor_up_transitions_total", map[string]string{"service": svc}); v != 1 {
			t.Errorf("%s up transitions %v", svc, v)
		}
	}
	rst(conn)
	if ra.next(t, 5*time.Second).Up || rb.next(t, 5*time.Second).Up {
		t.Fatal("both watchers should see down")
	}
	for _, svc := range []string{"text_80", "upload_80"} {
		if v, _ := metricValue(t, reg, "pybal_monitor_idleconnection_connections_lost_total", map[string]string{"service": svc}); v != 1 {
			t.Errorf("%s connections lost %v", svc, v)
		}
	}
	stopA()
	stopA() // idempotent
	if m.Probes() != 1 {
		t.Fatal("probe stopped while a watcher remains")
	}
	if _, ok := metricValue(t, reg, "pybal_monitor_status", map[string]string{"service": "text_80"}); ok {
		t.Error("status series of a detached watcher kept")
	}
	stopB()
	if m.Probes() != 0 {
		t.Fatal("probe kept after its last watcher")
	}
}

// Different options, or a different target, are different probes.
func TestManagerDistinctProbes(t *testing.T) {
	m, _ := newTestManager(t)
	b := newTCPBackend(t, 0)
	watch := func(port uint16, kv ...string) {
		stop, err := m.Watch(testService("s", []string{"IdleConnection"}, kv...), "IdleConnection", loopback(port), func(Result) {})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	watch(b.port)
	watch(b.port, "idleconnection.max-delay", "30")
	watch(closedTCPPort(t))
	if m.Probes() != 3 {
		t.Fatalf("%d probes, want 3", m.Probes())
	}
}

// A watcher joining a running probe gets its current state at once, not at the
// next transition.
func TestManagerLateJoinerGetsState(t *testing.T) {
	m, _ := newTestManager(t)
	b := newTCPBackend(t, 0)
	ra := newReports()
	stop, _ := m.Watch(testService("a", []string{"IdleConnection"}), "IdleConnection", loopback(b.port), ra.report)
	defer stop()
	ra.next(t, 5*time.Second)
	rb := newReports()
	stop2, _ := m.Watch(testService("b", []string{"IdleConnection"}), "IdleConnection", loopback(b.port), rb.report)
	defer stop2()
	if res := rb.next(t, time.Second); !res.Up {
		t.Fatalf("late joiner got %+v", res)
	}
	ra.none(t, 20*time.Millisecond)
}

// report may call stop (the coordinator dropping a server on a result).
func TestManagerStopFromReport(t *testing.T) {
	m, _ := newTestManager(t)
	b := newTCPBackend(t, 0)
	done := make(chan struct{})
	stopc := make(chan func(), 1) // report may run before Watch returns
	stop, err := m.Watch(testService("a", []string{"IdleConnection"}), "IdleConnection", loopback(b.port), func(Result) {
		(<-stopc)()
		close(done)
	})
	if err != nil {
		t.Fatal(err)
	}
	stopc <- stop
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("no report")
	}
	// The probe's connection is closed once it stops.
	c := b.accepted(t)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("probe connection not closed: %v", err)
	}
}

// rise/fall through the Manager, PyBal timing on a fake clock, against a real
// HTTP server: fall=2 needs two failed checks, rise=3 three good ones.
func TestManagerRiseFall(t *testing.T) {
	m, reg := newTestManager(t)
	clk := newFakeClock()
	m.clk = clk
	b := newHTTPBackend(t, nil)
	r := newReports()
	stop, err := m.Watch(testService("svc", []string{"ProxyFetch"}, "proxyfetch.url", "['http://x/']",
		"proxyfetch.rise", "3", "proxyfetch.fall", "2"), "ProxyFetch", loopback(b.port), r.report)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	results := func() float64 {
		u, _ := metricValue(t, reg, "pybal_monitor_up_results_total", map[string]string{"service": "svc"})
		d, _ := metricValue(t, reg, "pybal_monitor_down_results_total", map[string]string{"service": "svc"})
		return u + d
	}
	// tick runs exactly one check: advance to the next tick, wait for its result.
	tick := func() {
		t.Helper()
		before := results()
		clk.waitTimer(t)
		if d := clk.nextTimer(); d != 10*time.Second {
			t.Fatalf("next check in %v, want the 10s default interval", d)
		}
		clk.Advance(10 * time.Second)
		deadline := time.Now().Add(5 * time.Second)
		for results() == before {
			if time.Now().After(deadline) {
				t.Fatal("check did not complete")
			}
			time.Sleep(time.Millisecond)
		}
	}
	tick()
	if !r.next(t, time.Second).Up {
		t.Fatal("first result should be up")
	}
	b.status.Store(503)
	tick()
	r.none(t, 20*time.Millisecond) // one failure < fall
	tick()
	if res := r.next(t, time.Second); res.Up || res.Reason != "503 Service Unavailable" {
		t.Fatalf("after 2 failures: %+v", res)
	}
	b.status.Store(200)
	tick()
	tick()
	r.none(t, 20*time.Millisecond)
	b.status.Store(500)
	tick() // streak broken
	b.status.Store(200)
	tick()
	tick()
	r.none(t, 20*time.Millisecond)
	tick()
	if !r.next(t, time.Second).Up {
		t.Fatal("after 3 successes should be up")
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_down_transitions_total", map[string]string{"service": "svc"}); v != 1 {
		t.Errorf("down transitions %v", v)
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_up_transitions_total", map[string]string{"service": "svc"}); v != 2 {
		t.Errorf("up transitions %v (first result counts, as PyBal)", v)
	}
}

// A 503 is reported within one interval of the flip (real clock).
func TestManager503WithinInterval(t *testing.T) {
	m, _ := newTestManager(t)
	b := newHTTPBackend(t, nil)
	r := newReports()
	stop, err := m.Watch(testService("svc", []string{"ProxyFetch"}, "proxyfetch.url", "['http://x/']",
		"proxyfetch.interval", "0.1"), "ProxyFetch", loopback(b.port), r.report)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if !r.next(t, time.Second).Up {
		t.Fatal("not up")
	}
	flipped := time.Now()
	b.status.Store(503)
	res := r.next(t, time.Second)
	if el := time.Since(flipped); el > 150*time.Millisecond {
		t.Errorf("503 seen after %v, interval 100ms", el)
	}
	if res.Up || res.Reason != "503 Service Unavailable" {
		t.Fatalf("%+v", res)
	}
}

func TestManagerWatchErrors(t *testing.T) {
	m, _ := newTestManager(t)
	if _, err := m.Watch(testService("svc", nil), "Mock", loopback(80), func(Result) {}); err == nil || !strings.Contains(err.Error(), `unknown monitor "Mock"`) {
		t.Errorf("unknown monitor: %v", err)
	}
	_, err := m.Watch(testService("svc", []string{"ProxyFetch"}, "proxyfetch.timeout", "soon"), "ProxyFetch", loopback(80), func(Result) {})
	if err == nil || !strings.Contains(err.Error(), "test.conf:10: proxyfetch.timeout") || !strings.Contains(err.Error(), "proxyfetch.url: required") {
		t.Errorf("bad options: %v", err)
	}
	if _, err := m.Watch(testService("svc", nil), "TCP", Target{Host: "unresolved", Port: 80}, func(Result) {}); err == nil || !strings.Contains(err.Error(), `server "unresolved" has no address`) {
		t.Errorf("no address: %v", err)
	}
	m.Close()
	if _, err := m.Watch(testService("svc", nil), "TCP", loopback(80), func(Result) {}); err == nil {
		t.Error("Watch after Close succeeded")
	}
}

// A check-first server (Target.Prompt) joining a probe that an optimistic one started
// gets the probe's first check within PromptWindow, not at the probe's own first
// check up to an interval away; an optimistic joiner leaves the schedule alone.
func TestPromptWatcherHurriesSharedProbe(t *testing.T) {
	for _, tt := range []struct {
		name      string
		prompt    bool
		wantFirst bool // a first result within 2 s (the probe's own is at 5 s)
	}{
		{"check-first joiner", true, true},
		{"optimistic joiner", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newTestManager(t)
			m.offset = func(iv time.Duration) time.Duration { return iv / 2 } // first check at 5 s
			b := newTCPBackend(t, 0)
			kv := []string{"tcp.interval", "10"}
			ra, rb := newReports(), newReports()
			stopA, err := m.Watch(testService("a", []string{"TCP"}, kv...), "TCP", loopback(b.port), ra.report)
			if err != nil {
				t.Fatal(err)
			}
			defer stopA()
			tg := loopback(b.port)
			tg.Prompt = tt.prompt
			stopB, err := m.Watch(testService("b", []string{"TCP"}, kv...), "TCP", tg, rb.report)
			if err != nil {
				t.Fatal(err)
			}
			defer stopB()
			if m.Probes() != 1 {
				t.Fatalf("%d probes, want 1 shared", m.Probes())
			}
			if !tt.wantFirst {
				rb.none(t, 2*time.Second)
				return
			}
			start := time.Now()
			if r := rb.next(t, 2*time.Second); !r.Up {
				t.Fatalf("first result %+v, want up", r)
			}
			if r := ra.next(t, time.Second); !r.Up {
				t.Fatalf("the first watcher got %+v, want the same up", r)
			}
			t.Logf("first check %s after the check-first watcher joined", time.Since(start).Round(time.Millisecond))
		})
	}
}
