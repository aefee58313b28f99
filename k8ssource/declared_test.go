package k8ssource

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
)

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestAllocateVIPs: requested, kept and allocated VIPs; refusals with their reason;
// the result does not depend on the order the requests arrive in.
func TestAllocateVIPs(t *testing.T) {
	a := netip.MustParseAddr
	ranges := mustPrefixes("192.0.2.0/29", "2001:db8::/126")
	static := map[netip.Addr]string{a("192.0.2.1"): "api_80"}
	cases := []struct {
		name string
		reqs []vipRequest
		want map[string]string // id -> VIP or "refuse:<substring>"
	}{
		{
			name: "requested inside the range",
			reqs: []vipRequest{{Owner: "ns/a", Requested: a("192.0.2.3"), Seed: "u1"}},
			want: map[string]string{"ns/a|IPv4": "192.0.2.3"},
		},
		{
			name: "requested outside the ranges",
			reqs: []vipRequest{{Owner: "ns/a", Requested: a("198.51.100.1"), Seed: "u1"}},
			want: map[string]string{"ns/a|IPv4": "refuse:VIP 198.51.100.1 is outside the vip-ranges 192.0.2.0/29, 2001:db8::/126"},
		},
		{
			name: "requested static VIP",
			reqs: []vipRequest{{Owner: "ns/a", Requested: a("192.0.2.1"), Seed: "u1"}},
			want: map[string]string{"ns/a|IPv4": "refuse:VIP 192.0.2.1 is already used by static service [api_80]"},
		},
		{
			name: "collision: the older Service wins, whatever the input order",
			reqs: []vipRequest{
				{Owner: "ns/young", Order: 20, Requested: a("192.0.2.4"), Seed: "u2"},
				{Owner: "ns/old", Order: 10, Requested: a("192.0.2.4"), Seed: "u1"},
			},
			want: map[string]string{"ns/old|IPv4": "192.0.2.4", "ns/young|IPv4": "refuse:already used by Service ns/old"},
		},
		{
			name: "status VIP kept even where the hash would start elsewhere",
			reqs: []vipRequest{{Owner: "ns/a", Current: a("192.0.2.6"), Seed: "u1"}},
			want: map[string]string{"ns/a|IPv4": "192.0.2.6"},
		},
		{
			name: "a VIP in use is not taken by a newer Service asking for it",
			reqs: []vipRequest{
				{Owner: "ns/a", Order: 20, Current: a("192.0.2.6"), Seed: "u1"},
				{Owner: "ns/b", Order: 30, Requested: a("192.0.2.6"), Seed: "u2"},
			},
			want: map[string]string{"ns/a|IPv4": "192.0.2.6", "ns/b|IPv4": "refuse:VIP 192.0.2.6 is already used by Service ns/a"},
		},
		{
			name: "an older Service's request wins over a newer one's status VIP, which is reallocated",
			reqs: []vipRequest{
				{Owner: "ns/a", Order: 20, Current: a("192.0.2.6"), Seed: "u1"},
				{Owner: "ns/b", Order: 10, Requested: a("192.0.2.6"), Seed: "u2"},
			},
			want: map[string]string{"ns/b|IPv4": "192.0.2.6", "ns/a|IPv4": "alloc"},
		},
		{
			name: "allocation skips static, network and broadcast; range full",
			reqs: []vipRequest{
				{Owner: "ns/1", Order: 1, Seed: "a"}, {Owner: "ns/2", Order: 2, Seed: "b"}, {Owner: "ns/3", Order: 3, Seed: "c"},
				{Owner: "ns/4", Order: 4, Seed: "d"}, {Owner: "ns/5", Order: 5, Seed: "e"}, {Owner: "ns/6", Order: 6, Seed: "f"},
			},
			want: map[string]string{"ns/1|IPv4": "alloc", "ns/2|IPv4": "alloc", "ns/3|IPv4": "alloc", "ns/4|IPv4": "alloc",
				"ns/5|IPv4": "alloc", "ns/6|IPv4": "refuse:no free IPv4 address"},
		},
		{
			name: "IPv6 from the IPv6 range",
			reqs: []vipRequest{{Owner: "ns/a", V6: true, Seed: "u1"}, {Owner: "ns/a", Seed: "u1"}},
			want: map[string]string{"ns/a|IPv6": "alloc6", "ns/a|IPv4": "alloc"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := allocateVIPs(ranges, static, tc.reqs)
			// Same result in reverse input order: two LVS hosts agree.
			rev := make([]vipRequest, len(tc.reqs))
			for i, r := range tc.reqs {
				rev[len(rev)-1-i] = r
			}
			if again := allocateVIPs(ranges, static, rev); len(again) != len(got) {
				t.Fatalf("order-dependent: %v vs %v", got, again)
			} else {
				for k, v := range got {
					if again[k] != v {
						t.Fatalf("order-dependent for %s: %v vs %v", k, v, again[k])
					}
				}
			}
			used := map[netip.Addr]string{}
			for id, want := range tc.want {
				r, ok := got[id]
				if !ok {
					t.Fatalf("%s: no result", id)
				}
				switch {
				case strings.HasPrefix(want, "refuse:"):
					if r.Refuse == "" || !strings.Contains(r.Refuse, strings.TrimPrefix(want, "refuse:")) {
						t.Errorf("%s: %+v, want refusal %q", id, r, want)
					}
					continue
				case want == "alloc":
					if !r.VIP.IsValid() || !ranges[0].Contains(r.VIP) || r.VIP == a("192.0.2.0") || r.VIP == a("192.0.2.7") || r.VIP == a("192.0.2.1") {
						t.Errorf("%s: %+v, want a free address of 192.0.2.0/29 (not .0, .1, .7)", id, r)
					}
				case want == "alloc6":
					if !ranges[1].Contains(r.VIP) {
						t.Errorf("%s: %+v, want an address of %s", id, r, ranges[1])
					}
				default:
					if r.VIP != a(want) {
						t.Errorf("%s: %+v, want %s", id, r, want)
					}
				}
				if other, dup := used[r.VIP]; dup {
					t.Errorf("%s and %s both got %s", id, other, r.VIP)
				}
				used[r.VIP] = id
			}
		})
	}
}

