// Package bgp announces the service IPs to routers with an embedded GoBGP speaker.
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
