package monitor

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpBackend is a real TCP server on loopback that can RST, FIN or stop listening.
type tcpBackend struct {
	ln    net.Listener
	port  uint16
	conns chan *net.TCPConn
}

func newTCPBackend(t *testing.T, port uint16) *tcpBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(int(port)))
	if err != nil {
		t.Fatal(err)
	}
	b := &tcpBackend{ln: ln, port: uint16(ln.Addr().(*net.TCPAddr).Port), conns: make(chan *net.TCPConn, 100)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns <- c.(*net.TCPConn)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return b
}

func (b *tcpBackend) accepted(t *testing.T) *net.TCPConn {
	t.Helper()
	select {
	case c := <-b.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
		return nil
	}
}

func rst(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func idleWatch(t *testing.T, m *Manager, port uint16, kv ...string) *reports {
	t.Helper()
	r := newReports()
	stop, err := m.Watch(testService("svc", []string{"IdleConnection"}, kv...), "IdleConnection", loopback(port), r.report)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return r
}

func TestIdleConnectionRSTAndFIN(t *testing.T) {
	m, reg := newTestManager(t)
	clk := newFakeClock()
	m.clk = clk
	b := newTCPBackend(t, 0)
	r := idleWatch(t, m, b.port)

	if res := r.next(t, 5*time.Second); !res.Up {
		t.Fatalf("first result %+v, want up", res)
	}
	conn := b.accepted(t)

	// RST: down at once, with the loss counted.
	start := time.Now()
	rst(conn)
	res := r.next(t, 5*time.Second)
	if lat := time.Since(start); lat > 100*time.Millisecond {
		t.Errorf("RST seen after %v", lat)
	}
	if res.Up || res.Reason != "Connection to the other side was lost in a non-clean fashion: 104: Connection reset by peer." {
		t.Fatalf("after RST: %+v", res)
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_idleconnection_connections_lost_total",
		map[string]string{"service": "svc", "host": "host1", "monitor": "IdleConnection", "reason": "ConnectionLost"}); v != 1 {
		t.Errorf("connections_lost_total = %v", v)
	}
	// Reconnect waits for the backoff, not sooner: e seconds with PyBal's normal
	// jitter (sd 0.12 x 2.72 s = 0.33 s). [1 s, 4.5 s] is over 5 sd either way; the
	// bound of 2 s failed once in CI (1.81 s, 2.8 sd low).
	clk.waitTimer(t)
	if d := clk.nextTimer(); d < time.Second || d > 4500*time.Millisecond {
		t.Errorf("reconnect delay %v, want ~2.7s", d)
	}
	clk.Advance(clk.nextTimer())
	if res := r.next(t, 5*time.Second); !res.Up {
		t.Fatalf("after reconnect: %+v", res)
	}
	conn = b.accepted(t)

	// FIN: no state change, one fast reconnect.
	clk.Advance(10 * time.Second) // a connection that lived a while
	conn.Close()
	conn = b.accepted(t)
	r.none(t, 50*time.Millisecond)

	// FIN and nothing listening: the fast reconnect is refused, down.
	b.ln.Close()
	clk.Advance(10 * time.Second)
	conn.Close()
	res = r.next(t, 5*time.Second)
	if res.Up || res.Reason != "Connection was refused by other side: 111: Connection refused." {
		t.Fatalf("after FIN + refused: %+v", res)
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_idleconnection_connections_failed_total",
		map[string]string{"reason": "ConnectionRefusedError"}); v != 1 {
		t.Errorf("connections_failed_total = %v", v)
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_status", map[string]string{"service": "svc", "monitor": "IdleConnection"}); v != 0 {
		t.Errorf("status gauge = %v", v)
	}
}

// blackhole returns a loopback port whose accept queue is full: SYNs are dropped,
// so connects time out. accept() takes one queued connection off (to be closed
// cleanly by the test) and refills the queue.
type blackhole struct {
	fd    int
	port  uint16
	fills []net.Conn
}

func newBlackhole(t *testing.T) *blackhole {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // accept queue of one
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	b := &blackhole{fd: fd, port: uint16(sa.(*syscall.SockaddrInet4).Port)}
	t.Cleanup(func() {
		syscall.Close(fd)
		for _, c := range b.fills {
			c.Close()
		}
	})
	return b
}

// fill queues connections until one cannot get in.
func (b *blackhole) fill(t *testing.T) {
	t.Helper()
	for range 10 {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(int(b.port)), 100*time.Millisecond)
		if err != nil {
			return
		}
		b.fills = append(b.fills, c)
	}
	t.Fatal("accept queue never filled")
}

// acceptOne takes a queued connection off the queue and returns it.
func (b *blackhole) acceptOne(t *testing.T) *os.File {
	t.Helper()
	nfd, _, err := syscall.Accept(b.fd)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(nfd), "accepted")
}

