// Package bgp announces the service IPs to routers with an embedded GoBGP speaker.
//
// The daemon computes the announcement set with Desired (from the config and the
// number of pooled servers per service) and hands the whole set to Speaker.Set; the
// speaker diffs it against what it advertises. Differences from PyBal's speaker
// (SPEC §6), all deliberate:
//   - 4-byte ASNs work (4-octet AS capability); route refresh, graceful restart
//     (opt-in, bgp-graceful-restart) and BFD (opt-in, bgp-bfd) are supported.
//   - The peer's AS is not configured in PyBal either: any AS is accepted.
//   - AS_PATH: GoBGP prepends the local AS on eBGP sessions, so one leading local AS
//     of bgp-as-path is dropped before handing the path over; routers see exactly
//     bgp-as-path when it starts with the local AS (PyBal's default). A path that
//     does not start with it arrives with the local AS prepended (RFC 4271 wants the
//     first AS to be the sender's).
//   - Hold time: bgp-hold-time (default PyBal's 180 s). Connect retry and idle hold
//     after a reset are 5 s (PyBal: 30 s) so a router that comes back gets the routes
//     quickly.
//   - Communities (bgp-communities, global and per service) are sent; PyBal sent none.
//   - Shutdown withdraws everything, then sends a Cease (administrative shutdown) to
//     every peer; Detach (planned restart with bgp-graceful-restart) closes the
//     sessions without a Cease so routers keep the routes until kubal is back.
package bgp

import (
	"net/netip"
)

// Announcement is one prefix this host advertises, with its path attributes.
type Announcement struct {
	Prefix      netip.Prefix // a /32 or /128 VIP
	NextHop     netip.Addr
	MED         uint32
	ASPath      []uint32
	Communities []string // "asn:value"
}
