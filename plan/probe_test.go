package plan

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/pool"
)

// forwarded sets `<monitor>.path = forwarded` on the service's TCP monitor.
func forwarded(s *config.Service) {
	s.Monitors = []string{"TCP"}
	s.Options = config.Options{"tcp.path": {Raw: "forwarded"}}
}

func helper(k ipvs.ServiceKey, addr netip.Addr, fwd string) ipvs.Pool {
	return ipvs.Pool{
		Service:      ipvs.Service{ServiceKey: ipvs.FWMarkKey(ipvs.ProbeMark(k, addr), addr.Is6()), Scheduler: "rr"},
		Destinations: []ipvs.Destination{{Addr: addr, Weight: 1, Forwarding: ipvs.Forwarding(fwd)}},
	}
}

func sortByMark(ps []ipvs.Pool) []ipvs.Pool {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b ipvs.Pool) int { return int(int64(a.Service.FWMark) - int64(b.Service.FWMark)) })
	return ps
}

func TestProbePools(t *testing.T) {
	pooled := pool.ServerState{Host: "a", Addr: a1, Weight: 10, Pooled: true}
	depooled := pool.ServerState{Host: "b", Addr: a2, Weight: 10}
	unresolved := pool.ServerState{Host: "c", Weight: 10, Pooled: true}
	v6 := netip.MustParseAddr("2001:db8::1")
	web := svc("web", vip1, forwarded)
	tun := svc("tun", vip2, forwarded, func(s *config.Service) { s.Forwarding = "tunnel" })
	web6 := svc("web6", netip.MustParseAddr("2001:db8::10"), forwarded)
	plain := svc("plain", vip1, func(s *config.Service) { s.Port = 443 })
	tests := []struct {
		name   string
		cfg    []*config.Service
		states map[string]Service
		want   []ipvs.Pool
	}{
		{"no forwarded monitor: no helper", []*config.Service{plain},
			map[string]Service{"plain": {Snapshot: snap(pooled), Settled: true}}, nil},
		{"one helper per server with an address, pooled or not; the service's forwarding", []*config.Service{web},
			map[string]Service{"web": {Snapshot: snap(pooled, depooled, unresolved), Settled: true}},
			[]ipvs.Pool{helper(Key(web), a1, "dr"), helper(Key(web), a2, "dr")}},
		{"unsettled services get their helpers too (the probes run)", []*config.Service{web},
			map[string]Service{"web": {Snapshot: snap(pooled)}}, []ipvs.Pool{helper(Key(web), a1, "dr")}},
		{"no state yet: none", []*config.Service{web}, nil, nil},
		{"tunnel service: tunnel helpers; one server in two services: two marks", []*config.Service{web, tun, plain},
			map[string]Service{"web": {Snapshot: snap(pooled)}, "tun": {Snapshot: snap(pooled)}, "plain": {Snapshot: snap(pooled)}},
			[]ipvs.Pool{helper(Key(web), a1, "dr"), helper(Key(tun), a1, "tunnel")}},
		{"IPv6: an IPv6 firewall-mark service", []*config.Service{web6},
			map[string]Service{"web6": {Snapshot: snap(pool.ServerState{Host: "a", Addr: v6})}},
			[]ipvs.Pool{helper(Key(web6), v6, "dr")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ProbePools(&config.Config{Services: tt.cfg}, tt.states)
			if len(got.Conflicts) > 0 {
				t.Errorf("conflicts: %v", got.Conflicts)
			}
			if !equalPools(got.Pools, sortByMark(tt.want)) {
				t.Errorf("got %+v\nwant %+v", got.Pools, sortByMark(tt.want))
			}
			for _, p := range got.Pools {
				if !ipvs.IsProbeMark(p.Service.FWMark) {
					t.Errorf("mark %d outside kubal's probe range", p.Service.FWMark)
				}
			}
		})
	}
}

func equalPools(a, b []ipvs.Pool) bool {
	return slices.EqualFunc(a, b, func(x, y ipvs.Pool) bool {
		return x.Service.ServiceKey == y.Service.ServiceKey && x.Service.Scheduler == y.Service.Scheduler &&
			slices.Equal(x.Destinations, y.Destinations) && x.KeepExtra == y.KeepExtra
	})
}

// A server's mark depends on its service and address only: adding or removing other
// servers (or services) never moves it, so a restart finds the same helpers.
func TestProbeMarksAreStable(t *testing.T) {
	web := svc("web", vip1, forwarded)
	one := ProbePools(&config.Config{Services: []*config.Service{web}}, map[string]Service{"web": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1})}})
	more := ProbePools(&config.Config{Services: []*config.Service{svc("x", vip2, forwarded), web}}, map[string]Service{
		"web": {Snapshot: snap(pool.ServerState{Host: "b", Addr: a2}, pool.ServerState{Host: "a", Addr: a1})},
		"x":   {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1})},
	})
	if !slices.ContainsFunc(more.Pools, func(p ipvs.Pool) bool { return p.Service.ServiceKey == one.Pools[0].Service.ServiceKey }) {
		t.Errorf("a1's helper %v moved: %+v", one.Pools[0].Service.ServiceKey, more.Pools)
	}
}

