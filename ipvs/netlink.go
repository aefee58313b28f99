//go:build linux

package ipvs

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
)

// Service flag bits of the kernel (include/uapi/linux/ip_vs.h).
const (
	svcFlagHashed    = 0x0002
	svcFlagOnePacket = 0x0004
	svcFlagSched1    = 0x0008 // sh-fallback, mh-fallback
	svcFlagSched2    = 0x0010 // sh-port, mh-port
	svcFlagSched3    = 0x0020
)

// Netlink is the Backend that programs the kernel's IPVS table of one network
// namespace over generic netlink (github.com/moby/ipvs).
type Netlink struct {
	mu sync.Mutex
	h  *mobyipvs.Handle // dumps
	w  *genlWriter      // changes, batched
	// netns is the namespace's path ("" = this process's): sysctls are read and
	// written under /proc/sys, which is this process's namespace only.
	netns string
}

// Sysctl implements SysctlBackend (in the current network namespace only).
func (n *Netlink) Sysctl(name string) (string, error) {
	if n.netns != "" {
		return "", fmt.Errorf("sysctl %s: cannot read the sysctls of netns %q from this process", name, n.netns)
	}
	return ProcSys("").Sysctl(name)
}

// SetSysctl implements SysctlBackend (in the current network namespace only).
func (n *Netlink) SetSysctl(name, value string) error {
	if n.netns != "" {
		return fmt.Errorf("sysctl %s: cannot set the sysctls of netns %q from this process", name, n.netns)
	}
	return ProcSys("").SetSysctl(name, value)
}

// NewNetlink opens the IPVS table of the network namespace at netnsPath ("" = the
// current one). It fails with a clear error when the kernel has no IPVS, which
// moby/ipvs would not report (it returns empty dumps).
func NewNetlink(netnsPath string) (*Netlink, error) {
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	h, err := mobyipvs.New(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("ipvs: open netlink socket in netns %q: %w", netnsPath, err)
	}
	if _, err := h.GetServices(); err != nil {
		h.Close()
		return nil, fmt.Errorf("ipvs: first dump in netns %q: %w", netnsPath, err)
	}
	w, err := newGenlWriter(netnsPath)
	if err != nil {
		h.Close()
		return nil, err
	}
	return &Netlink{h: h, w: w, netns: netnsPath}, nil
}

// CheckKernel reports whether the running kernel offers IPVS (the generic netlink
// family "IPVS", registered by the ip_vs module), trying `modprobe ip_vs` once.
func CheckKernel() error {
	if _, err := netlink.GenlFamilyGet("IPVS"); err == nil {
		return nil
	}
	// The module may just not be loaded yet.
	_ = exec.Command("modprobe", "ip_vs").Run()
	_, err := netlink.GenlFamilyGet("IPVS")
	if err == nil {
		return nil
	}
	_, perr := os.Stat("/proc/net/ip_vs")
	return fmt.Errorf("ipvs: the kernel has no IPVS (generic netlink family \"IPVS\": %v; /proc/net/ip_vs: %v): "+
		"load the ip_vs module or run on a kernel built with CONFIG_IP_VS", err, perr)
}

// Close releases the netlink socket.
func (n *Netlink) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.h.Close()
	n.w.close()
}

// applyBatch sends many changes per round trip (the Reconciler's batcher).
func (n *Netlink) applyBatch(ctx context.Context, cs []change) []error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.w.apply(ctx, cs)
}

func (n *Netlink) one(ctx context.Context, c change) error { return n.applyBatch(ctx, []change{c})[0] }

// Services implements Backend. Non-TCP/UDP services are skipped: they are never
// kubal's. Firewall-mark services are listed (kubal's forwarded-probe helpers are
// some); the Reconciler touches only those it wants or owns.
func (n *Netlink) Services(ctx context.Context) ([]Service, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ss, err := n.h.GetServices()
	if err != nil {
		return nil, err
	}
	out := make([]Service, 0, len(ss))
	for _, s := range ss {
		if sv, ok := fromKernelService(s); ok {
			out = append(out, sv)
		}
	}
	return out, nil
}

// AddService implements Backend.
func (n *Netlink) AddService(ctx context.Context, s Service) error {
	return n.one(ctx, change{kind: OpAddService, k: s.ServiceKey, svc: s})
}

// UpdateService implements Backend.
func (n *Netlink) UpdateService(ctx context.Context, s Service) error {
	return n.one(ctx, change{kind: OpUpdateService, k: s.ServiceKey, svc: s})
}

// DeleteService implements Backend.
func (n *Netlink) DeleteService(ctx context.Context, k ServiceKey) error {
	return n.one(ctx, change{kind: OpDeleteService, k: k})
}

// Destinations implements Backend.
func (n *Netlink) Destinations(ctx context.Context, k ServiceKey) ([]Destination, error) {
	ks, err := toKernelService(Service{ServiceKey: k})
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	ds, err := n.h.GetDestinations(ks)
	if err != nil {
		return nil, err
	}
	out := make([]Destination, 0, len(ds))
	for _, d := range ds {
		out = append(out, fromKernelDest(d))
	}
	return out, nil
}

// AddDestination implements Backend.
func (n *Netlink) AddDestination(ctx context.Context, k ServiceKey, d Destination) error {
	return n.one(ctx, change{kind: OpAddDestination, k: k, d: d})
}

// UpdateDestination implements Backend.
func (n *Netlink) UpdateDestination(ctx context.Context, k ServiceKey, d Destination) error {
	return n.one(ctx, change{kind: OpUpdateDestination, k: k, d: d})
}

