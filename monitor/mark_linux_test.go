//go:build linux

package monitor

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// A forwarded probe's socket carries the mark, is bound to the route's source address
// (not the VIP), and defers its port to connect() (IP_BIND_ADDRESS_NO_PORT): without
// that, binding the source at thousands of probes/s exhausted the ports
// (EADDRINUSE, seen in BenchmarkForwardedProbe) and cost 7 ms of CPU per probe.
func TestForwardedSocketOptions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: SO_MARK needs CAP_NET_ADMIN (run as root)")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	server := netip.MustParseAddr("127.0.0.1")
	d, err := forwardDialer(net.Dialer{}, &forward{vip: server, mark: 0x4b000123}, server)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark, noPort int
	var e1, e2 error
	rc.Control(func(fd uintptr) {
		mark, e1 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK)
		noPort, e2 = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT)
	})
	if e1 != nil || e2 != nil || mark != 0x4b000123 || noPort != 1 {
		t.Errorf("SO_MARK %#x (%v), IP_BIND_ADDRESS_NO_PORT %d (%v); want 0x4b000123 and 1", mark, e1, noPort, e2)
	}
	if src := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); src != server {
		t.Errorf("source %s, want the route's %s", src, server)
	}
}
