package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kubal/kubal/config"

	"github.com/kubal/kubal/internal/testutil"
)

func validGlobal() config.Global {
	return config.Global{
		BGP: true, BGPLocalASN: 64512,
		BGPNextHopIPv4:   netip.MustParseAddr("10.0.0.1"),
		BGPNextHopIPv6:   netip.MustParseAddr("fd00::1"),
		BGPPeerAddresses: []netip.Addr{netip.MustParseAddr("10.0.0.2")},
	}
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name    string
		mut     func(*config.Global)
		wantKey string // "" = valid
	}{
		{"valid", func(*config.Global) {}, ""},
		{"bgp off needs nothing", func(g *config.Global) { *g = config.Global{} }, ""},
		{"4-byte ASN", func(g *config.Global) { g.BGPLocalASN = 4200000000 }, ""},
		{"no ASN", func(g *config.Global) { g.BGPLocalASN = 0 }, "bgp-local-asn"},
		// As in config (a warning there): bgp = yes with no peer announces to nobody.
		{"no peer is allowed", func(g *config.Global) { g.BGPPeerAddresses = nil }, ""},
		{"IPv6-only without a router ID", func(g *config.Global) { g.BGPNextHopIPv4 = netip.Addr{} }, "bgp-nexthop-ipv4"},
		{"router ID from bgp-local-ips", func(g *config.Global) { g.BGPNextHopIPv4, g.BGPLocalIPs = netip.Addr{}, []string{"::1", "192.0.2.7"} }, ""},
		{"duplicate peer", func(g *config.Global) {
			g.BGPPeerAddresses = append(g.BGPPeerAddresses, g.BGPPeerAddresses[0])
		}, "bgp-peer-address"},
		{"bad port", func(g *config.Global) { g.BGPLocalPort = 70000 }, "bgp-local-port"},
		{"bad local ip", func(g *config.Global) { g.BGPLocalIPs = []string{"nope"} }, "bgp-local-ips"},
		{"v6 as v4 next hop", func(g *config.Global) { g.BGPNextHopIPv4 = netip.MustParseAddr("fd00::1") }, "bgp-nexthop-ipv4"},
		{"v4 as v6 next hop", func(g *config.Global) { g.BGPNextHopIPv6 = netip.MustParseAddr("10.0.0.1") }, "bgp-nexthop-ipv6"},
		{"hold time too short", func(g *config.Global) { g.BGPHoldTime = time.Second }, "bgp-hold-time"},
		{"bad community", func(g *config.Global) { g.BGPCommunities = []string{"70000:1"} }, "bgp-communities"},
		{"bad BFD multiplier", func(g *config.Global) { g.BGPBFD, g.BGPBFDMultiplier = true, 300 }, "bgp-bfd-multiplier"},
		{"bad BFD rx", func(g *config.Global) { g.BGPBFD, g.BGPBFDMinRx = true, time.Microsecond }, "bgp-bfd-min-rx"},
		{"no router id", func(g *config.Global) { g.BGPNextHopIPv4 = netip.Addr{} }, "bgp-nexthop-ipv4"},
		{"router id from local ips", func(g *config.Global) {
			g.BGPNextHopIPv4 = netip.Addr{}
			g.BGPLocalIPs = []string{"", "10.0.0.9"}
		}, ""},
		{"zero in AS path", func(g *config.Global) { g.BGPASPath = []uint32{64512, 0} }, "bgp-as-path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := validGlobal()
			tc.mut(&g)
			_, err := New(g, nil, prometheus.NewRegistry())
			switch {
			case tc.wantKey == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantKey != "" && err == nil:
				t.Fatalf("want an error naming %s", tc.wantKey)
			case tc.wantKey != "" && !strings.Contains(err.Error(), tc.wantKey):
				t.Fatalf("error %q does not name %s", err, tc.wantKey)
			}
		})
	}
}

func TestNewErrorNamesFileLine(t *testing.T) {
	g := validGlobal()
	g.BGPLocalASN = 0
	g.Options = config.Options{"bgp-local-asn": {Raw: "0", Pos: config.Pos{File: "/etc/pybal/pybal.conf", Line: 4}}}
	_, err := New(g, nil, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "/etc/pybal/pybal.conf:4: bgp-local-asn:") {
		t.Fatalf("got %v", err)
	}
}

