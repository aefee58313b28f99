package k8ssource

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubal/kubal/source"
)

const (
	// WeightAnnotation on a Node sets its IPVS weight (default 1).
	WeightAnnotation = "kubal.io/weight"
	// ExcludeLabel is the well-known label that takes a Node out of external load
	// balancers; like the Kubernetes service controller, its presence counts, not its value.
	ExcludeLabel = corev1.LabelNodeExcludeBalancers
	// ServiceNameLabel links an EndpointSlice to its Service.
	ServiceNameLabel = discoveryv1.LabelServiceName

	// CordonDepool and CordonKeep are the values of the `k8s-cordoned` service key.
	CordonDepool = "depool"
	CordonKeep   = "keep"

	maxWeight = source.MaxWeight // IPVS weights are 16-bit in practice (ipvsadm refuses more)
)

// Policy is the per-service part of node eligibility.
type Policy struct {
	IPv6        bool     // the VIP's family: pick the InternalIP of this family
	KeepCordon  bool     // k8s-cordoned = keep: a cordoned node stays eligible
	Taints      []string // taint keys that make a node ineligible (k8s-taints)
	Gated       bool     // endpoints= given: a node needs a usable endpoint
	ServiceName string   // namespace/service, for reasons
	// Members (a declared externalTrafficPolicy: Local Service): only the nodes that
	// run an endpoint of ServiceName, in any condition, are real servers; the others
	// are left out of the set (see Services.updateNode). Gated still makes an
	// endpoint that is not usable a health signal among them.
	Members bool
}

// Endpoints summarises one Node's endpoints of the gating Service, over all its
// EndpointSlices.
type Endpoints struct {
	Ready              int // ready (nil = true, as the API says)
	Serving            int // serving and not terminating, but not ready
	Terminating        int // terminating (serving or not)
	TerminatingServing int // of Terminating: still serving
	NotReady           int // neither ready nor serving, not terminating
}

// Usable reports whether the node has an endpoint fit for new traffic: a ready one, or
// one that is serving and not terminating.
func (e Endpoints) Usable() bool { return e.Ready > 0 || e.Serving > 0 }

// Add counts one endpoint's conditions, with the API's nil defaults: ready nil = true,
// serving nil = true, terminating nil = false.
func (e *Endpoints) Add(c discoveryv1.EndpointConditions) {
	ready := c.Ready == nil || *c.Ready
	serving := c.Serving == nil || *c.Serving
	terminating := c.Terminating != nil && *c.Terminating
	switch {
	case terminating:
		// A terminating endpoint is never fit for new connections, even if the
		// publisher set ready (publishNotReadyAddresses): the pod is going away.
		e.Terminating++
		if serving {
			e.TerminatingServing++
		}
	case ready:
		e.Ready++
	case serving:
		e.Serving++
	default:
		e.NotReady++
	}
}

// EndpointsByNode aggregates EndpointSlices per Node name. Endpoints without a
// nodeName cannot gate a node and are ignored.
func EndpointsByNode(slices []*discoveryv1.EndpointSlice) map[string]Endpoints {
	n := 0
	for _, s := range slices {
		n += len(s.Endpoints)
	}
	m := make(map[string]Endpoints, n)
	for _, s := range slices {
		for i := range s.Endpoints {
			ep := &s.Endpoints[i]
			if ep.NodeName == nil || *ep.NodeName == "" {
				continue
			}
			e := m[*ep.NodeName]
			e.Add(ep.Conditions)
			m[*ep.NodeName] = e
		}
	}
	return m
}

// NodeServer maps one Node to a real server. It is a pure function of its inputs.
//
// An unhealthy node (not Ready, NetworkUnavailable, no usable endpoint of the gating
// service) is returned with Down set: the service feeds it to the coordinator as a
// failing health check, held to the depool threshold, so a control-plane problem
// (every kubelet cut from the API server) cannot empty the pool. A cordoned, excluded
// or tainted node is "disabled but known" (Enabled false, every reason in Reason),
// like an admin depool. Neither is dropped: it stays visible in /pools with why, and
// counts in the threshold's denominator. Only deleted (or unselected) Nodes leave the
// set. PyBal's never-released k8s observer disabled NotReady nodes instead.
//
// The error is a non-fatal finding (a bad weight annotation); the Server is usable
// regardless (weight 1 then).
func NodeServer(n *corev1.Node, ep Endpoints, p Policy) (source.Server, error) {
	s := source.Server{Host: n.Name, Weight: 1}
	var warn error
	if v, ok := n.Annotations[WeightAnnotation]; ok {
		w, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil || w < 0 || w > maxWeight:
			warn = fmt.Errorf("node %s: annotation %s=%q: want an integer 0..%d; using weight 1", n.Name, WeightAnnotation, v, maxWeight)
		default:
			s.Weight = w
		}
	}

	// Without an InternalIP of the VIP's family, Addr stays zero and the daemon
	// resolves the node name by DNS, as PyBal did with every k8s node.
	s.Addr, _ = internalIP(n, p.IPv6)
	// Health (conditions, the gating endpoint) is a signal held to the depool
	// threshold, like a failing monitor; cordon, the exclude label and taints are
	// SRE decisions that disable, like an admin depool.
	down := conditionReasons(n)
	if p.Gated && !ep.Usable() {
		down = append(down, endpointReason(ep, p.ServiceName))
	}
	s.Down = strings.Join(down, "; ")
	var reasons []string
	if _, ok := n.Labels[ExcludeLabel]; ok {
		reasons = append(reasons, "labelled "+ExcludeLabel)
	}
	if n.Spec.Unschedulable && !p.KeepCordon {
		reasons = append(reasons, "cordoned")
	}
	for _, t := range n.Spec.Taints {
		if slices.Contains(p.Taints, t.Key) {
			reasons = append(reasons, "tainted "+taintString(t))
		}
	}
	s.Enabled = len(reasons) == 0
	s.Reason = strings.Join(reasons, "; ")
	return s, warn
}

// internalIP returns the node's first InternalIP of the wanted family.
func internalIP(n *corev1.Node, v6 bool) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		if ip.Is6() == v6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func conditionReasons(n *corev1.Node) []string {
	var out []string
	ready := false
	for _, c := range n.Status.Conditions {
		switch c.Type {
		case corev1.NodeReady:
			ready = true
			if c.Status != corev1.ConditionTrue {
				out = append(out, "not Ready (Ready="+string(c.Status)+withReason(c.Reason)+")")
			}
		case corev1.NodeNetworkUnavailable:
			if c.Status == corev1.ConditionTrue {
				out = append(out, "NetworkUnavailable"+parenReason(c.Reason))
			}
		}
	}
	if !ready {
		out = append(out, "not Ready (no Ready condition)")
	}
	return out
}

func withReason(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}

func parenReason(r string) string {
	if r == "" {
		return ""
	}
	return " (" + r + ")"
}

func taintString(t corev1.Taint) string {
	s := t.Key
	if t.Value != "" {
		s += "=" + t.Value
	}
	return s + ":" + string(t.Effect)
}

func endpointReason(ep Endpoints, svc string) string {
	switch {
	case ep.TerminatingServing > 0:
		return svc + " endpoint terminating (still serving)"
	case ep.Terminating > 0:
		return svc + " endpoint terminating"
	case ep.NotReady > 0:
		return svc + " endpoint not ready"
	default:
		return "no " + svc + " endpoint on node"
	}
}
