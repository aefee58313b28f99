package bgp

import (
	"net/netip"
	"slices"

	"github.com/kubal/kubal/config"
)

// Desired computes the announcement set from the config.
//
// Every distinct VIP of a service with `bgp` true (the default) is announced as a /32
// or /128 while `[global] bgp = yes`, as PyBal does. Its attributes:
//   - NextHop: bgp-nexthop-ipv4 or bgp-nexthop-ipv6 by the VIP's family;
//   - ASPath: bgp-as-path (default: the local ASN);
//   - MED: the first service on the VIP (file order) with its own bgp-med, else the
//     global bgp-med (PyBal requires services sharing a VIP to agree; config checks it);
//   - Communities: the global bgp-communities, then those of every service on the VIP,
//     without duplicates.
//
// bgp-withdraw-when-empty (kubal): the VIP is reference-counted over the bgp-enabled
// services on it. A service without the key always holds a reference (PyBal's static
// announcement); a service with it holds one only while it has a pooled server. The
// VIP is withdrawn when no service holds a reference. A service missing from pooled is
// treated as not empty: its pool is not known yet (start-up), and a restart must
// announce before it withdraws.
//
// active-active (kubal): the other directors carry the VIP's flows, so a service holds
// a reference only once its pool is known (a new or restarted director announces
// after its first sync) and while it can serve (plan.Announcing).
//
// serving maps service (section) name -> number of servers that keep it announced
// (pooled ones; plan.Announcing). The result is sorted by prefix.
func Desired(cfg *config.Config, serving map[string]int) []Announcement {
	if cfg == nil || !cfg.Global.BGP {
		return nil
	}
	g := &cfg.Global
	asPath := g.BGPASPath
	if len(asPath) == 0 {
		asPath = []uint32{g.BGPLocalASN}
	}

	type vip struct {
		ann  Announcement
		med  bool // MED taken from a service
		refs int
	}
	byIP := map[netip.Addr]*vip{}
	var order []netip.Addr
	for _, s := range cfg.Services {
		if s == nil || !s.BGP || !s.IP.IsValid() {
			continue
		}
		ip := s.IP.Unmap()
		v, ok := byIP[ip]
		if !ok {
			v = &vip{ann: Announcement{
				Prefix:      netip.PrefixFrom(ip, ip.BitLen()),
				MED:         g.BGPMED,
				ASPath:      slices.Clone(asPath),
				Communities: appendUnique(nil, g.BGPCommunities...),
			}}
			if ip.Is4() {
				v.ann.NextHop = g.BGPNextHopIPv4
			} else {
				v.ann.NextHop = g.BGPNextHopIPv6
			}
			byIP[ip] = v
			order = append(order, ip)
		}
		if s.BGPMED != nil && !v.med {
			v.ann.MED, v.med = *s.BGPMED, true
		}
		v.ann.Communities = appendUnique(v.ann.Communities, s.BGPCommunities...)
		switch n, known := serving[s.Name]; {
		case s.ActiveActive:
			if known && n > 0 {
				v.refs++
			}
		case !s.BGPWithdrawWhenEmpty, !known, n > 0:
			v.refs++
		}
	}

	out := make([]Announcement, 0, len(order))
	for _, ip := range order {
		if v := byIP[ip]; v.refs > 0 {
			out = append(out, v.ann)
		}
	}
	slices.SortFunc(out, func(a, b Announcement) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

func appendUnique(dst []string, vals ...string) []string {
	for _, v := range vals {
		if !slices.Contains(dst, v) {
			dst = append(dst, v)
		}
	}
	return dst
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// Equal reports whether two announcements carry the same prefix and attributes.
func (a Announcement) Equal(b Announcement) bool {
	return a.Prefix == b.Prefix && a.NextHop == b.NextHop && a.MED == b.MED &&
		slices.Equal(a.ASPath, b.ASPath) && slices.Equal(a.Communities, b.Communities)
}