func TestParseCommunity(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"64512:100", 64512<<16 | 100, true},
		{" 0:0 ", 0, true},
		{"no-export", 0xFFFFFF01, true},
		{"65536:1", 0, false},
		{"1:65536", 0, false},
		{"12345", 0, false},
		{"a:b", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseCommunity(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseCommunity(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestToPath(t *testing.T) {
	s, err := New(validGlobal(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ann     Announcement
		wantErr string
		check   func(t *testing.T, attrs map[bgp.BGPAttrType]bgp.PathAttributeInterface)
	}{
		{
			name: "IPv4: NEXT_HOP, leading local AS dropped (GoBGP prepends it), MED, communities",
			ann: Announcement{Prefix: netip.MustParsePrefix("192.0.2.1/32"), NextHop: netip.MustParseAddr("10.0.0.1"),
				MED: 7, ASPath: []uint32{64512, 64600}, Communities: []string{"64512:1"}},
			check: func(t *testing.T, a map[bgp.BGPAttrType]bgp.PathAttributeInterface) {
				if nh := a[bgp.BGP_ATTR_TYPE_NEXT_HOP].(*bgp.PathAttributeNextHop).Value; nh.String() != "10.0.0.1" {
					t.Errorf("next hop %s", nh)
				}
				if got := a[bgp.BGP_ATTR_TYPE_AS_PATH].(*bgp.PathAttributeAsPath).Value[0].String(); got != "64600" {
					t.Errorf("as path %q", got)
				}
				if got := a[bgp.BGP_ATTR_TYPE_MULTI_EXIT_DISC].(*bgp.PathAttributeMultiExitDisc).Value; got != 7 {
					t.Errorf("med %d", got)
				}
				if got := a[bgp.BGP_ATTR_TYPE_COMMUNITIES].(*bgp.PathAttributeCommunities).Value; len(got) != 1 || got[0] != 64512<<16|1 {
					t.Errorf("communities %v", got)
				}
				if got := a[bgp.BGP_ATTR_TYPE_ORIGIN].(*bgp.PathAttributeOrigin).Value; got != bgp.BGP_ORIGIN_ATTR_TYPE_IGP {
					t.Errorf("origin %d", got)
				}
			},
		},
		{
			name: "IPv6: MP_REACH_NLRI with the IPv6 next hop, MED 0 still present",
			ann: Announcement{Prefix: netip.MustParsePrefix("2001:db8::1/128"), NextHop: netip.MustParseAddr("fd00::1"),
				ASPath: []uint32{64512}},
			check: func(t *testing.T, a map[bgp.BGPAttrType]bgp.PathAttributeInterface) {
				mp := a[bgp.BGP_ATTR_TYPE_MP_REACH_NLRI].(*bgp.PathAttributeMpReachNLRI)
				if mp.Nexthop.String() != "fd00::1" {
					t.Errorf("next hop %s", mp.Nexthop)
				}
				if _, ok := a[bgp.BGP_ATTR_TYPE_MULTI_EXIT_DISC]; !ok {
					t.Error("MED missing")
				}
				if _, ok := a[bgp.BGP_ATTR_TYPE_COMMUNITIES]; ok {
					t.Error("communities present")
				}
			},
		},
		{name: "not a host route", ann: Announcement{Prefix: netip.MustParsePrefix("192.0.2.0/24"), NextHop: netip.MustParseAddr("10.0.0.1")}, wantErr: "host route"},
		{name: "no v4 next hop", ann: Announcement{Prefix: netip.MustParsePrefix("192.0.2.1/32")}, wantErr: "bgp-nexthop-ipv4"},
		{name: "no v6 next hop", ann: Announcement{Prefix: netip.MustParsePrefix("2001:db8::1/128")}, wantErr: "bgp-nexthop-ipv6"},
		{name: "family mismatch", ann: Announcement{Prefix: netip.MustParsePrefix("2001:db8::1/128"), NextHop: netip.MustParseAddr("10.0.0.1")}, wantErr: "family"},
		{name: "bad community", ann: Announcement{Prefix: netip.MustParsePrefix("192.0.2.1/32"), NextHop: netip.MustParseAddr("10.0.0.1"), Communities: []string{"x"}}, wantErr: "community"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := s.toPath(tc.ann, false)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			attrs := map[bgp.BGPAttrType]bgp.PathAttributeInterface{}
			for _, a := range p.Attrs {
				attrs[a.GetType()] = a
			}
			tc.check(t, attrs)
		})
	}
}

// With bgp = no, Run only waits and Set/Shutdown are harmless.
func TestDisabledSpeaker(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := New(config.Global{}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	s.Set([]Announcement{{Prefix: netip.MustParsePrefix("192.0.2.1/32")}})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := gauge(s.m.enabled); v != 0 {
		t.Fatalf("pybal_bgp_enabled = %v", v)
	}
}

// A second Speaker on the same registry (config reload) reuses the collectors.
func TestMetricsReRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(validGlobal(), nil, reg); err != nil {
		t.Fatal(err)
	}
	s2, err := New(validGlobal(), nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	s2.m.setSession(netip.MustParseAddr("10.0.0.2"), func(si *sessionInfo) {
		*si = sessionInfo{state: bgp.BGP_FSM_ESTABLISHED, local: netip.MustParseAddr("10.0.0.1"), remotePort: 179}
	})
	got := gathered(t, reg, "pybal_bgp_session_established", "pybal_bgp_session_state_count")
	want := []string{
		`pybal_bgp_session_established{local_asn="64512",peer="10.0.0.2"} 1`,
		`pybal_bgp_session_state_count{local_asn="64512",local_ip="10.0.0.1",remote_ip="10.0.0.2",side="active",state="ESTABLISHED"} 1`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("metrics:\n got %q\nwant %q", got, want)
	}
}

// gathered renders the named metric families as sorted "name{labels} value" lines.
func gathered(t *testing.T, reg *prometheus.Registry, names ...string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			out = append(out, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(ls, ","), m.GetGauge().GetValue()))
		}
	}
	slices.Sort(out)
	return out
}

func gauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

// Run against an unreachable peer keeps retrying, never fails, and Shutdown is
// bounded; GoBGP itself runs (listening on a free port on loopback).
func TestRunUnreachablePeerAndShutdown(t *testing.T) {
	g := validGlobal()
	g.BGPLocalIPs = []string{"127.0.0.1"}
	g.BGPLocalPort = testutil.FreePort(t)
	g.BGPPeerAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	s, err := New(g, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	ann := []Announcement{{Prefix: netip.MustParsePrefix("192.0.2.1/32"), NextHop: g.BGPNextHopIPv4, ASPath: []uint32{64512}}}
	s.Set(ann)
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Advertised()) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("announcement never handed to GoBGP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v := gauge(s.m.announced); v != 1 {
		t.Fatalf("kubal_bgp_announced_prefixes = %v", v)
	}
	s.Set(nil)
	for len(s.Advertised()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("withdraw never handed to GoBGP")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	start := time.Now()
	if err := s.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %s", d)
	}
	s.Set(ann) // ignored after Shutdown
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after ctx was cancelled")
	}
	if len(s.Advertised()) != 0 {
		t.Fatal("Set after Shutdown advertised something")
	}
}

