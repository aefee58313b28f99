package k8ssource

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"
)

// Annotations on a Kubernetes Service. Every annotation under AnnotationPrefix is
// read: one kubal does not know is an error (an Event), never silently ignored.
const (
	AnnotationPrefix = "lvs.kubal.io/"
	// AnnotationVIP requests the VIP(s): one address, or one per family
	// ("192.0.2.10, 2001:db8::10") for a dual-stack Service.
	AnnotationVIP = AnnotationPrefix + "vip"
	// AnnotationClass opts a NodePort Service in (with annotated-nodeports = yes):
	// its value must be the template's class.
	AnnotationClass = AnnotationPrefix + "class"
	// AnnotationWeights sets node weights for this Service: "node-a=5, node-b=0".
	AnnotationWeights = AnnotationPrefix + "weights"

	// healthzURL is the ProxyFetch URL of kube-proxy's health check node port. The
	// host is only the Host header: the probe connects to the node's address.
	healthzURL = "http://kube-proxy/healthz"
)

// annotationKeys are the pybal.conf service keys an annotation may override, under
// AnnotationPrefix (e.g. lvs.kubal.io/scheduler). `<monitor>.<option>` keys of known
// monitors are allowed too (lvs.kubal.io/proxyfetch.url).
var annotationKeys = []string{
	"scheduler", "scheduler-flags", "monitors", "depool-threshold", "depool-mode", "drain-timeout",
	"bgp", "bgp-med", "bgp-communities", "bgp-withdraw-when-empty", "active-active",
}

// DeclaredName is the kubal service (pool) name of one port of one family of a
// Kubernetes Service: "<namespace>.<name>:<port>", plus "-udp" for UDP and "-v6"
// for IPv6. Namespaces and Service names are DNS labels (no dots), so the name is
// unambiguous; it has no '/' (it is one URL path segment in /pools/<pool>), no
// space, and is valid UTF-8 (a Prometheus label value and a kubalctl argument).
func DeclaredName(namespace, name string, port int32, proto corev1.Protocol, v6 bool) string {
	n := namespace + "." + name + ":" + strconv.Itoa(int(port))
	if proto == corev1.ProtocolUDP {
		n += "-udp"
	}
	if v6 {
		n += "-v6"
	}
	return n
}

// ownership says whether the template's controller owns a Service, and how.
type ownership int

const (
	notOwned      ownership = iota
	ownedLB                 // type LoadBalancer with our loadBalancerClass
	ownedNodePort           // annotated NodePort (annotated-nodeports = yes)
)

func owns(svc *corev1.Service, t *config.K8sServices) ownership {
	switch svc.Spec.Type {
	case corev1.ServiceTypeLoadBalancer:
		if svc.Spec.LoadBalancerClass != nil && *svc.Spec.LoadBalancerClass == t.Class {
			return ownedLB
		}
	case corev1.ServiceTypeNodePort:
		if t.AnnotatedNodePorts && svc.Annotations[AnnotationClass] == t.Class {
			return ownedNodePort
		}
	}
	return notOwned
}

// families are the Service's IP families (spec.ipFamilies; IPv4 when unset).
func families(svc *corev1.Service) []bool {
	if len(svc.Spec.IPFamilies) == 0 {
		return []bool{false}
	}
	var out []bool
	for _, f := range svc.Spec.IPFamilies {
		v6 := f == corev1.IPv6Protocol
		if !slices.Contains(out, v6) {
			out = append(out, v6)
		}
	}
	return out
}

// requestedVIPs reads the VIPs a Service asks for, per family (true = IPv6): the
// annotation, else spec.loadBalancerIP.
func requestedVIPs(svc *corev1.Service) (map[bool]netip.Addr, error) {
	raw, where := svc.Annotations[AnnotationVIP], "annotation "+AnnotationVIP
	if _, ok := svc.Annotations[AnnotationVIP]; !ok {
		raw, where = svc.Spec.LoadBalancerIP, "spec.loadBalancerIP"
	}
	out := map[bool]netip.Addr{}
	if strings.TrimSpace(raw) == "" {
		return out, nil
	}
	fams := families(svc)
	for _, f := range strings.Split(raw, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(f))
		switch {
		case err != nil || a.Zone() != "":
			return nil, fmt.Errorf("%s: %q is not an IP address", where, strings.TrimSpace(f))
		case a.Is4In6():
			return nil, fmt.Errorf("%s: %s is an IPv4-mapped IPv6 address; write the IPv4 address", where, a)
		case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
			return nil, fmt.Errorf("%s: %s cannot be a service address", where, a)
		case !slices.Contains(fams, a.Is6()):
			return nil, fmt.Errorf("%s: %s is %s but the Service's ipFamilies are %v", where, a, family(a.Is6()), svc.Spec.IPFamilies)
		}
		if _, dup := out[a.Is6()]; dup {
			return nil, fmt.Errorf("%s: two %s addresses", where, family(a.Is6()))
		}
		out[a.Is6()] = a
	}
	return out, nil
}

