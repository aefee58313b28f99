// Package plan computes the desired world - IPVS virtual services and destinations,
// VIP addresses, BGP announcements - as a pure function of the config and the services'
// published states. It does no I/O; the reconcilers converge the world to its output.
// (It uses the ipvs and bgp packages' value types only.)
package plan

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/kubal/kubal/bgp"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/pool"
)

// Service is what plan needs of one service's published state.
type Service struct {
	Snapshot *pool.Snapshot
	// Settled: the source synced and every server's address was resolved once. Until
	// then the kernel's extra destinations are kept, however long that takes: an
	// unsynced source never removes what the kernel holds.
	Settled bool
}

// Desired is the world kubal wants.
type Desired struct {
	Pools         []ipvs.Pool // config order, then the forwarded-probe helpers (ProbePools)
	VIPs          []ipvs.VIP
	Announcements []bgp.Announcement
	Sysctls       []ipvs.Sysctl // kernel settings the services need (Sysctls)
}

// Build is the whole plan. states maps service name -> state; a configured service
// without a state (not started yet) keeps whatever the kernel has.
func Build(cfg *config.Config, states map[string]Service) Desired {
	var d Desired
	for _, svc := range cfg.Services {
		d.Pools = append(d.Pools, Pool(svc, states[svc.Name]))
	}
	d.Pools = append(d.Pools, ProbePools(cfg, states).Pools...)
	d.VIPs = VIPs(cfg)
	d.Announcements = Announcements(cfg, states)
	d.Sysctls = Sysctls(cfg)
	return d
}

// Pool is one service's IPVS virtual service: its pooled servers with an address.
func Pool(svc *config.Service, st Service) ipvs.Pool {
	p := ipvs.Pool{
		Service: ipvs.Service{
			ServiceKey: Key(svc),
			Scheduler:  svc.Scheduler,
			Flags:      svc.SchedulerFlags,
			OPS:        svc.OPS,
		},
		Drain:        svc.DepoolMode == config.DepoolDrain,
		DrainTimeout: svc.DrainTimeout,
		KeepExtra:    !st.Settled || st.Snapshot == nil,
	}
	if st.Snapshot == nil {
		return p
	}
	p.Destinations = make([]ipvs.Destination, 0, len(st.Snapshot.Servers))
	for _, sv := range st.Snapshot.Servers {
		if sv.Awaiting && sv.Enabled && sv.Addr.IsValid() {
			// Not pooled before its first check, but not taken out by a restart either:
			// whatever the kernel holds for it stays until the check decides.
			p.Keep = append(p.Keep, sv.Addr)
		}
		if !sv.Pooled || !sv.Addr.IsValid() {
			continue
		}
		p.Destinations = append(p.Destinations, ipvs.Destination{
			Addr: sv.Addr, Weight: sv.Weight, Forwarding: ipvs.Forwarding(svc.Forwarding),
		})
	}
	return p
}

// Key is a service's IPVS virtual-service key.
func Key(svc *config.Service) ipvs.ServiceKey {
	return ipvs.ServiceKey{Protocol: ipvs.Protocol(svc.Protocol), Addr: svc.IP, Port: svc.Port}
}

