package monitor

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestValidatePath(t *testing.T) {
	cases := []struct {
		name     string
		monitors []string
		udp      bool
		kv       []string
		want     []string // substrings of each diagnostic; nil = valid
	}{
		{"forwarded ProxyFetch, IdleConnection and TCP", []string{"ProxyFetch", "IdleConnection", "TCP"}, false, []string{
			"proxyfetch.url", "['http://x/']", "proxyfetch.path", "forwarded",
			"idleconnection.path", "forwarded", "tcp.path", " forwarded ",
		}, nil},
		{"direct is the default, and may be said", []string{"TCP"}, false, []string{"tcp.path", "direct"}, nil},
		{"unknown path", []string{"TCP"}, false, []string{"tcp.path", "sideways"},
			[]string{`test.conf:10: tcp.path: "sideways" is not direct or forwarded`}},
		{"case matters", []string{"TCP"}, false, []string{"tcp.path", "Forwarded"},
			[]string{`test.conf:10: tcp.path: "Forwarded" is not direct or forwarded`}},
		{"DNSQuery cannot be forwarded", []string{"DNSQuery"}, false, []string{"dnsquery.hostnames", "['a.example']", "dnsquery.path", "forwarded"},
			[]string{"test.conf:11: dnsquery.path: DNSQuery probes cannot be forwarded"}},
		{"RunCommand cannot be forwarded", []string{"RunCommand"}, false, []string{"runcommand.command", "/bin/true", "runcommand.path", "forwarded"},
			[]string{"test.conf:11: runcommand.path: RunCommand probes cannot be forwarded"}},
		{"udp service", []string{"TCP"}, true, []string{"tcp.path", "forwarded"},
			[]string{"test.conf:10: tcp.path: forwarded probes need a tcp service"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			svc := testService("svc_80", c.monitors, c.kv...)
			if c.udp {
				svc.Protocol = "udp"
			}
			ds := Validate(svc)
			if len(ds) != len(c.want) {
				t.Fatalf("got %d diagnostics, want %d:\n%v", len(ds), len(c.want), ds)
			}
			for i, w := range c.want {
				if !strings.Contains(ds[i].String(), w) {
					t.Errorf("diagnostic %d = %q, want it to contain %q", i, ds[i], w)
				}
			}
		})
	}
}

func TestWatched(t *testing.T) {
	svc := testService("svc_80", []string{"ProxyFetch", "IdleConnection", "TCP"},
		"proxyfetch.url", "['http://x/']", "proxyfetch.path", "forwarded", "tcp.path", "direct")
	if got, want := Watched(svc), []string{"ProxyFetch", "IdleConnection", "TCP", "ProxyFetch/forwarded"}; !slices.Equal(got, want) {
		t.Errorf("Watched = %v, want %v", got, want)
	}
	if !HasForwarded(svc) || HasForwarded(testService("s", []string{"TCP"})) {
		t.Error("HasForwarded wrong")
	}
	// An option of a monitor the service does not run asks for nothing.
	if HasForwarded(testService("s", []string{"TCP"}, "idleconnection.path", "forwarded")) {
		t.Error("a monitor not in monitors must not be forwarded")
	}
}