// overrides reads the lvs.kubal.io/ annotations that override service keys, each
// with a Pos naming the annotation (so the parser's errors name it).
func overrides(svc *corev1.Service) (config.Options, []string) {
	o := config.Options{}
	var bad []string
	for _, k := range slices.Sorted(maps.Keys(svc.Annotations)) {
		key, ok := strings.CutPrefix(k, AnnotationPrefix)
		if !ok {
			continue
		}
		switch {
		case k == AnnotationVIP || k == AnnotationClass || k == AnnotationWeights:
			continue
		case slices.Contains(annotationKeys, key) || isMonitorOption(key):
		default:
			bad = append(bad, fmt.Sprintf("annotation %s: unknown key %q (known: vip, class, weights, %s, <monitor>.<option>)",
				k, key, strings.Join(annotationKeys, ", ")))
			continue
		}
		o[key] = config.Value{Raw: svc.Annotations[k], Pos: config.Pos{File: "Service " + svc.Namespace + "/" + svc.Name + " annotation " + k}}
	}
	return o, bad
}

func isMonitorOption(key string) bool {
	mon, opt, ok := strings.Cut(key, ".")
	if !ok {
		return false
	}
	for _, m := range config.MonitorNames() {
		if strings.EqualFold(m, mon) {
			return slices.Contains(config.MonitorOptionNames(m), opt)
		}
	}
	return false
}

// parseWeights reads AnnotationWeights: "node=weight" pairs, comma-separated.
func parseWeights(raw string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		node, w, ok := strings.Cut(part, "=")
		node = strings.TrimSpace(node)
		if !ok {
			return nil, fmt.Errorf("annotation %s: %q is not node=weight", AnnotationWeights, part)
		}
		if err := source.CheckHost(node); err != nil {
			return nil, fmt.Errorf("annotation %s: %v", AnnotationWeights, err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(w), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("annotation %s: weight %q of %s is not an integer", AnnotationWeights, strings.TrimSpace(w), node)
		}
		if err := source.CheckWeight(n); err != nil {
			return nil, fmt.Errorf("annotation %s: node %s: %v", AnnotationWeights, node, err)
		}
		if _, dup := out[node]; dup {
			return nil, fmt.Errorf("annotation %s: node %s listed twice", AnnotationWeights, node)
		}
		out[node] = int(n)
	}
	return out, nil
}

// declaredPort is one kubal service built from a Kubernetes Service.
type declaredPort struct {
	cfg   *config.Service
	group string // the node set it uses: namespace/name|family
	fp    string // cfg.Options.Fingerprint(), computed once
}

// groupKey names the node set of one family of one Service.
func groupKey(owner string, v6 bool) string { return owner + "|" + family(v6) }

// buildService turns one owned Service into kubal services, one per family x port,
// with the VIPs already assigned (vips: family -> address; a family without one is
// skipped). Every value is checked by config.DeclaredService, the pybal.conf service
// parser, plus checks (e.g. monitor.Validate). Any error makes the whole Service
// invalid: errs is then non-empty and the caller keeps its last good services.
func buildService(svc *corev1.Service, how ownership, t *config.K8sServices, vips map[bool]netip.Addr, checks []func(*config.Service) config.Diagnostics) (out []declaredPort, errs []string) {
	owner := svc.Namespace + "/" + svc.Name
	pos := config.Pos{File: "Service " + owner}
	ov, bad := overrides(svc)
	errs = append(errs, bad...)
	if raw, ok := svc.Annotations[AnnotationWeights]; ok {
		if _, err := parseWeights(raw); err != nil {
			errs = append(errs, err.Error())
		}
	}
	local := how == ownedLB && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	u := URL{Nodes: t.Nodes}
	if local {
		u.Namespace, u.Service = svc.Namespace, svc.Name
	}
	monitorsSet := ov.Has("monitors") || t.Options.Has("monitors")
	for _, v6 := range families(svc) {
		vip, ok := vips[v6]
		if !ok {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP && p.Protocol != "" {
				errs = append(errs, fmt.Sprintf("port %d: protocol %s: kubal balances TCP and UDP only", p.Port, p.Protocol))
				continue
			}
			proto := corev1.ProtocolTCP
			if p.Protocol == corev1.ProtocolUDP {
				proto = corev1.ProtocolUDP
			}
			ipvsPort := p.Port
			if how == ownedNodePort {
				// DR keeps the destination port: kube-proxy's NodePort rules match
				// the node port (the VIP must be on the workers' loopback).
				ipvsPort = p.NodePort
			}
			name := DeclaredName(svc.Namespace, svc.Name, p.Port, proto, v6)
			set := config.Options{}
			for k, v := range ov {
				set[k] = v
			}
			put := func(k, v string) { set[k] = config.Value{Raw: v, Pos: pos} }
			put("protocol", strings.ToLower(string(proto)))
			put("ip", vip.String())
			put("port", strconv.Itoa(int(ipvsPort)))
			put("config", u.String())
			if !monitorsSet {
				defaultMonitors(put, svc, p, proto, local, how)
			}
			monitorPorts(set, t.Options, put, svc, p, local, how)
			cfg, derrs, _ := config.DeclaredService(t, name, pos, set, checks...)
			for _, d := range derrs {
				errs = append(errs, d.String())
			}
			out = append(out, declaredPort{cfg: cfg, group: groupKey(owner, v6), fp: cfg.Options.Fingerprint()})
		}
	}
	if len(errs) > 0 {
		return nil, dedupe(errs)
	}
	return out, nil
}