// Shutdown before Run: Run never starts GoBGP (the port stays free) and returns
// when its ctx ends.
func TestShutdownBeforeRun(t *testing.T) {
	g := validGlobal()
	g.BGPLocalIPs = []string{"127.0.0.1"}
	g.BGPLocalPort = testutil.FreePort(t)
	s, err := New(g, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 250*time.Millisecond {
		t.Fatal("Run returned before its ctx was done")
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(g.BGPLocalPort)))
	if err != nil {
		t.Fatalf("GoBGP was started after Shutdown: %v", err)
	}
	l.Close()
}

func TestFake(t *testing.T) {
	f := NewFake()
	n, changed := f.Sets()
	a := Announcement{Prefix: netip.MustParsePrefix("192.0.2.2/32")}
	b := Announcement{Prefix: netip.MustParsePrefix("192.0.2.1/32")}
	f.Set([]Announcement{a, b})
	select {
	case <-changed:
	default:
		t.Fatal("Set did not signal")
	}
	if got := f.Advertised(); len(got) != 2 || got[0].Prefix != b.Prefix {
		t.Fatalf("Advertised = %v", got)
	}
	if err := f.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.Set([]Announcement{a})
	if m, _ := f.Sets(); m != n+1 || len(f.Advertised()) != 0 {
		t.Fatalf("after Shutdown: sets %d, advertised %v", m, f.Advertised())
	}
}