// TestAllocateNoRanges: without vip-ranges a Service must request its VIP.
func TestAllocateNoRanges(t *testing.T) {
	got := allocateVIPs(nil, nil, []vipRequest{{Owner: "ns/a", Seed: "u"}, {Owner: "ns/b", Requested: netip.MustParseAddr("203.0.113.5")}})
	if r := got["ns/a|IPv4"]; !strings.Contains(r.Refuse, "no IPv4 VIP requested") {
		t.Errorf("ns/a: %+v", r)
	}
	if r := got["ns/b|IPv4"]; r.VIP.String() != "203.0.113.5" {
		t.Errorf("ns/b: %+v", r)
	}
}

func testTemplate(t testing.TB, extra string) *config.K8sServices {
	t.Helper()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\nvip-ranges = 192.0.2.0/24, 2001:db8::/64\nnodes = role=lvs\n"+extra))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.K8sServices
}

func lbService(etp corev1.ServiceExternalTrafficPolicy, ann map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	class := "kubal.io/lvs"
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Annotations: ann, UID: "uid-1"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class, Ports: ports,
			ExternalTrafficPolicy: etp, HealthCheckNodePort: 32000, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}},
	}
}

// TestBuildService: defaults by traffic policy, annotation overrides through the
// pybal.conf parser, and bad annotations named in the errors.
func TestBuildService(t *testing.T) {
	tmpl := testTemplate(t, "")
	vip := map[bool]netip.Addr{false: netip.MustParseAddr("192.0.2.10")}
	https := corev1.ServicePort{Name: "https", Port: 443, NodePort: 30443, Protocol: corev1.ProtocolTCP}
	dns := corev1.ServicePort{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP}
	checks := []func(*config.Service) config.Diagnostics{monitor.Validate}
	cases := []struct {
		name  string
		svc   *corev1.Service
		check func(t *testing.T, ps []declaredPort)
		errs  []string
	}{
		{
			name: "Local: ProxyFetch on the health check node port, gated by the Service's endpoints",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyLocal, nil, https),
			check: func(t *testing.T, ps []declaredPort) {
				c := ps[0].cfg
				if c.Name != "shop.web:443" || c.Port != 443 || c.IP.String() != "192.0.2.10" || c.Protocol != "tcp" || c.Scheduler != "wrr" {
					t.Errorf("got %s %s %s:%d sched %s", c.Name, c.Protocol, c.IP, c.Port, c.Scheduler)
				}
				if len(c.Monitors) != 1 || c.Monitors[0] != "ProxyFetch" || c.Options["proxyfetch.port"].Raw != "32000" {
					t.Errorf("monitors %v options %v", c.Monitors, c.Options.Fingerprint())
				}
				if c.ConfigURL != "k8s://?endpoints=shop%2Fweb&nodes=role%3Dlvs" || ps[0].group != "shop/web|IPv4" {
					t.Errorf("config %s group %s", c.ConfigURL, ps[0].group)
				}
			},
		},
		{
			name: "Cluster: IdleConnection (TCP) and UDP on the node port",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, nil, https, dns),
			check: func(t *testing.T, ps []declaredPort) {
				if len(ps) != 2 || ps[1].cfg.Name != "shop.web:53-udp" || ps[1].cfg.Protocol != "udp" {
					t.Fatalf("ports %v", ps)
				}
				if m := ps[0].cfg; m.Monitors[0] != "IdleConnection" || m.Options["idleconnection.port"].Raw != "30443" || m.ConfigURL != "k8s://?nodes=role%3Dlvs" {
					t.Errorf("tcp: %v %s %s", m.Monitors, m.Options.Fingerprint(), m.ConfigURL)
				}
				if m := ps[1].cfg; m.Monitors[0] != "UDP" || m.Options["udp.port"].Raw != "30053" {
					t.Errorf("udp: %v %s", m.Monitors, m.Options.Fingerprint())
				}
			},
		},
		{
			name: "overrides",
			svc: lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{
				AnnotationPrefix + "scheduler": "mh", AnnotationPrefix + "scheduler-flags": "mh-port",
				AnnotationPrefix + "depool-threshold": "0.7", AnnotationPrefix + "bgp-communities": "64600:100",
				AnnotationPrefix + "bgp-med": "20", AnnotationPrefix + "monitors": `["TCP"]`, AnnotationPrefix + "tcp.interval": "3",
			}, https),
			check: func(t *testing.T, ps []declaredPort) {
				c := ps[0].cfg
				if c.Scheduler != "mh" || c.DepoolThreshold != 0.7 || len(c.BGPCommunities) != 1 || c.BGPMED == nil || *c.BGPMED != 20 ||
					c.Monitors[0] != "TCP" || c.Options["tcp.port"].Raw != "30443" {
					t.Errorf("got %+v", c)
				}
			},
		},
		{
			name: "bad scheduler",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{AnnotationPrefix + "scheduler": "fastest"}, https),
			errs: []string{`Service shop/web annotation lvs.kubal.io/scheduler: scheduler: "fastest" is not one of`},
		},
		{
			name: "bad threshold",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{AnnotationPrefix + "depool-threshold": "1.5"}, https),
			errs: []string{"annotation lvs.kubal.io/depool-threshold: depool-threshold: 1.5 is outside [0, 1]"},
		},
		{
			name: "bad monitor option (monitor.Validate)",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{AnnotationPrefix + "idleconnection.max-delay": "soon"}, https),
			errs: []string{"annotation lvs.kubal.io/idleconnection.max-delay"},
		},
		{
			name: "unknown annotation",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{AnnotationPrefix + "schedular": "rr"}, https),
			errs: []string{`annotation lvs.kubal.io/schedular: unknown key "schedular"`},
		},
		{
			name: "bad weights",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{AnnotationWeights: "node-a=70000"}, https),
			errs: []string{"annotation lvs.kubal.io/weights: node node-a: weight 70000 is out of range"},
		},
		{
			name: "SCTP",
			svc:  lbService(corev1.ServiceExternalTrafficPolicyCluster, nil, corev1.ServicePort{Port: 9, Protocol: corev1.ProtocolSCTP}),
			errs: []string{"port 9: protocol SCTP: kubal balances TCP and UDP only"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps, errs := buildService(tc.svc, ownedLB, tmpl, vip, checks)
			if len(tc.errs) == 0 {
				if len(errs) > 0 || len(ps) == 0 {
					t.Fatalf("errors %v, ports %d", errs, len(ps))
				}
				tc.check(t, ps)
				return
			}
			if ps != nil {
				t.Errorf("invalid Service still built %d ports", len(ps))
			}
			all := strings.Join(errs, "\n")
			for _, e := range tc.errs {
				if !strings.Contains(all, e) {
					t.Errorf("want %q in:\n%s", e, all)
				}
			}
		})
	}
}