// DeleteDestination implements Backend.
func (n *Netlink) DeleteDestination(ctx context.Context, k ServiceKey, d Destination) error {
	return n.one(ctx, change{kind: OpDeleteDestination, k: k, d: d})
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

func toKernelService(s Service) (*mobyipvs.Service, error) {
	if s.FWMark != 0 {
		if err := validFWMark(s.ServiceKey); err != nil {
			return nil, err
		}
	} else if !s.Addr.IsValid() {
		return nil, fmt.Errorf("%w: service without address", ErrInvalidArgument)
	}
	ks := &mobyipvs.Service{
		Address:       net.IP(s.Addr.AsSlice()),
		Port:          s.Port,
		AddressFamily: family(s.Addr),
		SchedName:     s.Scheduler,
		Netmask:       0xFFFFFFFF,
	}
	if s.Addr.Is6() {
		ks.Netmask = 128 // the kernel rejects other values for IPv6 services
	}
	if ks.SchedName == "" {
		ks.SchedName = "wlc"
	}
	switch s.Protocol {
	case "":
		if s.FWMark == 0 {
			return nil, fmt.Errorf("%w: service without protocol", ErrInvalidArgument)
		}
		// A firewall-mark service: the kernel matches the mark only.
		ks.FWMark, ks.Address, ks.Port = s.FWMark, nil, 0
	case TCP:
		ks.Protocol = syscall.IPPROTO_TCP
	case UDP:
		ks.Protocol = syscall.IPPROTO_UDP
	default:
		return nil, fmt.Errorf("%w: protocol %q", ErrInvalidArgument, s.Protocol)
	}
	if s.OPS {
		ks.Flags |= svcFlagOnePacket
	}
	for _, f := range s.Flags {
		switch f {
		case "sh-fallback", "mh-fallback", "flag-1":
			ks.Flags |= svcFlagSched1
		case "sh-port", "mh-port", "flag-2":
			ks.Flags |= svcFlagSched2
		case "flag-3":
			ks.Flags |= svcFlagSched3
		default:
			return nil, fmt.Errorf("%w: scheduler flag %q", ErrInvalidArgument, f)
		}
	}
	return ks, nil
}

func fromKernelService(s *mobyipvs.Service) (Service, bool) {
	var out Service
	if s.FWMark != 0 {
		out.ServiceKey = FWMarkKey(s.FWMark, s.AddressFamily == syscall.AF_INET6)
		out.Scheduler = s.SchedName
		return out, true
	}
	switch s.Protocol {
	case syscall.IPPROTO_TCP:
		out.Protocol = TCP
	case syscall.IPPROTO_UDP:
		out.Protocol = UDP
	default:
		return out, false
	}
	a, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return out, false
	}
	if s.AddressFamily == syscall.AF_INET {
		a = a.Unmap()
	}
	out.Addr, out.Port, out.Scheduler = a, s.Port, s.SchedName
	out.OPS = s.Flags&svcFlagOnePacket != 0
	prefix := "flag-"
	names := [3]string{"1", "2", "3"}
	switch s.SchedName {
	case "sh", "mh":
		prefix = s.SchedName + "-"
		names = [3]string{"fallback", "port", ""}
	}
	for i, bit := range []uint32{svcFlagSched1, svcFlagSched2, svcFlagSched3} {
		if s.Flags&bit != 0 {
			name := names[i]
			if name == "" {
				prefix, name = "flag-", "3"
			}
			out.Flags = append(out.Flags, prefix+name)
		}
	}
	out.Flags = canonicalFlags(out.Flags)
	return out, true
}

func toKernelDest(k ServiceKey, d Destination) (*mobyipvs.Destination, error) {
	if !d.Addr.IsValid() {
		return nil, fmt.Errorf("%w: destination without address", ErrInvalidArgument)
	}
	if d.Weight < 0 {
		return nil, fmt.Errorf("%w: weight %d", ErrInvalidArgument, d.Weight)
	}
	kd := &mobyipvs.Destination{
		Address:       net.IP(d.Addr.AsSlice()),
		Port:          d.Port,
		Weight:        d.Weight,
		AddressFamily: family(d.Addr),
	}
	if kd.Port == 0 {
		kd.Port = k.Port
	}
	switch d.Forwarding {
	case DR, "":
		kd.ConnectionFlags = mobyipvs.ConnFwdDirectRoute
	case Tunnel:
		kd.ConnectionFlags = mobyipvs.ConnFwdTunnel
	case NAT:
		kd.ConnectionFlags = mobyipvs.ConnFwdMasq
	default:
		return nil, fmt.Errorf("%w: forwarding %q", ErrInvalidArgument, d.Forwarding)
	}
	return kd, nil
}

func fromKernelDest(d *mobyipvs.Destination) Destination {
	a, _ := netip.AddrFromSlice(d.Address)
	if d.AddressFamily == syscall.AF_INET {
		a = a.Unmap()
	}
	out := Destination{Addr: a, Port: d.Port, Weight: d.Weight, ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections}
	switch d.ConnectionFlags & mobyipvs.ConnFwdMask {
	case mobyipvs.ConnFwdDirectRoute:
		out.Forwarding = DR
	case mobyipvs.ConnFwdTunnel:
		out.Forwarding = Tunnel
	case mobyipvs.ConnFwdMasq:
		out.Forwarding = NAT
	default:
		out.Forwarding = "local"
	}
	return out
}