// Two pairs whose marks collide get no helper (a probe steered to the other server
// would judge the wrong one), and the conflict is reported. (A colliding pair of
// two services is found by a seeded random search.)
func TestProbeMarkCollision(t *testing.T) {
	type pair struct {
		port uint16
		addr netip.Addr
	}
	seen := map[uint32]pair{}
	var x, y pair
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1 << 20 {
		pr := pair{uint16(1 + rng.IntN(65535)), netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})}
		m := ipvs.ProbeMark(ipvs.ServiceKey{Protocol: ipvs.TCP, Addr: vip1, Port: pr.port}, pr.addr)
		if o, ok := seen[m]; ok && o != pr {
			x, y = o, pr
			break
		}
		seen[m] = pr
	}
	if !y.addr.IsValid() || x.port == y.port {
		t.Fatalf("no colliding pair of two services found to test with (%v %v)", x, y)
	}
	p1, p2 := x.port, y.port
	s1 := svc("one", vip1, forwarded, func(s *config.Service) { s.Port = p1 })
	s2 := svc("two", vip1, forwarded, func(s *config.Service) { s.Port = p2 })
	s3 := svc("three", vip2, forwarded)
	cfg := &config.Config{Services: []*config.Service{s1, s2, s3}}
	st := Service{Snapshot: snap(pool.ServerState{Host: "a", Addr: a1})}
	states := map[string]Service{
		"one":   {Snapshot: snap(pool.ServerState{Host: "x", Addr: x.addr})},
		"two":   {Snapshot: snap(pool.ServerState{Host: "y", Addr: y.addr})},
		"three": st,
	}
	got := ProbePools(cfg, states)
	if !equalPools(got.Pools, []ipvs.Pool{helper(Key(s3), a1, "dr")}) || len(got.Conflicts) != 2 {
		t.Errorf("collision of ports %d and %d: pools %+v conflicts %v", p1, p2, got.Pools, got.Conflicts)
	}
	// The Planner reports them once, not on every replan.
	p := NewPlanner(cfg)
	for name, st := range states {
		p.Update(name, st)
	}
	if _, _, c := p.ProbeChanges(); len(c) != 2 {
		t.Errorf("first replan: conflicts %v", c)
	}
	p.Update("one", states["one"])
	if _, _, c := p.ProbeChanges(); len(c) != 0 {
		t.Errorf("unchanged conflicts reported again: %v", c)
	}
}

func TestPlannerProbeChanges(t *testing.T) {
	web := svc("web", vip1, forwarded)
	cfg := &config.Config{Services: []*config.Service{web}}
	p := NewPlanner(cfg)
	h1, h2 := helper(Key(web), a1, "dr"), helper(Key(web), a2, "dr")
	step := func(what string, wantUpd []ipvs.Pool, wantRm []ipvs.ServiceKey) {
		t.Helper()
		upd, rm, _ := p.ProbeChanges()
		if !equalPools(upd, sortByMark(wantUpd)) || !slices.Equal(rm, wantRm) {
			t.Errorf("%s: update %+v remove %v; want %+v and %v", what, upd, rm, wantUpd, wantRm)
		}
	}
	step("no state", nil, nil)
	p.Update("web", Service{Snapshot: snap(pool.ServerState{Host: "a", Addr: a1}, pool.ServerState{Host: "b", Addr: a2})})
	step("two servers", []ipvs.Pool{h1, h2}, nil)
	p.Update("web", Service{Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Pooled: true}, pool.ServerState{Host: "b", Addr: a2})})
	step("a monitor result changes no helper", nil, nil)
	p.Update("web", Service{Snapshot: snap(pool.ServerState{Host: "a", Addr: a1})})
	step("b removed", nil, []ipvs.ServiceKey{h2.Service.ServiceKey})
	if d := p.Desired(); !slices.ContainsFunc(d.Pools, func(pl ipvs.Pool) bool { return pl.Service.ServiceKey == h1.Service.ServiceKey }) {
		t.Errorf("Desired (what a reload Sets) lacks the helper: %+v", d.Pools)
	}
	p.SetConfig(&config.Config{Services: []*config.Service{svc("web", vip1)}})
	step("option removed", nil, []ipvs.ServiceKey{h1.Service.ServiceKey})
	if d := p.Desired(); len(d.Pools) != 1 {
		t.Errorf("Desired after the option went: %+v", d.Pools)
	}
}