// TestDualStackNames: one kubal service per family x port, names that pass the
// admin API's host-name rules for URL path segments (no '/').
func TestDualStackNames(t *testing.T) {
	tmpl := testTemplate(t, "")
	svc := lbService(corev1.ServiceExternalTrafficPolicyCluster, nil,
		corev1.ServicePort{Port: 80, NodePort: 30080, Protocol: corev1.ProtocolTCP},
		corev1.ServicePort{Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP})
	svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	vips := map[bool]netip.Addr{false: netip.MustParseAddr("192.0.2.10"), true: netip.MustParseAddr("2001:db8::10")}
	ps, errs := buildService(svc, ownedLB, tmpl, vips, nil)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.cfg.Name+"="+p.cfg.Key())
		if strings.ContainsAny(p.cfg.Name, "/ ") {
			t.Errorf("name %q has '/' or a space", p.cfg.Name)
		}
	}
	want := "shop.web:80=tcp 192.0.2.10:80 shop.web:53-udp=udp 192.0.2.10:53 shop.web:80-v6=tcp [2001:db8::10]:80 shop.web:53-udp-v6=udp [2001:db8::10]:53"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// TestRequestedVIPs: the annotation, spec.loadBalancerIP, and bad values.
func TestRequestedVIPs(t *testing.T) {
	cases := []struct {
		ann, lbIP string
		fams      []corev1.IPFamily
		want, err string
	}{
		{ann: "192.0.2.5", want: "map[false:192.0.2.5]"},
		{lbIP: "192.0.2.6", want: "map[false:192.0.2.6]"},
		{ann: "192.0.2.5, 2001:db8::5", fams: []corev1.IPFamily{"IPv4", "IPv6"}, want: "map[false:192.0.2.5 true:2001:db8::5]"},
		{ann: "2001:db8::5", err: "is IPv6 but the Service's ipFamilies are [IPv4]"},
		{ann: "nope", err: `annotation lvs.kubal.io/vip: "nope" is not an IP address`},
		{ann: "192.0.2.1,192.0.2.2", err: "two IPv4 addresses"},
		{ann: "224.0.0.1", err: "cannot be a service address"},
	}
	for _, tc := range cases {
		svc := lbService("", nil)
		if tc.ann != "" {
			svc.Annotations = map[string]string{AnnotationVIP: tc.ann}
		}
		svc.Spec.LoadBalancerIP = tc.lbIP
		if tc.fams != nil {
			svc.Spec.IPFamilies = tc.fams
		}
		got, err := requestedVIPs(svc)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.ann, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.ann, err)
		default:
			if s := fmtMap(got); s != tc.want {
				t.Errorf("%q: %s, want %s", tc.ann, s, tc.want)
			}
		}
	}
}

