package k8ssource

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
)

// vipRequest is one Kubernetes Service's need for a VIP of one family.
type vipRequest struct {
	Owner string // namespace/name
	V6    bool
	// Order decides who wins a contested address: older Services first
	// (creationTimestamp as Unix nanoseconds), then by Owner.
	Order int64
	// Requested is the VIP the Service asks for (annotation or spec.loadBalancerIP),
	// zero when it asks for none.
	Requested netip.Addr
	// Current is the VIP in the Service's status.loadBalancer.ingress (written by
	// kubal on this or the other LVS host): kept while it is still valid, so an
	// allocation never moves once made.
	Current netip.Addr
	// Seed (the Service's UID) picks where the search for a free address starts.
	Seed string
}

func (r vipRequest) id() string { return r.Owner + "|" + family(r.V6) }

func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// vipResult is the outcome for one request: an address, or why there is none.
type vipResult struct {
	VIP    netip.Addr
	Refuse string // non-empty: no VIP, and why
}

// maxProbe bounds the search for a free address in one range: a /64 must not make
// one allocation walk 2^64 addresses.
const maxProbe = 1 << 16

// allocateVIPs assigns VIPs. It is a pure function of its inputs, so that two LVS
// hosts with the same view of the cluster compute the same assignment (they then
// write the same status, and never fight):
//
//  1. static pybal.conf VIPs are taken first;
//  2. oldest Service first, each claim on a specific address: a requested VIP
//     (annotation, spec.loadBalancerIP) is refused when outside the ranges (if any
//     are configured) or already taken (by a static service or an older Service's
//     claim); a VIP in the Service's status (kubal allocated it earlier, here or on
//     the other host) is kept while inside a range and free, so it never moves;
//  3. the rest, oldest first, get the first free address of a range of their family,
//     searching from a point derived from the Service's UID (so a new Service's
//     address does not depend on which other Services are being allocated at the
//     same moment, only on which addresses are taken).
func allocateVIPs(ranges []netip.Prefix, static map[netip.Addr]string, reqs []vipRequest) map[string]vipResult {
	taken := make(map[netip.Addr]string, len(static)+len(reqs))
	for a, name := range static {
		taken[a] = "static service [" + name + "]"
	}
	sorted := slices.Clone(reqs)
	slices.SortFunc(sorted, func(a, b vipRequest) int {
		return cmp.Or(cmp.Compare(a.Order, b.Order), strings.Compare(a.Owner, b.Owner), cmp.Compare(family(a.V6), family(b.V6)))
	})
	out := make(map[string]vipResult, len(reqs))
	inRanges := func(a netip.Addr) bool {
		for _, r := range ranges {
			if r.Contains(a) {
				return true
			}
		}
		return false
	}
	for _, r := range sorted {
		// One pass in age order over every claim on a specific address: a request,
		// or the address the Service already has in its status. The first claim
		// wins, so a VIP in use never moves to a newer Service that asks for it.
		switch {
		case r.Requested.IsValid():
			a := r.Requested
			switch {
			case len(ranges) > 0 && !inRanges(a):
				out[r.id()] = vipResult{Refuse: fmt.Sprintf("VIP %s is outside the vip-ranges %s", a, prefixes(ranges))}
			case taken[a] != "":
				out[r.id()] = vipResult{Refuse: fmt.Sprintf("VIP %s is already used by %s", a, taken[a])}
			default:
				taken[a] = "Service " + r.Owner
				out[r.id()] = vipResult{VIP: a}
			}
		case r.Current.IsValid() && inRanges(r.Current) && taken[r.Current] == "":
			taken[r.Current] = "Service " + r.Owner
			out[r.id()] = vipResult{VIP: r.Current}
		}
	}
	for _, r := range sorted {
		if _, done := out[r.id()]; done || r.Requested.IsValid() {
			continue
		}
		a, ok := freeAddr(ranges, r.V6, r.Seed, taken)
		if !ok && !slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Addr().Is6() == r.V6 }) {
			out[r.id()] = vipResult{Refuse: fmt.Sprintf("no %s VIP requested (annotation %s or spec.loadBalancerIP) and no %s vip-ranges to allocate from", family(r.V6), AnnotationVIP, family(r.V6))}
			continue
		}
		if !ok {
			out[r.id()] = vipResult{Refuse: fmt.Sprintf("no free %s address in the vip-ranges %s", family(r.V6), prefixes(ranges))}
			continue
		}
		taken[a] = "Service " + r.Owner
		out[r.id()] = vipResult{VIP: a}
	}
	return out
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "(none configured)"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// freeAddr searches the ranges of the family, in config order, for an address not
// taken, starting at an offset derived from seed. IPv4 ranges larger than /31 skip
// their network and broadcast addresses.
func freeAddr(ranges []netip.Prefix, v6 bool, seed string, taken map[netip.Addr]string) (netip.Addr, bool) {
	h := fnv.New64a()
	h.Write([]byte(seed))
	start := h.Sum64()
	for _, r := range ranges {
		if r.Addr().Is6() != v6 {
			continue
		}
		hostBits := r.Addr().BitLen() - r.Bits()
		size := uint64(1) << min(hostBits, 63)
		first, n := uint64(0), size
		if !v6 && hostBits > 1 {
			first, n = 1, size-2 // no network, no broadcast address
		}
		probe := min(n, maxProbe)
		off := start % n
		for i := range probe {
			a := addOffset(r.Addr(), first+(off+i)%n)
			if taken[a] == "" {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// addOffset returns base + n (n fits in the host bits of the range).
func addOffset(base netip.Addr, n uint64) netip.Addr {
	if base.Is4() {
		b := base.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(n)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := base.As16()
	lo := binary.BigEndian.Uint64(b[8:])
	hi := binary.BigEndian.Uint64(b[:8])
	nlo := lo + n
	if nlo < lo {
		hi++
	}
	binary.BigEndian.PutUint64(b[8:], nlo)
	binary.BigEndian.PutUint64(b[:8], hi)
	return netip.AddrFrom16(b)
}
