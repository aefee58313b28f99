package monitor

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

func TestUDPICMPDownThenUp(t *testing.T) {
	m, reg := newTestManager(t)
	clk := newFakeClock()
	m.clk = clk
	port := closedUDPPort(t)
	r := newReports()
	stop, err := m.Watch(testService("svc", []string{"UDP"}), "UDP", loopback(port), r.report)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// PyBal timing: the first check after the 10s default interval.
	clk.waitTimer(t)
	if d := clk.nextTimer(); d != 10*time.Second {
		t.Fatalf("first check in %v", d)
	}
	sent := time.Now()
	clk.Advance(10 * time.Second) // T=10: datagram, ICMP back
	// PyBal's first check finds no ICMP error yet (up), and the ICMP for its
	// datagram arrives just after (down); here the ICMP may also beat the first
	// verdict, giving down straight away.
	res := r.next(t, time.Second)
	if res.Up {
		res = r.next(t, time.Second)
	}
	if res.Up || res.Reason != icmpReason {
		t.Fatalf("want down on ICMP, got %+v", res)
	}
	if el := time.Since(sent); el > 100*time.Millisecond {
		t.Errorf("ICMP seen %v after the datagram", el)
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_down_results_total", map[string]string{"monitor": "UDP"}); v != 1 {
		t.Errorf("down results %v", v)
	}
	// Something listens now: no more ICMP. Up only once a check finds the last
	// ICMP (T=10) more than icmp-timeout (20s) ago: at T=40, not T=20 or T=30.
	ln, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback(0).Addr, port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	buf := make([]byte, 10)
	for _, at := range []int{20, 30, 40} {
		clk.waitTimer(t)
		clk.Advance(clk.nextTimer())
		ln.SetReadDeadline(time.Now().Add(time.Second))
		n, err := ln.Read(buf)
		if err != nil || n != 0 {
			t.Fatalf("T=%d: datagram of %d bytes, err %v; want zero-length", at, n, err)
		}
		if at < 40 {
			r.none(t, 30*time.Millisecond)
			continue
		}
		if res := r.next(t, time.Second); !res.Up {
			t.Fatalf("T=40: %+v", res)
		}
	}
}

func TestUDPAlternatePort(t *testing.T) {
	m, _ := newTestManager(t)
	ln, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := newReports()
	stop, err := m.Watch(testService("svc", []string{"UDP"}, "udp.interval", "0.05",
		"udp.port", strconv.Itoa(ln.LocalAddr().(*net.UDPAddr).Port)), "UDP", loopback(closedUDPPort(t)), r.report)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if res := r.next(t, time.Second); !res.Up {
		t.Fatal(res)
	}
	r.none(t, 200*time.Millisecond) // the service port's ICMP would have shown by now
}

func TestTCPCheck(t *testing.T) {
	m, _ := newTestManager(t)
	b := newTCPBackend(t, 0)
	bh := newBlackhole(t)
	bh.fill(t)
	cases := []struct {
		name   string
		port   uint16
		up     bool
		reason string
	}{
		{"listening", b.port, true, ""},
		{"refused", closedTCPPort(t), false, "Connection was refused by other side: 111: Connection refused."},
		{"blackholed", bh.port, false, "User timeout caused connection failure."},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ck := checkerFor(t, m, testService("svc", []string{"TCP"}), "TCP", loopback(c.port), nil)
			r := ck.Check(ctxTimeout(t, 200*time.Millisecond))
			if r.Up != c.up || r.Reason != c.reason {
				t.Fatalf("got %+v", r)
			}
		})
	}
	// The connection is closed right away.
	c := b.accepted(t)
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("TCP check left its connection open")
	}
}
