package config

import (
	"net/netip"
	"strings"
	"testing"
)

// TestK8sTemplate: [k8s-services] is read with the service parser (same errors, same
// file:line), without the keys each Kubernetes Service sets.
func TestK8sTemplate(t *testing.T) {
	const head = "[global]\netcd-endpoints = 127.0.0.1:2379\n[svc]\n" +
		"protocol = tcp\nip = 10.0.0.1\nport = 80\nscheduler = wrr\nconfig = file:///x\nmonitors = ['IdleConnection']\n"
	cases := []struct {
		name   string
		lines  string
		errs   []string // substrings, each must appear; none: valid
		warns  []string
		checks func(t *testing.T, k *K8sServices)
	}{
		{
			name: "valid",
			lines: "class = kubal.io/lvs\nnodes = role=worker\nvip-ranges = 192.0.2.0/28, 2001:db8::/120\n" +
				"scheduler = mh\nscheduler-flags = mh-port\ndepool-threshold = 0.3\nconftool = eqiad/k8s/workers\n" +
				"bgp-med = 10\nannotated-nodeports = yes\ncritical-pods = kube-system/k8s-app=calico-node\n",
			checks: func(t *testing.T, k *K8sServices) {
				if k.Class != "kubal.io/lvs" || k.Nodes != "role=worker" || !k.AnnotatedNodePorts {
					t.Errorf("got %+v", k)
				}
				want := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/28"), netip.MustParsePrefix("2001:db8::/120")}
				if len(k.VIPRanges) != 2 || k.VIPRanges[0] != want[0] || k.VIPRanges[1] != want[1] {
					t.Errorf("ranges %v", k.VIPRanges)
				}
				if len(k.CriticalPods) != 1 || k.CriticalPods[0].String() != "kube-system/k8s-app=calico-node" {
					t.Errorf("critical pods %v", k.CriticalPods)
				}
				if k.Defaults.Scheduler != "mh" || k.Defaults.DepoolThreshold != 0.3 || k.Defaults.Conftool != "eqiad/k8s/workers" {
					t.Errorf("defaults %+v", k.Defaults)
				}
				if _, ok := k.Options["class"]; ok {
					t.Errorf("template-only key class in the service defaults")
				}
				cfg := &Config{Path: "k8s.conf", K8sServices: k}
				wantSum := "[k8s-services]: Services of loadBalancerClass kubal.io/lvs and annotated NodePorts; nodes role=worker; vip-ranges 192.0.2.0/28,2001:db8::/120\n"
				if sum := cfg.Summary(); !strings.Contains(sum, wantSum) {
					t.Errorf("summary:\n%s\nwant the line %q", sum, wantSum)
				}
			},
		},
		{name: "no class", lines: "scheduler = rr\n", errs: []string{"k8s.conf:10: class: required key missing"}},
		{name: "bad class", lines: "class = lvs\nscheduler = rr\n", errs: []string{"k8s.conf:11: class: \"lvs\" is not a load balancer class"}},
		{name: "per-service key", lines: "class = a.io/b\nscheduler = rr\nip = 10.0.0.9\n", errs: []string{"k8s.conf:13: ip: not allowed in [k8s-services]"}},
		{name: "bad scheduler (same check as a section)", lines: "class = a.io/b\nscheduler = fast\n", errs: []string{"k8s.conf:12: scheduler: \"fast\" is not one of rr"}},
		{name: "scheduler required as in a section", lines: "class = a.io/b\n", errs: []string{"k8s.conf:10: scheduler: required key missing in [k8s-services]"}},
		{name: "bad range", lines: "class = a.io/b\nscheduler = rr\nvip-ranges = 192.0.2.1/24\n", errs: []string{"k8s.conf:13: vip-ranges: \"192.0.2.1/24\" has host bits set: did you mean 192.0.2.0/24?"}},
		{name: "overlapping ranges", lines: "class = a.io/b\nscheduler = rr\nvip-ranges = 192.0.2.0/24, 192.0.2.128/25\n", errs: []string{"overlaps"}},
		{name: "not a range", lines: "class = a.io/b\nscheduler = rr\nvip-ranges = ['x']\n", errs: []string{"\"x\" is not a CIDR prefix"}},
		{name: "static VIP in range", lines: "class = a.io/b\nscheduler = rr\nvip-ranges = 10.0.0.0/30\n", warns: []string{"holds the VIP 10.0.0.1 of [svc]"}},
		{name: "bad threshold", lines: "class = a.io/b\nscheduler = rr\ndepool-threshold = 2\n", errs: []string{"k8s.conf:13: depool-threshold: 2 is outside [0, 1]"}},
		{name: "bad critical pods", lines: "class = a.io/b\nscheduler = rr\ncritical-pods = calico-node\n", errs: []string{`critical-pods: "calico-node" is not namespace/label-selector`}},
		{name: "unknown key warned", lines: "class = a.io/b\nscheduler = rr\nschedular = rr\n", warns: []string{"unknown key in [k8s-services]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("k8s.conf", []byte(head+"[k8s-services]\n"+tc.lines))
			if len(tc.errs) == 0 && err != nil {
				t.Fatalf("unexpected errors:\n%v", err)
			}
			for _, e := range tc.errs {
				if err == nil || !strings.Contains(err.Error(), e) {
					t.Errorf("want error %q, got:\n%v", e, err)
				}
			}
			for _, w := range tc.warns {
				if !strings.Contains(cfg.Warnings.Error(), w) {
					t.Errorf("want warning %q, got:\n%v", w, cfg.Warnings)
				}
			}
			if len(cfg.Services) != 1 {
				t.Errorf("[k8s-services] read as a service: %d services", len(cfg.Services))
			}
			if tc.checks != nil && err == nil {
				tc.checks(t, cfg.K8sServices)
			}
		})
	}
}

