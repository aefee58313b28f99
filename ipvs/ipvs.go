// Package ipvs programs IPVS virtual services: the desired-state types, the Backend
// interface with its netlink, in-memory fake and dry-run implementations, the
// Reconciler that converges the kernel to the desired state, and the VIP addresses.
package ipvs

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is "tcp" or "udp".
type Protocol string

const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Forwarding is the packet-forwarding method of a destination.
type Forwarding string

const (
	DR     Forwarding = "dr"     // gatewaying (ipvsadm -g), PyBal's only method
	Tunnel Forwarding = "tunnel" // IPIP (ipvsadm -i)
	NAT    Forwarding = "nat"    // masquerading (ipvsadm -m)
)

// ServiceKey identifies a virtual service in the kernel: protocol, address and port,
// or a firewall mark (FWMark != 0: Protocol empty, Port 0, Addr the unspecified
// address of the family; see FWMarkKey).
type ServiceKey struct {
	Protocol Protocol
	Addr     netip.Addr
	Port     uint16
	FWMark   uint32
}

func (k ServiceKey) String() string {
	if k.FWMark != 0 {
		return fwmarkSpec(k)
	}
	flag := "-t"
	if k.Protocol == UDP {
		flag = "-u"
	}
	return fmt.Sprintf("%s %s", flag, netip.AddrPortFrom(k.Addr, k.Port))
}

// Service is a virtual service's settings.
type Service struct {
	ServiceKey
	Scheduler string   // rr wrr lc wlc lblc lblcr dh sh sed nq mh
	Flags     []string // sh-port sh-fallback mh-port mh-fallback
	OPS       bool     // one-packet scheduling (UDP only)
}

// Destination is one real server of a virtual service.
type Destination struct {
	Addr       netip.Addr
	Port       uint16 // 0 = the virtual port (PyBal's `-r <ip>` without port)
	Weight     int    // 0 is a real 0 (PyBal cannot express it)
	Forwarding Forwarding
	// Counters reported by the backend when listing; ignored when programming.
	ActiveConns   int
	InactiveConns int
}

// Pool is the desired state of one configured service: the service and the
// destinations that should be in it.
type Pool struct {
	Service      Service
	Destinations []Destination
	Drain        bool          // depool-mode = drain: removed destinations go to weight 0 first
	DrainTimeout time.Duration // remove a draining destination after this even if busy
	// KeepExtra leaves destinations found in the kernel but not desired in place: set
	// after a restart until the monitors have spoken (hitless restart).
	KeepExtra bool
	// Keep lists real servers whose destinations the kernel may hold but that are not
	// desired: found there, they are left as they are; absent, they are not added.
	// plan sets it for servers awaiting their first check after a restart
	// (pool-unchecked = no), so the check decides, not the restart.
	Keep []netip.Addr
}

// Backend is one way to program IPVS: netlink (the kernel), Fake (memory), DryRun (logs
// ipvsadm lines). All methods are synchronous; the Reconciler calls them from one goroutine.
type Backend interface {
	Services(ctx context.Context) ([]Service, error)
	AddService(ctx context.Context, s Service) error
	UpdateService(ctx context.Context, s Service) error
	DeleteService(ctx context.Context, k ServiceKey) error
	Destinations(ctx context.Context, k ServiceKey) ([]Destination, error)
	AddDestination(ctx context.Context, k ServiceKey, d Destination) error
	UpdateDestination(ctx context.Context, k ServiceKey, d Destination) error
	DeleteDestination(ctx context.Context, k ServiceKey, d Destination) error
}