// The listen port is busy at start: Run keeps retrying (never fails) and starts
// GoBGP once the port is free.
func TestRunRetriesWhenPortBusy(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := validGlobal()
	g.BGPLocalIPs = []string{"127.0.0.1"}
	g.BGPLocalPort = l.Addr().(*net.TCPAddr).Port
	g.BGPPeerAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	s, err := New(g, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	s.Set([]Announcement{{Prefix: netip.MustParsePrefix("192.0.2.1/32"), NextHop: g.BGPNextHopIPv4}})
	time.Sleep(300 * time.Millisecond)
	if len(s.Advertised()) != 0 {
		t.Fatal("advertised although GoBGP cannot have started")
	}
	select {
	case err := <-done:
		t.Fatalf("Run gave up: %v", err)
	default:
	}
	l.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Advertised()) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("GoBGP never started after the port was freed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel() // Run shuts down by itself
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(s.Advertised()) != 0 {
		t.Fatal("Run's implicit Shutdown left routes advertised")
	}
}

// recorder keeps every log record (tests only).
type recorder struct {
	mu   *sync.Mutex
	recs *[]slog.Record
}

func newRecorder() recorder { return recorder{mu: &sync.Mutex{}, recs: &[]slog.Record{}} }

func (r recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.recs = append(*r.recs, rec.Clone())
	return nil
}
func (r recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r recorder) WithGroup(string) slog.Handler      { return r }
func (r recorder) errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range *r.recs {
		if rec.Level >= slog.LevelError {
			out = append(out, rec.Message)
		}
	}
	return out
}

// families returns the metric family names gathered from reg.
func families(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// A planned restart (Detach with graceful restart) logs no ERROR, and without BFD
// no kubal_bgp_bfd_up series exists (an alert on it would fire on every host
// without BFD, PyBal's default); kubal_bgp_bfd_configured says 0.
func TestDetachQuietAndNoBFDSeriesWithoutBFD(t *testing.T) {
	for _, bfd := range []bool{false, true} {
		t.Run(fmt.Sprintf("bfd=%v", bfd), func(t *testing.T) {
			g := validGlobal()
			g.BGPLocalIPs = []string{"127.0.0.1"}
			g.BGPLocalPort = testutil.FreePort(t)
			g.BGPPeerAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
			g.BGPGracefulRestart = true
			g.BGPBFD = bfd
			g.BGPBFDMinRx, g.BGPBFDMinTx, g.BGPBFDMultiplier = 300*time.Millisecond, 300*time.Millisecond, 3
			rec := newRecorder()
			reg := prometheus.NewRegistry()
			s, err := New(g, slog.New(rec), reg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			deadline := time.Now().Add(5 * time.Second)
			for {
				s.mu.Lock()
				srv := s.srv
				s.mu.Unlock()
				if srv != nil {
					s.poll(ctx, srv)
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("GoBGP never started")
				}
				time.Sleep(10 * time.Millisecond)
			}
			check := func(when string) {
				mfs := families(t, reg)
				_, hasUp := mfs["kubal_bgp_bfd_up"]
				if hasUp != bfd {
					t.Errorf("%s: kubal_bgp_bfd_up exported = %v, want %v", when, hasUp, bfd)
				}
				want := 0.0
				if bfd {
					want = 1
				}
				if ms := mfs["kubal_bgp_bfd_configured"].GetMetric(); len(ms) != 1 {
					t.Errorf("%s: kubal_bgp_bfd_configured not exported", when)
				} else if got := ms[0].GetGauge().GetValue(); got != want {
					t.Errorf("%s: kubal_bgp_bfd_configured = %v, want %v", when, got, want)
				}
			}
			check("running")
			sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer scancel()
			if err := s.Detach(sctx); err != nil {
				t.Fatalf("Detach: %v", err)
			}
			cancel()
			<-done
			check("after Detach")
			if errs := rec.errors(); len(errs) > 0 {
				t.Errorf("a planned restart logged errors: %q", errs)
			}
		})
	}
}