func TestForwardedVerdict(t *testing.T) {
	up, down := Result{Up: true}, Result{Reason: "Connection refused"}
	cases := []struct {
		name              string
		direct, forwarded Result
		want              Result
	}{
		{"both up", up, up, up},
		{"direct up, forwarded down: the path is broken", up, down, Result{Reason: ForwardedReason + ": Connection refused"}},
		{"both down: the forwarded probe's own reason", down, down, down},
		{"direct down, forwarded up", down, up, up},
		{"already explained: not twice", up, Result{Reason: ForwardedReason + ": x"}, Result{Reason: ForwardedReason + ": x"}},
		{"no reason", up, Result{}, Result{Reason: ForwardedReason}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ForwardedVerdict(c.direct, c.forwarded); got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// The forwarded probe connects to the VIP (not the server), from the route's source
// address, with its socket marked; the direct probe of the same monitor still runs.
// Here the "VIP" is a local listener and the server's own address refuses: the
// forwarded probe is up and the direct one down - the two are distinct probes.
func TestForwardedProbeConnectsToTheVIP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: SO_MARK needs CAP_NET_ADMIN (run as root); the VM rig's TestForwardedProbe covers it")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	vipPort := ln.Addr().(*net.TCPAddr).AddrPort()
	m, _ := newTestManager(t)
	svc := testService("svc", []string{"TCP"}, "tcp.path", "forwarded", "tcp.interval", "0.05", "tcp.timeout", "1")
	svc.IP, svc.Port, svc.Protocol = vipPort.Addr(), vipPort.Port(), "tcp"
	target := Target{Host: "s1", Addr: netip.MustParseAddr("127.0.0.2"), Port: vipPort.Port()}
	results := map[string]chan Result{"TCP": make(chan Result, 10), "TCP/forwarded": make(chan Result, 10)}
	for _, name := range Watched(svc) {
		ch := results[name]
		stop, err := m.Watch(svc, name, target, func(r Result) { ch <- r })
		if err != nil {
			t.Fatalf("watch %s: %v", name, err)
		}
		defer stop()
	}
	if m.Probes() != 2 {
		t.Errorf("%d probes, want the direct and the forwarded one", m.Probes())
	}
	for name, want := range map[string]bool{"TCP": false, "TCP/forwarded": true} {
		select {
		case r := <-results[name]:
			if r.Up != want {
				t.Errorf("%s: %+v, want up=%v", name, r, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no result", name)
		}
	}
}

func TestWatchForwardedNeedsTheOption(t *testing.T) {
	m, _ := newTestManager(t)
	svc := testService("svc", []string{"TCP"})
	if _, err := m.Watch(svc, "TCP/forwarded", Target{Addr: netip.MustParseAddr("127.0.0.2")}, func(Result) {}); err == nil ||
		!strings.Contains(err.Error(), "tcp.path: a forwarded probe needs TCP.path = forwarded") {
		t.Errorf("err = %v", err)
	}
}

// The forwarded probe's own metrics carry its name, so they never overwrite the
// direct probe's series (PyBal's proxyfetch duration gauge has a monitor label).
func TestForwardedProbeMetricsLabel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: SO_MARK needs CAP_NET_ADMIN (run as root)")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveMinimalHTTP(ln)
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	m, reg := newTestManager(t)
	svc := testService("svc", []string{"ProxyFetch"}, "proxyfetch.path", "forwarded", "proxyfetch.url", "['http://m.test/']",
		"proxyfetch.interval", "0.05", "proxyfetch.timeout", "1")
	svc.IP, svc.Port, svc.Protocol = ap.Addr(), ap.Port(), "tcp"
	got := make(chan Result, 10)
	stop, err := m.Watch(svc, "ProxyFetch/forwarded", Target{Host: "h", Addr: ap.Addr(), Port: ap.Port()}, func(r Result) { got <- r })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case r := <-got:
		if !r.Up {
			t.Fatalf("forwarded probe down: %s", r.Reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no result")
	}
	if _, ok := metricValue(t, reg, "pybal_monitor_proxyfetch_request_duration_seconds",
		map[string]string{"service": "svc", "host": "h", "monitor": "ProxyFetch/forwarded"}); !ok {
		t.Error("no proxyfetch duration series with monitor=ProxyFetch/forwarded")
	}
}

// A forwarded probe waits ForwardedStartDelay before its first check, so that its
// helper service exists when it connects.
func TestForwardedProbeStartsLate(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: SO_MARK needs CAP_NET_ADMIN (run as root)")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveMinimalHTTP(ln)
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	m, _ := newTestManager(t)
	m.fwdDelay = 400 * time.Millisecond
	svc := testService("svc", []string{"TCP"}, "tcp.path", "forwarded", "tcp.interval", "0.02", "tcp.timeout", "1")
	svc.IP, svc.Port, svc.Protocol = ap.Addr(), ap.Port(), "tcp"
	start := time.Now()
	got := make(chan time.Duration, 10)
	stop, err := m.Watch(svc, "TCP/forwarded", Target{Host: "h", Addr: ap.Addr(), Port: ap.Port()}, func(Result) { got <- time.Since(start) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case d := <-got:
		if d < m.fwdDelay {
			t.Errorf("first result after %v, before the start delay %v", d, m.fwdDelay)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no result")
	}
}
