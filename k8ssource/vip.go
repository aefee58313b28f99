package k8ssource

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
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
	out, _ := allocateAll(ranges, static, reqs)
	return out
}

// holder is who holds an address in an allocation.
type holder struct {
	desc string // "static service [name]", "Service namespace/name"
	// free: allocated by the search for a free address (step 3), not claimed (step
	// 2): a claim by a newer Service would take it over.
	free bool
}

// allocateAll is allocateVIPs, also returning every address held and by whom.
func allocateAll(ranges []netip.Prefix, static map[netip.Addr]string, reqs []vipRequest) (map[string]vipResult, map[netip.Addr]holder) {
	taken := make(map[netip.Addr]holder, len(static)+len(reqs))
	for a, name := range static {
		taken[a] = holder{desc: "static service [" + name + "]"}
	}
	sorted := slices.Clone(reqs)
	slices.SortFunc(sorted, compareRequests)
	out := make(map[string]vipResult, len(reqs))
	for _, r := range sorted {
		// One pass in age order over every claim on a specific address: a request,
		// or the address the Service already has in its status. The first claim
		// wins, so a VIP in use never moves to a newer Service that asks for it.
		if res, ok := claim(ranges, taken, r); ok {
			out[r.id()] = res
			if res.VIP.IsValid() {
				taken[res.VIP] = holder{desc: "Service " + r.Owner}
			}
		}
	}
	for _, r := range sorted {
		if _, done := out[r.id()]; done || r.Requested.IsValid() {
			continue
		}
		res := search(ranges, taken, r)
		out[r.id()] = res
		if res.VIP.IsValid() {
			taken[res.VIP] = holder{desc: "Service " + r.Owner, free: true}
		}
	}
	return out, taken
}

// compareRequests is the allocation order: oldest first, then by owner and family.
func compareRequests(a, b vipRequest) int {
	return cmp.Or(cmp.Compare(a.Order, b.Order), strings.Compare(a.Owner, b.Owner), cmp.Compare(family(a.V6), family(b.V6)))
}

