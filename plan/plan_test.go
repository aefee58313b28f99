package plan

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/pool"
)

var (
	vip1 = netip.MustParseAddr("192.0.2.10")
	vip2 = netip.MustParseAddr("192.0.2.11")
	a1   = netip.MustParseAddr("10.0.0.1")
	a2   = netip.MustParseAddr("10.0.0.2")
)

func svc(name string, ip netip.Addr, mods ...func(*config.Service)) *config.Service {
	s := &config.Service{Name: name, IP: ip, Port: 80, Protocol: "tcp", Scheduler: "wrr", BGP: true, Forwarding: "dr"}
	for _, m := range mods {
		m(s)
	}
	return s
}

func snap(servers ...pool.ServerState) *pool.Snapshot { return &pool.Snapshot{Servers: servers} }

func TestPool(t *testing.T) {
	pooled := pool.ServerState{Host: "a", Addr: a1, Weight: 10, Pooled: true}
	notPooled := pool.ServerState{Host: "b", Addr: a2, Weight: 10}
	unresolved := pool.ServerState{Host: "c", Weight: 10, Pooled: true}
	tests := []struct {
		name      string
		svc       *config.Service
		st        Service
		wantDests []ipvs.Destination
		keepExtra bool
		drain     bool
		keep      []netip.Addr
	}{
		{"settled: exactly the pooled servers with an address", svc("s", vip1),
			Service{Snapshot: snap(pooled, notPooled, unresolved), Settled: true},
			[]ipvs.Destination{{Addr: a1, Weight: 10, Forwarding: "dr"}}, false, false, nil},
		{"unsynced source: keep what the kernel has, however long", svc("s", vip1),
			Service{Snapshot: snap(pooled), Settled: false},
			[]ipvs.Destination{{Addr: a1, Weight: 10, Forwarding: "dr"}}, true, false, nil},
		{"no state yet (service not started): keep the kernel", svc("s", vip1), Service{}, nil, true, false, nil},
		{"settled with no server: empty, nothing kept", svc("s", vip1), Service{Snapshot: snap(), Settled: true}, nil, false, false, nil},
		{"weight 0 stays a destination at weight 0", svc("s", vip1),
			Service{Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Weight: 0, Pooled: true}), Settled: true},
			[]ipvs.Destination{{Addr: a1, Weight: 0, Forwarding: "dr"}}, false, false, nil},
		{"depool-mode drain and tunnel forwarding", svc("s", vip1, func(s *config.Service) { s.DepoolMode = config.DepoolDrain; s.Forwarding = "tunnel" }),
			Service{Snapshot: snap(pooled), Settled: true},
			[]ipvs.Destination{{Addr: a1, Weight: 10, Forwarding: "tunnel"}}, false, true, nil},
		// pool-unchecked = no: not a destination before its first check, but what the
		// kernel holds for it (a restart) is kept until the check decides; a disabled
		// one is not kept (an admin depool is in force).
		{"awaiting first check: kept if the kernel has it, not added", svc("s", vip1),
			Service{Snapshot: snap(pooled, pool.ServerState{Host: "b", Addr: a2, Weight: 10, Enabled: true, Awaiting: true},
				pool.ServerState{Host: "d", Addr: netip.MustParseAddr("10.0.0.4"), Weight: 10, Awaiting: true}), Settled: true},
			[]ipvs.Destination{{Addr: a1, Weight: 10, Forwarding: "dr"}}, false, false, []netip.Addr{a2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Pool(tt.svc, tt.st)
			if (len(p.Destinations) != 0 || len(tt.wantDests) != 0) && !reflect.DeepEqual(p.Destinations, tt.wantDests) {
				t.Errorf("destinations %+v, want %+v", p.Destinations, tt.wantDests)
			}
			if !reflect.DeepEqual(p.Keep, tt.keep) {
				t.Errorf("Keep %v, want %v", p.Keep, tt.keep)
			}
			if p.KeepExtra != tt.keepExtra || p.Drain != tt.drain {
				t.Errorf("KeepExtra %v Drain %v, want %v %v", p.KeepExtra, p.Drain, tt.keepExtra, tt.drain)
			}
			if p.Service.ServiceKey != Key(tt.svc) || p.Service.Scheduler != "wrr" {
				t.Errorf("service %+v", p.Service)
			}
		})
	}
}