// VIPs are the distinct service addresses (with their interface), in config order.
func VIPs(cfg *config.Config) []ipvs.VIP {
	var out []ipvs.VIP
	seen := map[ipvs.VIP]bool{}
	for _, svc := range cfg.Services {
		if v := (ipvs.VIP{Addr: svc.IP, Interface: svc.VIPInterface}); !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// Announcing counts the servers that keep a service's VIP announced (bgp.Desired):
// its pooled servers, and for an active-active service only those that are also up
// with a weight, since a director that cannot reach a real server must leave the
// flows to the others (a PyBal pool can be pooled but down under the depool
// threshold). known is false until the service settled, and while none serves but
// some await their first check (pool-unchecked = no): after a restart the kernel may
// still hold them (plan.Pool keeps them), so the check decides, not the restart.
func Announcing(svc *config.Service, st Service) (n int, known bool) {
	if !st.Settled || st.Snapshot == nil {
		return 0, false
	}
	awaiting := false
	for _, sv := range st.Snapshot.Servers {
		if sv.Pooled && sv.Addr.IsValid() && (!svc.ActiveActive || sv.Up && sv.Weight > 0) {
			n++
		}
		awaiting = awaiting || sv.Awaiting && sv.Enabled && sv.Addr.IsValid()
	}
	if n == 0 && awaiting {
		return 0, false
	}
	return n, true
}

// Announcements are the BGP routes (see bgp.Desired for the attributes and
// withdraw-when-empty).
func Announcements(cfg *config.Config, states map[string]Service) []bgp.Announcement {
	serving := map[string]int{}
	for _, svc := range cfg.Services {
		if n, ok := Announcing(svc, states[svc.Name]); ok {
			serving[svc.Name] = n
		}
	}
	return bgp.Desired(cfg, serving)
}

// Planner keeps the last plan per service, so a change to one service costs that
// service's pool, not the whole table. Desired always equals Build(config, states).
type Planner struct {
	cfg    *config.Config
	byName map[string]*config.Service
	pools  map[string]ipvs.Pool
	states map[string]Service
	// probes: the forwarded-probe helpers last returned by ProbeChanges; probesDirty:
	// they may have changed since.
	probes      map[ipvs.ServiceKey]ipvs.Pool
	probesDirty bool
	conflicts   []string
	changed     map[string]bool // services replanned since Changes
}

// NewPlanner returns a planner for cfg with no service states yet.
func NewPlanner(cfg *config.Config) *Planner {
	p := &Planner{pools: map[string]ipvs.Pool{}, states: map[string]Service{}, changed: map[string]bool{}}
	p.SetConfig(cfg)
	return p
}

// SetConfig replans every service for a new config (a reload).
func (p *Planner) SetConfig(cfg *config.Config) {
	p.cfg = cfg
	p.byName = make(map[string]*config.Service, len(cfg.Services))
	for _, svc := range cfg.Services {
		p.byName[svc.Name] = svc
	}
	next := make(map[string]ipvs.Pool, len(cfg.Services))
	for _, svc := range cfg.Services {
		next[svc.Name] = Pool(svc, p.states[svc.Name])
	}
	for name := range p.states {
		if _, ok := next[name]; !ok {
			delete(p.states, name)
		}
	}
	p.pools = next
	p.probesDirty = true
}

// Update replans one service. It reports whether the announcements may have changed
// (the service's pooled count crossed zero, or it settled).
func (p *Planner) Update(name string, st Service) (announce bool) {
	svc, ok := p.byName[name]
	if !ok {
		return false
	}
	on, known := Announcing(svc, st)
	was, wasKnown := Announcing(svc, p.states[name])
	p.states[name] = st
	p.pools[name] = Pool(svc, st)
	p.changed[name] = true
	if svc.HasForwarded() {
		p.probesDirty = true
	}
	return known != wasKnown || (on > 0) != (was > 0)
}

// Changes returns what changed since the last call: the pools to update (services
// replanned by Update, forwarded-probe helpers) and to remove, and new problems.
func (p *Planner) Changes() (update []ipvs.Pool, remove []ipvs.ServiceKey, problems []string) {
	for _, name := range slices.Sorted(maps.Keys(p.changed)) {
		update = append(update, p.pools[name])
	}
	clear(p.changed)
	pu, remove, problems := p.ProbeChanges()
	return append(update, pu...), remove, problems
}

// Pool is the current plan of one service.
func (p *Planner) Pool(name string) (ipvs.Pool, bool) {
	pl, ok := p.pools[name]
	return pl, ok
}

// Desired is the whole current plan.
func (p *Planner) Desired() Desired {
	d := Desired{VIPs: VIPs(p.cfg), Announcements: Announcements(p.cfg, p.states), Sysctls: Sysctls(p.cfg)}
	for _, svc := range p.cfg.Services {
		d.Pools = append(d.Pools, p.pools[svc.Name])
	}
	d.Pools = append(d.Pools, ProbePools(p.cfg, p.states).Pools...)
	return d
}

// Sysctls are the kernel settings the config's services need in kubal's network
// namespace.
//
// expire_nodest_conn ([global] ipvs-expire-nodest-conn = yes; off by default): IPVS
// keeps a connection entry per client address and port, and a SYN that matches one
// goes where the entry points, scheduler or not. An entry for a SYN a server never
// answered lives 60 s and every retransmission renews it, so without this setting a
// client that reuses that port (or simply keeps retrying) is sent to the server
// after it was depooled: to a removed server its packets are dropped, to a draining
// one (weight 0) they still go. With it, such a SYN is scheduled afresh (weight 0) or
// its entry expires at once (removed; the client's next SYN is scheduled). The cost,
// and why it is off by default: a packet of an established connection that arrives
// while its server is deleted expires the connection instead of being dropped and
// retransmitted, and kubal deletes and re-adds servers for an instant itself (an mh
// service's canonical order, canonicalize; a monitor flap with depool-mode delete).
// The ECMP rig lost 22 of 300 established connections to one backend add with it on.
//
// Active-active directors (docs/active-active.md): the router may move a flow to a
// director that never saw it start, so
//   - sloppy_tcp lets IPVS schedule a TCP flow from any packet, not only a SYN (else
//     the moved flow's packets are passed to the director's own stack and reset);
//   - schedule_icmp schedules ICMP errors of such flows (e.g. "fragmentation needed",
//     which path MTU discovery needs) to the same real server.
//
// With mh every director then picks the same real server, so the flow survives.
func Sysctls(cfg *config.Config) []ipvs.Sysctl {
	var want []ipvs.Sysctl
	if cfg.Global.IPVSExpireNodestConn {
		want = append(want, ipvs.Sysctl{Name: "net.ipv4.vs.expire_nodest_conn", Value: "1",
			Why: "ipvs-expire-nodest-conn: new connections of clients sent to a depooled server are scheduled afresh"})
	}
	for _, svc := range cfg.Services {
		if svc.ActiveActive {
			return append(want,
				ipvs.Sysctl{Name: "net.ipv4.vs.sloppy_tcp", Value: "1", Why: "active-active: schedule flows another director started"},
				ipvs.Sysctl{Name: "net.ipv4.vs.schedule_icmp", Value: "1", Why: "active-active: ICMP errors of flows another director started"})
		}
	}
	return want
}

// Leftover matches the IPVS services only kubal makes, whether or not cfg still wants
// them: forwarded-probe helpers (ipvs.IsProbeHelper) and the services of the
// [k8s-services] VIP ranges, which belong to kubal alone. Once the plan is complete
// (every source synced, the Kubernetes Services listed), those not in it are
// leftovers of an option removed or a Service deleted while kubal was down
// (ipvs.Reconciler.Sweep).
func Leftover(cfg *config.Config) func(ipvs.ServiceKey) bool {
	var ranges []netip.Prefix
	if cfg.K8sServices != nil {
		ranges = cfg.K8sServices.VIPRanges
	}
	return func(k ipvs.ServiceKey) bool {
		if ipvs.IsProbeHelper(k) {
			return true
		}
		for _, r := range ranges {
			if !k.IsFWMark() && r.Contains(k.Addr.Unmap()) {
				return true
			}
		}
		return false
	}
}