// TestDeclaredService: the template plus a Service's own keys, through the section
// parser; an override's error names where it came from.
func TestDeclaredService(t *testing.T) {
	cfg, err := Parse("k8s.conf", []byte("[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\ndepool-threshold = 0.4\n"))
	if err != nil {
		t.Fatal(err)
	}
	own := func(extra Options) Options {
		pos := Pos{File: "Service default/web"}
		o := Options{
			"protocol": {Raw: "tcp", Pos: pos}, "ip": {Raw: "192.0.2.1", Pos: pos}, "port": {Raw: "443", Pos: pos},
			"config": {Raw: "k8s://?endpoints=default/web", Pos: pos}, "monitors": {Raw: "[]", Pos: pos},
		}
		for k, v := range extra {
			o[k] = v
		}
		return o
	}
	svc, errs, _ := DeclaredService(cfg.K8sServices, "default.web:443", Pos{File: "Service default/web"}, own(nil))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if svc.Scheduler != "wrr" || svc.DepoolThreshold != 0.4 || svc.Port != 443 || svc.IP != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("got %+v", svc)
	}
	ann := Pos{File: "Service default/web annotation lvs.kubal.io/scheduler"}
	svc, errs, _ = DeclaredService(cfg.K8sServices, "default.web:443", Pos{File: "Service default/web"},
		own(Options{"scheduler": {Raw: "sh", Pos: ann}}))
	if len(errs) > 0 || svc.Scheduler != "sh" {
		t.Fatalf("override: %v %+v", errs, svc)
	}
	_, errs, _ = DeclaredService(cfg.K8sServices, "default.web:443", Pos{File: "Service default/web"},
		own(Options{"scheduler": {Raw: "fastest", Pos: ann}}))
	if want := `Service default/web annotation lvs.kubal.io/scheduler: scheduler: "fastest" is not one of`; len(errs) != 1 || !strings.Contains(errs.Error(), want) {
		t.Fatalf("errors %v, want %q", errs, want)
	}
}

// TestActiveActiveDefault: [global]'s active-active is the default of every service,
// static or Kubernetes-declared; a section or an annotation may opt out.
func TestActiveActiveDefault(t *testing.T) {
	text := "[global]\nactive-active = yes\n\n" + section("on", "scheduler = mh") + "\n" +
		section("off", "port = 81", "active-active = no") +
		"\n[k8s-services]\nclass = kubal.io/lvs\nscheduler = mh\n"
	cfg, err := Parse("t.conf", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Global.ActiveActive || !cfg.Services[0].ActiveActive || cfg.Services[1].ActiveActive {
		t.Errorf("global %v, [on] %v, [off] %v: want true, true, false", cfg.Global.ActiveActive, cfg.Services[0].ActiveActive, cfg.Services[1].ActiveActive)
	}
	pos := Pos{File: "Service default/web"}
	own := Options{"protocol": {Raw: "tcp", Pos: pos}, "ip": {Raw: "192.0.2.1", Pos: pos}, "port": {Raw: "443", Pos: pos},
		"config": {Raw: "k8s://?endpoints=default/web", Pos: pos}, "monitors": {Raw: "[]", Pos: pos}}
	svc, errs, _ := DeclaredService(cfg.K8sServices, "default.web:443", pos, own)
	if len(errs) > 0 || !svc.ActiveActive {
		t.Fatalf("declared service: errors %v, active-active %v; want none, true", errs, svc.ActiveActive)
	}
	ann := Pos{File: "Service default/web annotation lvs.kubal.io/scheduler"}
	own["scheduler"] = Value{Raw: "wrr", Pos: ann}
	if _, errs, _ = DeclaredService(cfg.K8sServices, "default.web:443", pos, own); !strings.Contains(errs.Error(), "needs scheduler = mh, not wrr") {
		t.Errorf("an annotation's wrr on an active-active template: errors %v", errs)
	}
}

// kubeconfig is used by [k8s-services] alone: no "has no effect" warning.
func TestKubeconfigUsedByTemplate(t *testing.T) {
	cfg, err := Parse("k.conf", []byte("[global]\nkubeconfig = /etc/kubal/kubeconfig\n\n[k8s-services]\nclass = kubal.io/lvs\nscheduler = rr\n"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cfg.Warnings.Error(), "kubeconfig") {
		t.Errorf("warnings: %v", cfg.Warnings)
	}
}