func inRanges(ranges []netip.Prefix, a netip.Addr) bool {
	for _, r := range ranges {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

// claim is step 2 for one request, given the addresses taken before it: ok false
// when the request makes no claim (it is left to search).
func claim(ranges []netip.Prefix, taken map[netip.Addr]holder, r vipRequest) (vipResult, bool) {
	switch {
	case r.Requested.IsValid():
		a := r.Requested
		h, isTaken := taken[a]
		switch {
		case len(ranges) > 0 && !inRanges(ranges, a):
			return vipResult{Refuse: fmt.Sprintf("VIP %s is outside the vip-ranges %s", a, prefixes(ranges))}, true
		case isTaken:
			return vipResult{Refuse: fmt.Sprintf("VIP %s is already used by %s", a, h.desc)}, true
		default:
			return vipResult{VIP: a}, true
		}
	case r.Current.IsValid() && inRanges(ranges, r.Current):
		if _, isTaken := taken[r.Current]; !isTaken {
			return vipResult{VIP: r.Current}, true
		}
	}
	return vipResult{}, false
}

// search is step 3 for one request, given the addresses taken before it.
func search(ranges []netip.Prefix, taken map[netip.Addr]holder, r vipRequest) vipResult {
	a, ok := freeAddr(ranges, r.V6, r.Seed, taken)
	switch {
	case ok:
		return vipResult{VIP: a}
	case !slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Addr().Is6() == r.V6 }):
		return vipResult{Refuse: fmt.Sprintf("no %s VIP requested (annotation %s or spec.loadBalancerIP) and no %s vip-ranges to allocate from", family(r.V6), AnnotationVIP, family(r.V6))}
	default:
		return vipResult{Refuse: fmt.Sprintf("no free %s address in the vip-ranges %s", family(r.V6), prefixes(ranges))}
	}
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
func freeAddr(ranges []netip.Prefix, v6 bool, seed string, taken map[netip.Addr]holder) (netip.Addr, bool) {
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
			if _, isTaken := taken[a]; !isTaken {
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

// reqChange is a Service's new VIP requests (nil: it has none, gone or not owned).
type reqChange struct {
	owner string
	reqs  []vipRequest
}

// allocate brings the controller's allocation (st.vips, st.taken) up to date with
// the changed requests, keeping it equal to allocateVIPs over every owned Service's
// requests, so that the outcome never depends on the order events arrived in. It
// returns the other Services whose result changed (to be re-derived).
//
// A change is applied on its own when its effect provably stays with its Service
// (see allocateOne): the write of a Service's own status (most events of a cold
// start), a new Service (the newest: it comes last in both steps), a Service gone
// whose addresses no other request names while no other request searched. Otherwise
// (a changed or cleared request, a new Service claiming an address a search gave
// another, a deletion while other Services search: each can free or take an address
// another Service's result depends on, who wins a collision or whose search skips
// which address) the whole allocation is redone, a sort and a walk of the requests
// (~0.4 ms for 1,000 Services, BenchmarkServiceEvent), and only the Services whose
// result moved are re-derived.
func (s *Services) allocate(st *servicesState, full bool, changes []reqChange) (moved []string) {
	if !full {
		for i, c := range changes {
			if !s.allocateOne(st, c) {
				changes, full = changes[i:], true
				break
			}
		}
		if !full {
			return nil
		}
	}
	changed := map[string]bool{}
	for _, c := range changes {
		changed[c.owner] = true
		if len(c.reqs) == 0 {
			delete(st.reqs, c.owner)
		} else {
			st.reqs[c.owner] = c.reqs
		}
	}
	st.fullAllocs++
	var all []vipRequest
	for _, rs := range st.reqs {
		all = append(all, rs...)
	}
	vips, taken := allocateAll(s.t.VIPRanges, st.staticIPs, all)
	st.newest = vipRequest{}
	for _, r := range all {
		if st.newest.Owner == "" || compareRequests(r, st.newest) > 0 {
			st.newest = r
		}
	}
	for id, r := range vips {
		if old, ok := st.vips[id]; !ok || old != r {
			changed[ownerOf(id)] = true
		}
	}
	for id := range st.vips {
		if _, ok := vips[id]; !ok {
			changed[ownerOf(id)] = true
		}
	}
	st.vips, st.taken = vips, taken
	st.byAddr, st.searching = map[netip.Addr]map[string]bool{}, map[string]bool{}
	for owner := range st.reqs {
		st.index(owner)
	}
	for _, c := range changes {
		delete(changed, c.owner) // re-derived anyway
	}
	return slices.Sorted(maps.Keys(changed))
}

func ownerOf(id string) string {
	owner, _, _ := strings.Cut(id, "|")
	return owner
}

// allocateOne applies one Service's change to the allocation when that cannot
// change any other Service's result, and reports whether it did.
func (s *Services) allocateOne(st *servicesState, c reqChange) bool {
	old := st.reqs[c.owner]
	switch {
	case len(old) > 0 && len(old) == len(c.reqs):
		// Only the status moved, to the address the allocation gave (the echo of
		// kubal's own status write), or is ignored (a requested VIP comes first):
		// the result stays, and whatever search (step 3) found it is now a claim
		// (step 2) in the same place, before every search that skipped it. No
		// other result changes: an address earlier claimants did not take and
		// earlier searches did not return becomes taken earlier.
		for i, r := range c.reqs {
			o := old[i]
			o.Current = r.Current
			res := st.vips[r.id()]
			if o != r || !(r.Requested.IsValid() || res.VIP.IsValid() && r.Current == res.VIP) {
				return false
			}
		}
		st.unindex(c.owner)
		st.reqs[c.owner] = c.reqs
		st.index(c.owner)
		for _, r := range c.reqs {
			if res := st.vips[r.id()]; res.VIP.IsValid() && r.Current == res.VIP {
				st.taken[res.VIP] = holder{desc: "Service " + c.owner}
			}
		}
		return true
	case len(old) == 0 && len(c.reqs) > 0:
		// A new Service that sorts after every other request: its claims come
		// after every other claim, and its search after every other search. Its
		// claim is refused (or left to search) on an address claimed before; on
		// an address a search found it would win it, moving that Service: not
		// done here. A free address it claims was returned by no search, so
		// taking it earlier moves none.
		if st.newest.Owner != "" && compareRequests(c.reqs[0], st.newest) <= 0 {
			return false
		}
		results := make([]vipResult, len(c.reqs))
		for i, r := range c.reqs {
			for _, a := range []netip.Addr{r.Requested, r.Current} {
				if h, ok := st.taken[a]; ok && h.free && a.IsValid() && inRanges(s.t.VIPRanges, a) {
					return false
				}
			}
			res, ok := claim(s.t.VIPRanges, st.taken, r)
			if !ok {
				res = search(s.t.VIPRanges, st.taken, r)
			}
			results[i] = res
		}
		for i, r := range c.reqs {
			st.vips[r.id()] = results[i]
			if a := results[i].VIP; a.IsValid() {
				st.taken[a] = holder{desc: "Service " + c.owner, free: a != r.Requested && a != r.Current}
			}
			if compareRequests(r, st.newest) > 0 || st.newest.Owner == "" {
				st.newest = r
			}
		}
		st.reqs[c.owner] = c.reqs
		st.index(c.owner)
		return true
	case len(old) > 0 && len(c.reqs) == 0:
		// A Service gone: its addresses are free again. That changes no other
		// result when no other request names them (one refused because the
		// Service had it, or whose status has it) and no other request searched
		// (step 3 might have skipped them): every other result is a claim on
		// another address, or a refusal that does not involve them.
		for _, r := range old {
			a := st.vips[r.id()].VIP
			if !a.IsValid() {
				continue
			}
			for id := range st.byAddr[a] {
				if ownerOf(id) != c.owner {
					return false
				}
			}
		}
		for id := range st.searching {
			if ownerOf(id) != c.owner {
				return false
			}
		}
		st.unindex(c.owner)
		for _, r := range old {
			if a := st.vips[r.id()].VIP; a.IsValid() {
				delete(st.taken, a)
			}
			delete(st.vips, r.id())
		}
		delete(st.reqs, c.owner)
		return true
	}
	return false
}

// index adds a Service's requests to st.byAddr and st.searching (after its results
// are in st.vips); unindex removes them.
func (st *servicesState) index(owner string) {
	for _, r := range st.reqs[owner] {
		for _, a := range []netip.Addr{r.Requested, r.Current} {
			if a.IsValid() {
				if st.byAddr[a] == nil {
					st.byAddr[a] = map[string]bool{}
				}
				st.byAddr[a][r.id()] = true
			}
		}
		if res := st.vips[r.id()]; !r.Requested.IsValid() && !(res.VIP.IsValid() && res.VIP == r.Current) {
			st.searching[r.id()] = true
		}
	}
}

func (st *servicesState) unindex(owner string) {
	for _, r := range st.reqs[owner] {
		for _, a := range []netip.Addr{r.Requested, r.Current} {
			if ids := st.byAddr[a]; ids != nil {
				delete(ids, r.id())
				if len(ids) == 0 {
					delete(st.byAddr, a)
				}
			}
		}
		delete(st.searching, r.id())
	}
}
