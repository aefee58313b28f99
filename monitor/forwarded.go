package monitor

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

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
	PathForwarded = config.PathForwarded
)

// ForwardedStartDelay is how long a forwarded probe waits before its first check or
// connect: the daemon creates the server's helper service when the server appears,
// at the same time as the watch, and the reconciler applies it within its pass
// interval (100 ms).
const ForwardedStartDelay = 2 * time.Second

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
	return forwardable[name] && svc.Forwarded(name)
}

// HasForwarded reports whether any monitor of the service asks for forwarded probes.
func HasForwarded(svc *config.Service) bool { return svc.HasForwarded() }

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
	vip    netip.Addr
	mark   uint32
	server netip.Addr

	mu      sync.Mutex // the interface cache (failures only)
	iface   string     // the interface toward server, if this host holds the VIP
	ifaceAt time.Time
}

// ifaceTTL bounds how often a failing forwarded probe re-reads the host's addresses;
// the sysctl is read on every failure, so a fixed setting shows at once.
const ifaceTTL = 30 * time.Second

// explain wraps emit: a failure gets a hint when this host cannot receive the answers
// at all (it holds the VIP and drops packets from it as martians: accept_local = 0),
// a setting of the LVS host that fails every forwarded probe, not the server's fault.
func (f *forward) explain(emit func(Result)) func(Result) {
	return func(r Result) {
		if !r.Up {
			r.Reason += f.hostHint()
		}
		emit(r)
	}
}

func (f *forward) hostHint() string {
	f.mu.Lock()
	if now := time.Now(); now.Sub(f.ifaceAt) > ifaceTTL {
		f.iface, f.ifaceAt = vipHolderIface(f.vip, f.server), now
	}
	out := f.iface
	f.mu.Unlock()
	if out == "" {
		return ""
	}
	on := func(name string) bool {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + name + "/accept_local")
		return err != nil || strings.TrimSpace(string(b)) != "0" // unknown: no hint
	}
	if on("all") || on(out) {
		return ""
	}
	return fmt.Sprintf(" (this host holds the VIP %s and net.ipv4.conf.%s.accept_local = 0: the server's answers from the VIP are dropped as martians; every forwarded probe fails until it is 1)", f.vip, out)
}

// vipHolderIface is the interface toward server when this host holds the IPv4 VIP
// (where accept_local matters); "" otherwise or when unknown.
func vipHolderIface(vip, server netip.Addr) string {
	if !vip.Is4() {
		return ""
	}
	src, err := sourceFor(server)
	if err != nil {
		return ""
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return ""
	}
	holdsVIP, out := false, ""
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			switch p.Addr().Unmap() {
			case vip:
				holdsVIP = true
			case src:
				out = ifc.Name
			}
		}
	}
	if !holdsVIP {
		return ""
	}
	return out
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