func TestVIPsAndAnnouncements(t *testing.T) {
	empty := func(s *config.Service) { s.BGPWithdrawWhenEmpty = true }
	aa := func(s *config.Service) { s.ActiveActive, s.Scheduler = true, "mh" }
	vip3 := netip.MustParseAddr("192.0.2.30")
	cfg := &config.Config{
		Global:   config.Global{BGP: true, BGPLocalASN: 64600, BGPNextHopIPv4: netip.MustParseAddr("10.0.0.254")},
		Services: []*config.Service{svc("web", vip1), svc("web443", vip1), svc("api", vip2, empty), svc("ecmp", vip3, aa)},
	}
	if got := VIPs(cfg); len(got) != 3 || got[0].Addr != vip1 || got[1].Addr != vip2 {
		t.Errorf("VIPs %+v: want each address once, in config order", got)
	}
	tests := []struct {
		name   string
		states map[string]Service
		want   []netip.Addr
	}{
		{"not settled: announced (a restart announces before it withdraws)", map[string]Service{"api": {Snapshot: snap()}}, []netip.Addr{vip1, vip2}},
		{"settled and empty: withdrawn", map[string]Service{"api": {Snapshot: snap(), Settled: true}}, []netip.Addr{vip1}},
		{"settled, none pooled, one awaiting its first check: announced (a restart keeps it)", map[string]Service{"api": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Enabled: true, Awaiting: true}), Settled: true}}, []netip.Addr{vip1, vip2}},
		{"active-active, settled, awaiting its first check: not announced", map[string]Service{"ecmp": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Enabled: true, Awaiting: true, Weight: 1}), Settled: true}}, []netip.Addr{vip1, vip2}},
		{"settled with a pooled server: announced", map[string]Service{"api": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Pooled: true}), Settled: true}}, []netip.Addr{vip1, vip2}},
		// Active-active: the other directors carry the VIP until this one can serve it.
		{"active-active, not settled: not announced", map[string]Service{"ecmp": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Pooled: true, Up: true, Weight: 1})}}, []netip.Addr{vip1, vip2}},
		{"active-active, pooled but down (held by the threshold): withdrawn", map[string]Service{"ecmp": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Pooled: true, Weight: 1}), Settled: true}}, []netip.Addr{vip1, vip2}},
		{"active-active, pooled and up at weight 0: withdrawn", map[string]Service{"ecmp": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Pooled: true, Up: true}), Settled: true}}, []netip.Addr{vip1, vip2}},
		{"active-active, pooled, up, weighted: announced", map[string]Service{"ecmp": {Snapshot: snap(pool.ServerState{Host: "a", Addr: a1, Pooled: true, Up: true, Weight: 1}), Settled: true}}, []netip.Addr{vip1, vip2, vip3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []netip.Addr
			for _, a := range Announcements(cfg, tt.states) {
				got = append(got, a.Prefix.Addr())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("announced %v, want %v", got, tt.want)
			}
		})
	}
}