// defaultMonitors: externalTrafficPolicy Local probes kube-proxy's own answer for
// the Service on the node (healthCheckNodePort /healthz: 200 while a ready endpoint
// is local, 503 otherwise), so the LVS health check and kube-proxy agree; Cluster
// (and annotated NodePorts) check the node port is open.
func defaultMonitors(put func(k, v string), svc *corev1.Service, p corev1.ServicePort, proto corev1.Protocol, local bool, how ownership) {
	switch {
	case local && svc.Spec.HealthCheckNodePort != 0:
		put("monitors", `["ProxyFetch"]`)
		put("proxyfetch.url", `["`+healthzURL+`"]`)
	case proto == corev1.ProtocolUDP && (p.NodePort != 0 || how == ownedNodePort):
		put("monitors", `["UDP"]`)
	case p.NodePort != 0:
		put("monitors", `["IdleConnection"]`)
	default:
		// No node port (allocateLoadBalancerNodePorts: false): nothing on the node
		// answers for this port but the VIP itself; the Kubernetes node health and,
		// with Local, the endpoint gate still apply.
		put("monitors", `[]`)
	}
}

// monitorPorts points every monitor without its own `.port` at what answers on a
// node: traffic to VIP:port is kube-proxy's, but a probe goes to the node's address,
// where only the node port (and, with Local, the health check node port) answer.
func monitorPorts(set, tmpl config.Options, put func(k, v string), svc *corev1.Service, p corev1.ServicePort, local bool, how ownership) {
	if how == ownedNodePort {
		return // the service port is the node port already
	}
	mons := set["monitors"].Raw
	if mons == "" {
		mons = tmpl["monitors"].Raw
	}
	lit, err := config.ParseLiteral(strings.TrimSpace(mons))
	if err != nil {
		return // the parser reports it
	}
	names, err := lit.Strings()
	if err != nil {
		return
	}
	for _, m := range names {
		key := strings.ToLower(m) + ".port"
		if set.Has(key) || tmpl.Has(key) {
			continue
		}
		switch {
		case m == "ProxyFetch" && local && svc.Spec.HealthCheckNodePort != 0:
			put(key, strconv.Itoa(int(svc.Spec.HealthCheckNodePort)))
			if !set.Has("proxyfetch.url") && !tmpl.Has("proxyfetch.url") {
				put("proxyfetch.url", `["`+healthzURL+`"]`)
			}
		case p.NodePort != 0 && slices.Contains(config.MonitorOptionNames(m), "port"):
			put(key, strconv.Itoa(int(p.NodePort)))
		}
	}
}

func dedupe(ss []string) []string {
	var out []string
	for _, s := range ss {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// With returns static plus the declared services: the config the services, the plan
// and the API run on. static is not modified; a nil d returns static.
func (d *Desired) With(static *config.Config) *config.Config {
	if d == nil || len(d.Services) == 0 {
		return static
	}
	cfg := *static
	cfg.Services = slices.Clone(static.Services)
	for _, dc := range d.Services {
		cfg.Services = append(cfg.Services, dc.Config)
	}
	return &cfg
}

// Source is the source of the declared service named name, nil when there is none.
func (d *Desired) Source(name string) source.Source {
	if d != nil {
		for _, dc := range d.Services {
			if dc.Config.Name == name {
				return dc.Source
			}
		}
	}
	return nil
}

// Alerts are the refused or held-back Services, one line each, sorted.
func (d *Desired) Alerts() []string {
	if d == nil {
		return nil
	}
	var out []string
	for _, svc := range slices.Sorted(maps.Keys(d.Problems)) {
		out = append(out, fmt.Sprintf("Kubernetes Service %s: %s", svc, d.Problems[svc]))
	}
	return out
}