func fmtMap(m map[bool]netip.Addr) string {
	var parts []string
	for _, k := range []bool{false, true} {
		if a, ok := m[k]; ok {
			parts = append(parts, map[bool]string{false: "false", true: "true"}[k]+":"+a.String())
		}
	}
	return "map[" + strings.Join(parts, " ") + "]"
}

// FuzzAnnotations: any annotation values give a build or errors, never a panic,
// and a build's names and values pass the checks every other input passes.
func FuzzAnnotations(f *testing.F) {
	f.Add("wrr", `["ProxyFetch"]`, "0.5", "64600:1", "192.0.2.9", "n1=3", "proxyfetch.url", `["http://x/"]`)
	f.Add("", "", "", "", "", "", "", "")
	f.Add("mh", `'IdleConnection'`, "2", "x", "2001:db8::1", "=", "udp.interval", "-1")
	tmpl := testTemplate(f, "")
	checks := []func(*config.Service) config.Diagnostics{monitor.Validate}
	f.Fuzz(func(t *testing.T, sched, mons, thr, comm, vip, weights, monKey, monVal string) {
		ann := map[string]string{
			AnnotationPrefix + "scheduler": sched, AnnotationPrefix + "monitors": mons,
			AnnotationPrefix + "depool-threshold": thr, AnnotationPrefix + "bgp-communities": comm,
			AnnotationVIP: vip, AnnotationWeights: weights, AnnotationPrefix + monKey: monVal,
		}
		svc := lbService(corev1.ServiceExternalTrafficPolicyLocal, ann, corev1.ServicePort{Port: 80, NodePort: 30080})
		req, err := requestedVIPs(svc)
		if err != nil {
			return
		}
		vips := map[bool]netip.Addr{false: netip.MustParseAddr("192.0.2.1")}
		if a, ok := req[false]; ok {
			vips[false] = a
		}
		ps, errs := buildService(svc, ownedLB, tmpl, vips, checks)
		if len(errs) > 0 {
			if ps != nil {
				t.Fatalf("errors %v with ports", errs)
			}
			return
		}
		for _, p := range ps {
			if p.cfg.DepoolThreshold < 0 || p.cfg.DepoolThreshold > 1 || p.cfg.Port == 0 {
				t.Fatalf("accepted %+v", p.cfg)
			}
		}
	})
}