// The incremental Planner always equals the whole plan.
func TestPlannerEqualsBuild(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var services []*config.Service
	for i := range 20 {
		services = append(services, svc(fmt.Sprintf("s%d", i), netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 5)}), func(s *config.Service) {
			s.BGPWithdrawWhenEmpty = i%2 == 0
		}))
	}
	cfg := &config.Config{Global: config.Global{BGP: true, BGPLocalASN: 64600}, Services: services}
	p := NewPlanner(cfg)
	states := map[string]Service{}
	for step := range 2000 {
		name := services[rnd.IntN(len(services))].Name
		var servers []pool.ServerState
		for h := range rnd.IntN(4) {
			servers = append(servers, pool.ServerState{Host: fmt.Sprint(h), Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(h + 1)}),
				Weight: rnd.IntN(3), Pooled: rnd.IntN(3) > 0})
		}
		st := Service{Snapshot: snap(servers...), Settled: rnd.IntN(4) > 0}
		states[name] = st
		p.Update(name, st)
		if step%50 == 0 && rnd.IntN(2) == 0 { // a reload that drops and re-adds a service
			cfg = &config.Config{Global: cfg.Global, Services: services[:len(services)-1]}
			delete(states, services[len(services)-1].Name)
			p.SetConfig(cfg)
			cfg = &config.Config{Global: cfg.Global, Services: services}
			p.SetConfig(cfg)
		}
		if got, want := p.Desired(), Build(cfg, states); !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: planner %+v\nbuild %+v", step, got, want)
		}
	}
}

func TestLeftover(t *testing.T) {
	cfg := &config.Config{K8sServices: &config.K8sServices{VIPRanges: []netip.Prefix{netip.MustParsePrefix("192.0.2.64/28")}}}
	tests := []struct {
		key  ipvs.ServiceKey
		want bool
	}{
		{ipvs.ServiceKey{Protocol: ipvs.TCP, Addr: netip.MustParseAddr("192.0.2.65"), Port: 80}, true},
		{ipvs.ServiceKey{Protocol: ipvs.UDP, Addr: netip.MustParseAddr("192.0.2.79"), Port: 53}, true},
		{ipvs.ServiceKey{Protocol: ipvs.TCP, Addr: netip.MustParseAddr("192.0.2.80"), Port: 80}, false}, // outside
		{ipvs.ServiceKey{FWMark: 42}, false},                    // someone's firewall-mark service
		{ipvs.ServiceKey{FWMark: ipvs.ProbeMarkBase | 7}, true}, // a forwarded-probe helper
	}
	match := Leftover(cfg)
	for _, tt := range tests {
		if got := match(tt.key); got != tt.want {
			t.Errorf("Leftover(%s) = %v, want %v", tt.key, got, tt.want)
		}
	}
	if Leftover(&config.Config{})(tests[0].key) {
		t.Error("without [k8s-services], a VIP is no leftover")
	}
}

// TestSysctls: the kernel settings follow pybal.conf, parsed as kubal parses it (so
// the defaults are the real ones).
func TestSysctls(t *testing.T) {
	const svc = "[web]\nprotocol = tcp\nip = 192.0.2.10\nport = 80\nscheduler = mh\nconfig = file:///etc/pybal/pools/web\n"
	for _, tc := range []struct {
		name, conf string
		want       []string
	}{
		{"default: the kernel's values left alone", "[global]\n" + svc, nil},
		{"no [global] section", svc, nil},
		{"expire-nodest-conn on", "[global]\nipvs-expire-nodest-conn = yes\n" + svc, []string{"net.ipv4.vs.expire_nodest_conn=1"}},
		{"active-active", "[global]\nactive-active = yes\n" + svc,
			[]string{"net.ipv4.vs.sloppy_tcp=1", "net.ipv4.vs.schedule_icmp=1"}},
		{"active-active, expire on", "[global]\nactive-active = yes\nipvs-expire-nodest-conn = yes\n" + svc,
			[]string{"net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.sloppy_tcp=1", "net.ipv4.vs.schedule_icmp=1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("pybal.conf", []byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range Sysctls(cfg) {
				if s.Why == "" {
					t.Errorf("%s has no reason (shown in /alerts when it cannot be set)", s.Name)
				}
				got = append(got, s.Name+"="+s.Value)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Sysctls = %v, want %v", got, tc.want)
			}
		})
	}
}
