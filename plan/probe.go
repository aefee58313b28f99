package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/ipvs"
)

// Probes are the helper firewall-mark services of forwarded probes
// (`<monitor>.path = forwarded`): one per (service, real server with an address),
// pooled or not (a depooled server is probed so that it can come back), marked
// ipvs.ProbeMark(service, server), with that server as its only destination and the
// service's forwarding method. Marks are a pure function of the service and the
// server, so a restarted kubal computes the same ones and adopts the kernel's helpers.
type Probes struct {
	Pools []ipvs.Pool // sorted by mark
	// Conflicts: pairs whose marks collide (1 in 2^24 per pair). Neither gets a
	// helper: their forwarded probes then reach the VIP's own service (no false
	// down, no forwarded check). Logged by the daemon.
	Conflicts []string
}

// ProbePools is the helper services of every configured service's forwarded probes.
// states as in Build.
func ProbePools(cfg *config.Config, states map[string]Service) Probes {
	type pair struct {
		svc  *config.Service
		addr netip.Addr
	}
	byMark := map[uint32][]pair{}
	for _, svc := range cfg.Services {
		st := states[svc.Name]
		if st.Snapshot == nil || !svc.HasForwarded() {
			continue
		}
		k := Key(svc)
		for _, sv := range st.Snapshot.Servers {
			if !sv.Addr.IsValid() {
				continue
			}
			m := ipvs.ProbeMark(k, sv.Addr)
			if prs := byMark[m]; len(prs) > 0 && prs[len(prs)-1].svc == svc && prs[len(prs)-1].addr == sv.Addr {
				continue // the same server listed twice
			}
			byMark[m] = append(byMark[m], pair{svc, sv.Addr})
		}
	}
	var out Probes
	for m, prs := range byMark {
		if len(prs) > 1 {
			for _, p := range prs {
				out.Conflicts = append(out.Conflicts, fmt.Sprintf("forwarded probe mark %d of service %s server %s collides with another pair: no helper service",
					m, p.svc.Name, p.addr))
			}
			continue
		}
		p := prs[0]
		out.Pools = append(out.Pools, ipvs.Pool{
			Service: ipvs.Service{ServiceKey: ipvs.FWMarkKey(m, p.addr.Is6()), Scheduler: "rr"},
			Destinations: []ipvs.Destination{{
				Addr: p.addr, Weight: 1, Forwarding: ipvs.Forwarding(p.svc.Forwarding),
			}},
		})
	}
	slices.SortFunc(out.Pools, func(a, b ipvs.Pool) int { return cmp.Compare(a.Service.FWMark, b.Service.FWMark) })
	slices.Sort(out.Conflicts)
	return out
}

// ProbeChanges returns what changed in the helper services since its last call: the
// pools to hand to ipvs.Reconciler.Update (new or changed), the keys to Remove, and
// the mark conflicts (Probes.Conflicts) when they changed, to log.
// It recomputes only after a config change or a change of a service with forwarded
// probes, so calling it after every Update costs nothing otherwise.
func (p *Planner) ProbeChanges() (update []ipvs.Pool, remove []ipvs.ServiceKey, conflicts []string) {
	if !p.probesDirty {
		return nil, nil, nil
	}
	p.probesDirty = false
	now := ProbePools(p.cfg, p.states)
	next := make(map[ipvs.ServiceKey]ipvs.Pool, len(now.Pools))
	for _, pl := range now.Pools {
		k := pl.Service.ServiceKey
		next[k] = pl
		if old, ok := p.probes[k]; !ok || !slices.Equal(old.Destinations, pl.Destinations) || !reflect.DeepEqual(old.Service, pl.Service) {
			update = append(update, pl)
		}
	}
	for k := range p.probes {
		if _, ok := next[k]; !ok {
			remove = append(remove, k)
		}
	}
	slices.SortFunc(remove, func(a, b ipvs.ServiceKey) int { return cmp.Compare(a.FWMark, b.FWMark) })
	p.probes = next
	if !slices.Equal(now.Conflicts, p.conflicts) {
		conflicts = now.Conflicts // reported when they change, not on every replan
	}
	p.conflicts = now.Conflicts
	return update, remove, conflicts
}
