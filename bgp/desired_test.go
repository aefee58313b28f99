package bgp

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/kubal/kubal/config"
)

func u32(v uint32) *uint32 { return &v }

func svc(name, ip string, mut ...func(*config.Service)) *config.Service {
	s := &config.Service{Name: name, IP: netip.MustParseAddr(ip), BGP: true}
	for _, m := range mut {
		m(s)
	}
	return s
}

func TestDesired(t *testing.T) {
	nh4 := netip.MustParseAddr("10.0.0.1")
	nh6 := netip.MustParseAddr("fd00::1")
	global := config.Global{
		BGP: true, BGPLocalASN: 64512, BGPMED: 5,
		BGPNextHopIPv4: nh4, BGPNextHopIPv6: nh6,
		BGPCommunities: []string{"64512:1"},
	}
	p4 := func(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 32) }
	p6 := func(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 128) }
	withdrawEmpty := func(s *config.Service) { s.BGPWithdrawWhenEmpty = true }
	activeActive := func(s *config.Service) { s.ActiveActive = true }

	tests := []struct {
		name     string
		global   func(*config.Global)
		services []*config.Service
		pooled   map[string]int
		want     []Announcement
	}{
		{
			name:     "bgp disabled globally announces nothing",
			global:   func(g *config.Global) { g.BGP = false },
			services: []*config.Service{svc("a", "192.0.2.1")},
		},
		{
			name:     "global MED, default AS path is the local ASN, global communities",
			services: []*config.Service{svc("a", "192.0.2.1")},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name:     "per-service MED overrides global; configured AS path (4-byte)",
			global:   func(g *config.Global) { g.BGPASPath = []uint32{64512, 4200000000} },
			services: []*config.Service{svc("a", "192.0.2.1", func(s *config.Service) { s.BGPMED = u32(77) })},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 77,
				ASPath: []uint32{64512, 4200000000}, Communities: []string{"64512:1"}}},
		},
		{
			name: "bgp = no per service is not announced",
			services: []*config.Service{
				svc("a", "192.0.2.1", func(s *config.Service) { s.BGP = false }),
				svc("b", "192.0.2.2"),
			},
			want: []Announcement{{Prefix: p4("192.0.2.2"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name: "IPv6 VIP is a /128 with the IPv6 next hop; sorted v4 before v6",
			services: []*config.Service{
				svc("v6", "2001:db8::10"),
				svc("v4", "192.0.2.1"),
			},
			want: []Announcement{
				{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5, ASPath: []uint32{64512}, Communities: []string{"64512:1"}},
				{Prefix: p6("2001:db8::10"), NextHop: nh6, MED: 5, ASPath: []uint32{64512}, Communities: []string{"64512:1"}},
			},
		},
		{
			name: "shared VIP: one announcement, communities merged without duplicates, first service MED",
			services: []*config.Service{
				svc("http", "192.0.2.1", func(s *config.Service) { s.BGPCommunities = []string{"64512:80", "64512:1"} }),
				svc("https", "192.0.2.1", func(s *config.Service) {
					s.BGPCommunities = []string{"64512:443"}
					s.BGPMED = u32(9)
				}),
			},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 9,
				ASPath: []uint32{64512}, Communities: []string{"64512:1", "64512:80", "64512:443"}}},
		},
		{
			name:     "withdraw-when-empty: no pooled server withdraws",
			services: []*config.Service{svc("a", "192.0.2.1", withdrawEmpty)},
			pooled:   map[string]int{"a": 0},
		},
		{
			name:     "withdraw-when-empty: a pooled server announces",
			services: []*config.Service{svc("a", "192.0.2.1", withdrawEmpty)},
			pooled:   map[string]int{"a": 2},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name:     "withdraw-when-empty: unknown pool size (start-up) keeps it announced",
			services: []*config.Service{svc("a", "192.0.2.1", withdrawEmpty)},
			pooled:   map[string]int{},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name:     "active-active: unknown pool (a new or restarted director) is not announced",
			services: []*config.Service{svc("a", "192.0.2.1", activeActive)},
			pooled:   map[string]int{},
		},
		{
			name:     "active-active: no server it can serve withdraws, even without withdraw-when-empty",
			services: []*config.Service{svc("a", "192.0.2.1", activeActive)},
			pooled:   map[string]int{"a": 0},
		},
		{
			name:     "active-active: a server it can serve announces",
			services: []*config.Service{svc("a", "192.0.2.1", activeActive)},
			pooled:   map[string]int{"a": 1},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name: "refcount: shared VIP stays while one service has servers",
			services: []*config.Service{
				svc("http", "192.0.2.1", withdrawEmpty),
				svc("https", "192.0.2.1", withdrawEmpty),
			},
			pooled: map[string]int{"http": 0, "https": 1},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name: "refcount: shared VIP withdrawn when every service is empty",
			services: []*config.Service{
				svc("http", "192.0.2.1", withdrawEmpty),
				svc("https", "192.0.2.1", withdrawEmpty),
				svc("other", "192.0.2.2", withdrawEmpty),
			},
			pooled: map[string]int{"http": 0, "https": 0, "other": 3},
			want: []Announcement{{Prefix: p4("192.0.2.2"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name: "refcount: a service without the key always holds the VIP (PyBal default)",
			services: []*config.Service{
				svc("http", "192.0.2.1", withdrawEmpty),
				svc("https", "192.0.2.1"),
			},
			pooled: map[string]int{"http": 0, "https": 0},
			want: []Announcement{{Prefix: p4("192.0.2.1"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
		{
			name: "bgp = no service on a shared VIP holds no reference",
			services: []*config.Service{
				svc("http", "192.0.2.1", withdrawEmpty),
				svc("https", "192.0.2.1", func(s *config.Service) { s.BGP = false }),
			},
			pooled: map[string]int{"http": 0, "https": 5},
		},
		{
			name:     "IPv4-mapped IPv6 VIP is announced as IPv4",
			services: []*config.Service{svc("a", "::ffff:192.0.2.7")},
			want: []Announcement{{Prefix: p4("192.0.2.7"), NextHop: nh4, MED: 5,
				ASPath: []uint32{64512}, Communities: []string{"64512:1"}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{Global: global, Services: tc.services}
			if tc.global != nil {
				tc.global(&cfg.Global)
			}
			got := Desired(cfg, tc.pooled)
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Desired:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDesiredDoesNotAliasConfig(t *testing.T) {
	cfg := &config.Config{
		Global:   config.Global{BGP: true, BGPLocalASN: 1, BGPASPath: []uint32{1, 2}, BGPCommunities: []string{"1:1"}},
		Services: []*config.Service{svc("a", "192.0.2.1")},
	}
	got := Desired(cfg, nil)
	got[0].ASPath[0] = 99
	got[0].Communities[0] = "9:9"
	if cfg.Global.BGPASPath[0] != 1 || cfg.Global.BGPCommunities[0] != "1:1" {
		t.Fatal("Desired's result aliases the config")
	}
}
