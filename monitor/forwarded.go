package monitor

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/ipvs"
)

// Forwarded probes (`<monitor>.path = forwarded`, ProxyFetch, IdleConnection and TCP):
// besides the usual probe of the server's own address, a second probe of the same
// monitor connects to the service's VIP with its socket marked (SO_MARK) with
// ipvs.ProbeMark(service, server). The local IPVS finds the helper firewall-mark
// service of that mark (plan.ProbePools) before the VIP's own service and sends the
// probe to that one server through the service's forwarding method: the packets
// reach the server as the traffic does, addressed to the VIP. A server whose VIP is
// missing (DR: not on its loopback; tunnel: no tunnel interface) fails this probe
// while it passes the direct one.

// PathDirect and PathForwarded are the values of `<monitor>.path`.
const (
	PathDirect    = "direct"
	PathForwarded = "forwarded"
)

// forwardedSuffix names the forwarded probe of a monitor: "ProxyFetch/forwarded".
const forwardedSuffix = "/forwarded"

// ForwardedReason is the reason of a server whose direct probe passes and whose
// forwarded probe fails.
const ForwardedReason = "answers on its own address but not on the VIP (forwarded path)"

// forwardable are the monitors that can probe through the VIP.
var forwardable = map[string]bool{"ProxyFetch": true, "IdleConnection": true, "TCP": true}

// ForwardedName is the monitor name of name's forwarded probe, as the coordinator,
// /pools and the metrics show it.
func ForwardedName(name string) string { return name + forwardedSuffix }

// splitForwarded parses a ForwardedName: the monitor and whether it is forwarded.
func splitForwarded(name string) (base string, forwarded bool) {
	return strings.CutSuffix(name, forwardedSuffix)
}

// Watched lists every monitor the service runs: its monitors, then the forwarded
// probe of each whose path is forwarded. The service watches each name.
func Watched(svc *config.Service) []string {
	out := append([]string(nil), svc.Monitors...)
	for _, name := range svc.Monitors {
		if IsForwarded(svc, name) {
			out = append(out, ForwardedName(name))
		}
	}
	return out
}

// IsForwarded reports whether the service's monitor name asks for a forwarded probe.
func IsForwarded(svc *config.Service, name string) bool {
	return forwardable[name] && strings.TrimSpace(svc.Monitor(name).String("path", PathDirect)) == PathForwarded
}

// HasForwarded reports whether any monitor of the service asks for forwarded probes.
func HasForwarded(svc *config.Service) bool {
	for _, name := range svc.Monitors {
		if IsForwarded(svc, name) {
			return true
		}
	}
	return false
}

// ForwardedVerdict is the result shown for a forwarded probe given the current result
// of the direct probe of the same monitor: a failure while the direct probe passes is
// ForwardedReason (then the probe's own error).
func ForwardedVerdict(direct, forwarded Result) Result {
	if forwarded.Up || !direct.Up || strings.HasPrefix(forwarded.Reason, ForwardedReason) {
		return forwarded
	}
	r := forwarded
	r.Reason = ForwardedReason
	if forwarded.Reason != "" {
		r.Reason += ": " + forwarded.Reason
	}
	return r
}

// forward is where a forwarded probe connects, and the mark that steers it.
type forward struct {
	vip  netip.Addr
	mark uint32
}

// path reads `<monitor>.path`; forwarded is whether this watch is the forwarded probe.
func (v *validator) path(forwarded bool) {
	if !v.mo.Has("path") {
		if forwarded {
			v.errf("path", "a forwarded probe needs %s.path = %s", v.name, PathForwarded)
		}
		return
	}
	switch p := strings.TrimSpace(v.mo.String("path", "")); {
	case p != PathDirect && p != PathForwarded:
		v.errf("path", "%q is not %s or %s", p, PathDirect, PathForwarded)
	case p == PathForwarded && !forwardable[v.name]:
		v.errf("path", "%s probes cannot be forwarded (only ProxyFetch, IdleConnection and TCP)", v.name)
	case p == PathForwarded && v.svc.Protocol == "udp":
		v.errf("path", "forwarded probes need a tcp service, not udp")
	}
}

// forwardDialer readies d for the forwarded probe of the server at addr (fwd nil: d
// as it is). The socket is marked (SO_MARK; kubal has CAP_NET_ADMIN for IPVS), and
// bound to the source address the kernel would use toward the server: left to
// itself, the kernel would pick the VIP as source when the host holds the VIP, and
// the server's answer would go to its own VIP.
func forwardDialer(d net.Dialer, fwd *forward, addr netip.Addr) (net.Dialer, error) {
	if fwd == nil {
		return d, nil
	}
	src, err := sourceFor(addr)
	if err != nil {
		return d, err
	}
	d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	mark := fwd.mark
	d.Control = func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = prepareForwarded(int(fd), int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("forwarded probe's socket: %w", serr)
		}
		return nil
	}
	return d, nil
}

// sourceFor is the local address of the route to addr (a connected UDP socket sends
// nothing: it only looks the route up).
func sourceFor(addr netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 9)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("forwarded probe: no route to the server %s: %w", addr, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// probeMark is the mark of svc's forwarded probes to the server at addr.
func probeMark(svc *config.Service, addr netip.Addr) uint32 {
	return ipvs.ProbeMark(ipvs.ServiceKey{Protocol: ipvs.Protocol(svc.Protocol), Addr: svc.IP, Port: svc.Port}, addr)
}
