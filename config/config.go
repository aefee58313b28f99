// Package config reads a PyBal pybal.conf (INI with SafeConfigParser rules and
// Python-literal lists, parsed safely, never evaluated) into a typed Config, and
// validates it, reporting every error with its file:line and key.
package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Config is one parsed and validated pybal.conf.
type Config struct {
	Path     string
	Global   Global
	Services []*Service // in file order; the section name is the pool name
	// K8sServices is the [k8s-services] template of Kubernetes-declared services
	// (nil: none).
	K8sServices *K8sServices
	Warnings    Diagnostics // unknown keys and other non-fatal findings
}

// Service returns the service (pool) with the given section name.
func (c *Config) Service(name string) (*Service, bool) {
	for _, s := range c.Services {
		if s.Name == name {
			return s, true
		}
	}
	return nil, false
}

// Global holds the [global] section: PyBal's keys and kubal's new ones.
type Global struct {
	// PyBal keys (SPEC §1.2, §12).
	BGP                          bool
	BGPLocalASN                  uint32 // 4-byte ASNs allowed (PyBal: 2-byte only)
	BGPASPath                    []uint32
	BGPMED                       uint32
	BGPNextHopIPv4               netip.Addr
	BGPNextHopIPv6               netip.Addr
	BGPPeerAddresses             []netip.Addr
	BGPLocalIPs                  []string // "" = all addresses
	BGPLocalPort                 int      // default 179
	Instrumentation              bool
	InstrumentationPort          int      // default 9090
	InstrumentationIPs           []string // default 127.0.0.1, ::1
	AdvertisedInstrumentationIPs []string
	DryRun                       bool // the `dry-run` key; the CLI -n also sets dry run

	// kubal keys (DESIGN.md "Config surface beyond PyBal").
	EtcdEndpoints      []string
	EtcdCA             string
	EtcdCert           string
	EtcdKey            string
	ConftoolPrefix     string // default /conftool/v1/pools
	Kubeconfig         string
	AdminPort          int      // default 9091
	AdminIPs           []string // default 127.0.0.1, ::1
	AdminTokenFile     string
	AdminTLSCert       string
	AdminTLSKey        string
	AdminClientCA      string
	StateFile          string // default /var/lib/kubal/state.json
	BGPHoldTime        time.Duration
	BGPCommunities     []string // "asn:value" standard communities
	BGPBFD             bool
	BGPBFDMinRx        time.Duration // default 300ms
	BGPBFDMinTx        time.Duration // default 300ms
	BGPBFDMultiplier   int           // default 3
	BGPGracefulRestart bool
	// VIPAddresses: kubal adds each service IP to its vip-interface (default lo) and
	// removes it when the service goes. Off by default: PyBal never touched addresses
	// (Puppet puts the VIPs on lo), and a PyBal config must behave as under PyBal.
	VIPAddresses bool
	// ActiveActive is the default of every service's active-active key.
	ActiveActive bool
	// IPVSExpireNodestConn (default off, the kernel's value left alone): kubal keeps
	// net.ipv4.vs.expire_nodest_conn = 1 (plan.Sysctls), so that depooling a server
	// also frees the clients already sent to it, at a cost (docs/config.md).
	IPVSExpireNodestConn bool

	Options Options // every key of the section, raw, with its position
}

// Service is one INI section other than [global]: one LVS virtual service.
type Service struct {
	Name string // section name = pool name
	Pos  Pos    // the section header

	// PyBal keys (SPEC §1.3, §12).
	Protocol        string // "tcp" or "udp"
	IP              netip.Addr
	Port            uint16
	Scheduler       string // rr wrr lc wlc lblc lblcr dh sh sed nq mh
	OPS             bool
	ConfigURL       string // file:// http(s):// etcd:// k8s://
	BGP             bool   // default true
	BGPMED          *uint32
	DepoolThreshold float64 // default 0.5
	Monitors        []string

	// kubal keys.
	Forwarding           Forwarding // dr (default), tunnel (also `tunneling = true`), nat
	SchedulerFlags       []string   // sh-port sh-fallback mh-port mh-fallback
	DepoolMode           DepoolMode // delete (default) or drain
	DrainTimeout         time.Duration
	BGPCommunities       []string
	BGPWithdrawWhenEmpty bool
	Conftool             string // "dc/cluster/service": admin overlay for non-etcd sources
	VIPInterface         string // default "lo"
	K8sCordoned          string // depool (default) or keep
	K8sTaints            []string
	// ActiveActive: several directors announce the VIP alike and the router spreads
	// flows over them by ECMP (docs/active-active.md). Needs scheduler = mh, so every
	// director sends a flow to the same real server; kubal then sets the IPVS sysctls
	// a director needs to carry flows it never saw start (plan.Sysctls), and announces
	// the VIP only while it has synced and can serve (plan.Announcing).
	ActiveActive bool
	// PoolUnchecked: a new real server is pooled before its first health check
	// (PyBal's optimistic pooling, the default). `pool-unchecked = no` pools it only
	// once every monitor has passed once, and a restart keeps its kernel destination
	// until then (pool.Coordinator.SetPoolUnchecked). The [k8s-services] default is no.
	PoolUnchecked bool

	Options Options // every key of the section, raw, with its position
}

// IPv6 reports whether the VIP is IPv6 (PyBal: a ':' in ip).
func (s *Service) IPv6() bool { return s.IP.Is6() && !s.IP.Is4In6() }

// Monitor returns the `<monitor>.<option>` options of one monitor (case-insensitive name).
func (s *Service) Monitor(name string) MonitorOptions {
	return MonitorOptions{Monitor: name, opts: s.Options, prefix: strings.ToLower(name) + "."}
}

// Forwarding is the IPVS packet-forwarding method.
type Forwarding string

const (
	ForwardDR     Forwarding = "dr"
	ForwardTunnel Forwarding = "tunnel"
	ForwardNAT    Forwarding = "nat"
)

// DepoolMode says what depooling does to an IPVS destination.
type DepoolMode string

const (
	DepoolDelete DepoolMode = "delete" // remove at once (PyBal)
	DepoolDrain  DepoolMode = "drain"  // weight 0, remove when idle or after drain-timeout
)

// Pos is a position in a config file.
type Pos struct {
	File string
	Line int
}

// String is "file:line", or just "file" for a finding about the whole file (Line 0).
func (p Pos) String() string {
	if p.Line <= 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d", p.File, p.Line)
}

// Value is one raw option value and where it was set.
type Value struct {
	Raw string // after %-interpolation
	Pos Pos
}

// Options are the raw options of one section (option names lower-cased, [DEFAULT]
// values included).
type Options map[string]Value

// Diagnostic is one error or warning, naming where it is.
type Diagnostic struct {
	Pos Pos
	Key string // option name, or "" for a section-level finding
	Msg string
}

func (d Diagnostic) String() string {
	if d.Key == "" {
		return fmt.Sprintf("%s: %s", d.Pos, d.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", d.Pos, d.Key, d.Msg)
}

// Diagnostics is a list of findings; as an error it reports all of them.
type Diagnostics []Diagnostic

func (ds Diagnostics) Error() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// MonitorOptions reads `<monitor>.<option>` keys with PyBal's typed-getter rules
// (util.ConfigDict: a default only when the key is missing; a bad value is an error
// naming file:line and key).
type MonitorOptions struct {
	Monitor string
	opts    Options
	prefix  string
}
