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
	port := closedUDPPort(t)
	r := newReports()
	watched := time.Now()
	stop, err := m.Watch(testService("svc", []string{"UDP"}, "udp.interval", "0.05", "udp.icmp-timeout", "0.3"),
		"UDP", loopback(port), r.report)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// PyBal: the first check finds no ICMP error yet (up), and the ICMP for its
	// datagram arrives just after (down). Here the ICMP may also beat the first
	// verdict, giving down straight away. Either way down comes right after the
	// first check (at 50ms).
	res := r.next(t, time.Second)
	if res.Up {
		res = r.next(t, time.Second)
	}
	if res.Up || res.Reason != icmpReason {
		t.Fatalf("want down on ICMP, got %+v", res)
	}
	if el := time.Since(watched); el > 200*time.Millisecond {
		t.Errorf("ICMP seen %v after start, first check at 50ms", el)
	}
	// More datagrams keep drawing ICMP: still down, no new report.
	r.none(t, 400*time.Millisecond)
	if v, _ := metricValue(t, reg, "pybal_monitor_down_results_total", map[string]string{"monitor": "UDP"}); v < 3 {
		t.Errorf("down results %v, want one per check", v)
	}
	// Something listens now: no more ICMP; up once icmp-timeout has passed.
	ln, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback(0).Addr, port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	opened := time.Now()
	res = r.next(t, 2*time.Second)
	if !res.Up {
		t.Fatalf("after listening: %+v", res)
	}
	if el := time.Since(opened); el < 200*time.Millisecond || el > 500*time.Millisecond {
		t.Errorf("up after %v, want icmp-timeout (0.3s) after the last ICMP", el)
	}
	// The probe is a zero-length datagram.
	buf := make([]byte, 10)
	ln.SetReadDeadline(time.Now().Add(time.Second))
	n, err := ln.Read(buf)
	if err != nil || n != 0 {
		t.Fatalf("datagram of %d bytes, err %v; want zero-length", n, err)
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