// TestOwnership: which Services the template owns, and an annotated NodePort's IPVS
// port (the node port: DR keeps the destination port).
func TestOwnership(t *testing.T) {
	tmpl := testTemplate(t, "annotated-nodeports = yes\n")
	other := "example.com/lb"
	lb := lbService(corev1.ServiceExternalTrafficPolicyCluster, nil)
	otherLB := lbService(corev1.ServiceExternalTrafficPolicyCluster, nil)
	otherLB.Spec.LoadBalancerClass = &other
	noClass := lbService(corev1.ServiceExternalTrafficPolicyCluster, nil)
	noClass.Spec.LoadBalancerClass = nil
	np := lbService(corev1.ServiceExternalTrafficPolicyCluster, map[string]string{AnnotationClass: "kubal.io/lvs", AnnotationVIP: "192.0.2.50"},
		corev1.ServicePort{Port: 80, NodePort: 30080, Protocol: corev1.ProtocolTCP})
	np.Spec.Type, np.Spec.LoadBalancerClass = corev1.ServiceTypeNodePort, nil
	npOther := np.DeepCopy()
	npOther.Annotations[AnnotationClass] = other
	cluster := lbService(corev1.ServiceExternalTrafficPolicyCluster, nil)
	cluster.Spec.Type = corev1.ServiceTypeClusterIP
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		want ownership
	}{
		{"LoadBalancer of the class", lb, ownedLB}, {"another class", otherLB, notOwned}, {"no class", noClass, notOwned},
		{"annotated NodePort", np, ownedNodePort}, {"NodePort annotated for another class", npOther, notOwned},
		{"ClusterIP", cluster, notOwned},
	} {
		if got := owns(tc.svc, tmpl); got != tc.want {
			t.Errorf("%s: owns = %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := owns(np, testTemplate(t, "")); got != notOwned {
		t.Errorf("annotated NodePort owned without annotated-nodeports = yes")
	}
	ps, errs := buildService(np, ownedNodePort, tmpl, map[bool]netip.Addr{false: netip.MustParseAddr("192.0.2.50")}, nil)
	if len(errs) > 0 || len(ps) != 1 {
		t.Fatal(errs)
	}
	if c := ps[0].cfg; c.Port != 30080 || c.Name != "shop.web:80" || c.Monitors[0] != "IdleConnection" || c.Options.Has("idleconnection.port") {
		t.Errorf("NodePort: %s port %d monitors %v options %s", c.Name, c.Port, c.Monitors, c.Options.Fingerprint())
	}
}
