//go:build linux

package ipvs

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkAddrs is the AddrBackend of a network namespace, over rtnetlink.
type NetlinkAddrs struct {
	h *netlink.Handle
}

// NewAddresses returns an Addresses that manages the VIPs of the network namespace at
// netnsPath ("" = the current one) through netlink.
func NewAddresses(netnsPath string, log *slog.Logger) (*Addresses, error) {
	b, err := NewNetlinkAddrs(netnsPath)
	if err != nil {
		return nil, err
	}
	return NewAddressesWith(b, log), nil
}

// NewNetlinkAddrs opens rtnetlink in the network namespace at netnsPath ("" = current).
func NewNetlinkAddrs(netnsPath string) (*NetlinkAddrs, error) {
	ns := netns.None()
	if netnsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(netnsPath); err != nil {
			return nil, fmt.Errorf("vip addresses: open netns %q: %w", netnsPath, err)
		}
		defer ns.Close()
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("vip addresses: netlink in netns %q: %w", netnsPath, err)
	}
	return &NetlinkAddrs{h: h}, nil
}

// Close releases the netlink socket.
func (n *NetlinkAddrs) Close() { n.h.Close() }

// List implements AddrBackend.
func (n *NetlinkAddrs) List(ctx context.Context, iface string) ([]netip.Prefix, error) {
	l, err := n.h.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	as, err := n.h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Prefix, 0, len(as))
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		if a.IP.To4() != nil {
			ip = ip.Unmap()
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// Add implements AddrBackend.
func (n *NetlinkAddrs) Add(ctx context.Context, iface string, p netip.Prefix) error {
	l, err := n.h.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", iface, err)
	}
	return n.h.AddrAdd(l, toNetlinkAddr(p))
}

// Delete implements AddrBackend.
func (n *NetlinkAddrs) Delete(ctx context.Context, iface string, p netip.Prefix) error {
	l, err := n.h.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", iface, err)
	}
	return n.h.AddrDel(l, toNetlinkAddr(p))
}

func toNetlinkAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // a VIP must be usable at once, not tentative
	}
	return a
}
