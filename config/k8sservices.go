package config

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// K8sServicesSection is the name of the template section for Kubernetes-declared
// services. It is not a service: ip, port, protocol and config come from each
// Kubernetes Service; every other service key is a default for them.
const K8sServicesSection = "k8s-services"

// K8sServices is the [k8s-services] section: which Kubernetes Services kubal owns,
// which Nodes are their real servers, the VIP ranges it may allocate from, and the
// defaults of every service key.
type K8sServices struct {
	Pos Pos
	// Class is the spec.loadBalancerClass kubal owns (e.g. kubal.io/lvs).
	Class string
	// AnnotatedNodePorts: also own NodePort Services annotated lvs.kubal.io/class = Class.
	AnnotatedNodePorts bool
	// Nodes is the label selector of the Nodes that are real servers ("" = all).
	Nodes string
	// VIPRanges are the prefixes VIPs may come from (requested or allocated).
	VIPRanges []netip.Prefix
	// CriticalPods gate every node: a node is healthy only with a ready Pod of
	// each (e.g. calico-node), in the form namespace/label-selector.
	CriticalPods []CriticalPods
	// Defaults is the section read as a service: the defaults every declared service
	// starts from (Name is the section's; no IP, port, protocol or source).
	Defaults *Service
	// Options are the section's keys minus the template-only ones: the defaults of
	// every declared service, read by DeclaredService with the pybal.conf parser.
	Options Options
	// ActiveActive is [global]'s active-active: the default of every declared service
	// whose template or annotations do not set it.
	ActiveActive bool

	rangesPos Pos
}

// CriticalPods names the Pods (typically a DaemonSet's) that must be ready on a node
// for it to take traffic: `kube-system/k8s-app=calico-node`.
type CriticalPods struct {
	Namespace string
	Selector  string // a label selector (checked by k8ssource.CheckTemplate)
}

func (c CriticalPods) String() string { return c.Namespace + "/" + c.Selector }

// k8sTemplateKeys are the keys only the template section has.
var k8sTemplateKeys = map[string]bool{
	"class": true, "annotated-nodeports": true, "nodes": true, "vip-ranges": true, "critical-pods": true,
}

// k8sPerServiceKeys are service keys each Kubernetes Service sets itself: not allowed
// in the template.
var k8sPerServiceKeys = []string{"protocol", "ip", "port", "config"}

// k8sTemplate reads [k8s-services]. Its service keys are checked with the same code
// as a service section (p.service), without the keys each Service provides.
func (p *parser) k8sTemplate(s *iniSection, o Options, inherited map[string]bool) *K8sServices {
	t := &K8sServices{Pos: s.pos, Options: Options{}, ActiveActive: p.activeActive}
	for k, v := range o {
		if !k8sTemplateKeys[k] {
			t.Options[k] = v
		}
	}
	for _, key := range k8sPerServiceKeys {
		if v, ok := o[key]; ok && !inherited[key] {
			p.errorf(v.Pos, key, "not allowed in [%s]: each Kubernetes Service sets its own %s", K8sServicesSection, key)
		}
		// [DEFAULT] values of these keys are meant for static sections.
		delete(t.Options, key)
	}
	v, ok := o["class"]
	t.Class = strings.TrimSpace(v.Raw)
	switch {
	case !ok:
		p.errorf(s.pos, "class", "required key missing in [%s] (the spec.loadBalancerClass kubal owns, e.g. kubal.io/lvs)", K8sServicesSection)
	case !validClass(t.Class):
		p.errorf(v.Pos, "class", "%q is not a load balancer class: want a domain-prefixed name such as kubal.io/lvs", t.Class)
	}
	t.AnnotatedNodePorts = p.bool(o, "annotated-nodeports", false)
	t.Nodes = o.String("nodes", "")
	if v, ok := o["vip-ranges"]; ok {
		t.rangesPos = v.Pos
		for _, r := range p.flexList(o, "vip-ranges", nil) {
			pfx, err := netip.ParsePrefix(r)
			switch {
			case err != nil:
				p.errorf(v.Pos, "vip-ranges", "%q is not a CIDR prefix (e.g. 192.0.2.0/24, 2001:db8:1::/112)", r)
				continue
			case pfx.Addr().Is4In6() || pfx.Addr().Zone() != "":
				p.errorf(v.Pos, "vip-ranges", "%q: write IPv4 ranges as IPv4, without a zone", r)
				continue
			case pfx.Masked() != pfx:
				p.errorf(v.Pos, "vip-ranges", "%q has host bits set: did you mean %s?", r, pfx.Masked())
				continue
			}
			for _, other := range t.VIPRanges {
				if other.Overlaps(pfx) {
					p.errorf(v.Pos, "vip-ranges", "%s overlaps %s", pfx, other)
				}
			}
			t.VIPRanges = append(t.VIPRanges, pfx)
		}
	}
	if v, ok := o["critical-pods"]; ok {
		for _, c := range p.flexList(o, "critical-pods", nil) {
			ns, sel, ok := strings.Cut(c, "/")
			if !ok || !validNamespace(ns) || strings.TrimSpace(sel) == "" {
				p.errorf(v.Pos, "critical-pods", "%q is not namespace/label-selector (e.g. kube-system/k8s-app=calico-node)", c)
				continue
			}
			t.CriticalPods = append(t.CriticalPods, CriticalPods{Namespace: ns, Selector: strings.TrimSpace(sel)})
		}
	}
	// The defaults: read as a service without its own protocol/ip/port/config.
	t.Defaults = p.serviceWith(s, t.Options, inherited, true)
	return t
}

// validClass: a loadBalancerClass is a label-style key with a mandatory prefix.
func validClass(c string) bool {
	prefix, name, ok := strings.Cut(c, "/")
	if !ok || prefix == "" || name == "" || len(c) > 253 || strings.Contains(name, "/") {
		return false
	}
	for _, r := range c {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._/", r)) {
			return false
		}
	}
	return true
}

// validNamespace: a DNS-1123 label.
func validNamespace(ns string) bool {
	if ns == "" || len(ns) > 63 || ns[0] == '-' || ns[len(ns)-1] == '-' {
		return false
	}
	for _, r := range ns {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// DeclaredService builds one Kubernetes-declared service from the template and the
// keys the Kubernetes Service sets (protocol, ip, port, config, and its annotation
// overrides), with the same parser and checks as a pybal.conf section, so a value an
// annotation may hold is exactly one pybal.conf accepts. set's values carry their own
// Pos (e.g. the annotation's name) for the errors. The result is valid when the
// Diagnostics are empty; warnings (unknown keys, no monitors) are returned apart.
func DeclaredService(t *K8sServices, name string, pos Pos, set Options, checks ...func(*Service) Diagnostics) (svc *Service, errs, warns Diagnostics) {
	p := &parser{activeActive: t.ActiveActive, declared: true}
	o := Options{}
	for k, v := range t.Options {
		o[k] = v
	}
	for k, v := range set {
		o[k] = v
	}
	svc = p.serviceWith(&iniSection{name: name, pos: pos}, o, map[string]bool{}, false)
	for _, check := range checks {
		p.external(pos, check(svc))
	}
	return svc, finish(p.errs), finish(p.warns)
}

// Fingerprint is a stable text of a service's options (sorted key=value): equal
// fingerprints mean equal services, for callers that rebuild services often and
// want to know whether anything changed.
func (o Options) Fingerprint() string {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, o[k].Raw)
	}
	return b.String()
}