// A clean close followed by a reconnect that times out after
// timeout-clean-reconnect is down with Twisted's timeout message.
func TestIdleConnectionCleanCloseReconnectTimeout(t *testing.T) {
	m, reg := newTestManager(t)
	clk := newFakeClock()
	m.clk = clk
	bh := newBlackhole(t)
	r := idleWatch(t, m, bh.port, "idleconnection.timeout-clean-reconnect", "0.3")
	if res := r.next(t, 5*time.Second); !res.Up { // queued by the kernel = connected
		t.Fatalf("first result %+v", res)
	}
	server := bh.acceptOne(t)
	bh.fill(t)
	clk.Advance(10 * time.Second)
	start := time.Now()
	server.Close() // FIN
	res := r.next(t, 5*time.Second)
	if el := time.Since(start); el < 250*time.Millisecond || el > 2*time.Second {
		t.Errorf("reconnect gave up after %v, want ~0.3s", el)
	}
	if res.Up || res.Reason != "User timeout caused connection failure." {
		t.Fatalf("got %+v", res)
	}
	if v, _ := metricValue(t, reg, "pybal_monitor_idleconnection_connections_failed_total", map[string]string{"reason": "TimeoutError"}); v != 1 {
		t.Errorf("failed{TimeoutError} = %v", v)
	}
}

// Refused at start: down as the first result, then up once the server listens,
// after the backoff.
func TestIdleConnectionRefusedThenUp(t *testing.T) {
	m, _ := newTestManager(t)
	clk := newFakeClock()
	m.clk = clk
	port := closedTCPPort(t)
	r := idleWatch(t, m, port)
	if res := r.next(t, 5*time.Second); res.Up || !strings.Contains(res.Reason, "refused") {
		t.Fatalf("first result %+v", res)
	}
	newTCPBackend(t, port)
	clk.waitTimer(t)
	clk.Advance(clk.nextTimer())
	if res := r.next(t, 5*time.Second); !res.Up {
		t.Fatalf("after backoff: %+v", res)
	}
}

// idleconnection.port probes another port than the service port.
func TestIdleConnectionAlternatePort(t *testing.T) {
	m, _ := newTestManager(t)
	b := newTCPBackend(t, 0)
	r := newReports()
	stop, err := m.Watch(testService("svc", []string{"IdleConnection"}, "idleconnection.port", strconv.Itoa(int(b.port))),
		"IdleConnection", loopback(closedTCPPort(t)), r.report)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if res := r.next(t, 5*time.Second); !res.Up {
		t.Fatalf("%+v", res)
	}
}

// The TCP keepalive options reach the socket: ss shows the keepalive timer armed
// with keepalive-idle, and no timer with keepalive = false.
func TestIdleConnectionKeepaliveOptions(t *testing.T) {
	ss, err := exec.LookPath("ss")
	if err != nil {
		rigMissing(t, "ss (iproute2) not installed")
	}
	cases := []struct {
		kv   []string
		want string
	}{
		{[]string{"idleconnection.keepalive-idle", "7"}, "timer:(keepalive,"},
		{[]string{"idleconnection.keepalive", "false"}, ""},
	}
	for _, c := range cases {
		m, _ := newTestManager(t)
		b := newTCPBackend(t, 0)
		r := idleWatch(t, m, b.port, c.kv...)
		r.next(t, 5*time.Second)
		out, err := exec.Command(ss, "-tnoH", "state", "established", "dport", "= :"+strconv.Itoa(int(b.port))).CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v %s", err, out)
		}
		line := strings.TrimSpace(string(out))
		if c.want == "" {
			if strings.Contains(line, "keepalive") {
				t.Errorf("keepalive off but ss shows %q", line)
			}
			continue
		}
		i := strings.Index(line, c.want)
		if i < 0 {
			t.Fatalf("ss: %q lacks %q", line, c.want)
		}
		// timer:(keepalive,6.996ms,0) (iproute2 prints seconds.millis): armed
		// with at most keepalive-idle.
		rest := line[i+len(c.want):]
		secs, _ := strconv.ParseFloat(rest[:strings.IndexFunc(rest, func(r rune) bool { return r != '.' && (r < '0' || r > '9') })], 64)
		if secs <= 5 || secs > 7 {
			t.Errorf("keepalive timer %vs, want <= 7s", secs)
		}
	}
}

// rigMissing skips, or fails when KUBAL_REQUIRE_RIGS=1.
func rigMissing(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("KUBAL_REQUIRE_RIGS") == "1" {
		t.Fatalf("rig missing: %s", why)
	}
	t.Skipf("RIG MISSING, test skipped: %s", why)
}
