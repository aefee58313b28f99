package k8ssource

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubal/kubal/source"
)

func ptr[T any](v T) *T { return &v }

// node builds a healthy node; mods adjust it.
func node(name string, mods ...func(*corev1.Node)) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"},
				{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse},
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: name},
				{Type: corev1.NodeExternalIP, Address: "203.0.113.7"},
				{Type: corev1.NodeInternalIP, Address: "10.0.0.7"},
				{Type: corev1.NodeInternalIP, Address: "2001:db8::7"},
			},
		},
	}
	for _, m := range mods {
		m(n)
	}
	return n
}

func setCond(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == t {
				n.Status.Conditions[i].Status, n.Status.Conditions[i].Reason = s, reason
				return
			}
		}
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: t, Status: s, Reason: reason})
	}
}

func eps(conds ...discoveryv1.EndpointConditions) Endpoints {
	var e Endpoints
	for _, c := range conds {
		e.Add(c)
	}
	return e
}

var (
	epReady            = discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)}
	epNilConds         = discoveryv1.EndpointConditions{}
	epNotReady         = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(false)}
	epServingNotReady  = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(false)}
	epTermServing      = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}
	epTermNotServing   = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(true)}
	epTermButMarkReady = discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(true)}
)

func TestNodeServer(t *testing.T) {
	v4 := netip.MustParseAddr("10.0.0.7")
	gated := Policy{Gated: true, ServiceName: "istio-system/gw"}
	tests := []struct {
		name    string
		node    *corev1.Node
		ep      Endpoints
		policy  Policy
		want    source.Server
		wantErr string // substring of the non-fatal finding
	}{
		{name: "healthy", node: node("a"), want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "IPv6 VIP picks the IPv6 InternalIP", node: node("a"), policy: Policy{IPv6: true},
			want: source.Server{Host: "a", Addr: netip.MustParseAddr("2001:db8::7"), Weight: 1, Enabled: true}},
		{name: "IPv4-mapped InternalIP counts as IPv4",
			node: node("a", func(n *corev1.Node) {
				n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "::ffff:10.0.0.9"}}
			}),
			want: source.Server{Host: "a", Addr: netip.MustParseAddr("10.0.0.9"), Weight: 1, Enabled: true}},
		{name: "no InternalIP of the family: DNS by name, still eligible",
			node: node("a", func(n *corev1.Node) { n.Status.Addresses = n.Status.Addresses[:3] }), policy: Policy{IPv6: true},
			want: source.Server{Host: "a", Weight: 1, Enabled: true}},
		{name: "NotReady", node: node("a", setCond(corev1.NodeReady, corev1.ConditionFalse, "KubeletNotReady")),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "not Ready (Ready=False: KubeletNotReady)"}},
		{name: "Ready Unknown (kubelet stopped posting)", node: node("a", setCond(corev1.NodeReady, corev1.ConditionUnknown, "NodeStatusUnknown")),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "not Ready (Ready=Unknown: NodeStatusUnknown)"}},
		{name: "no Ready condition", node: node("a", func(n *corev1.Node) { n.Status.Conditions = nil }),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "not Ready (no Ready condition)"}},
		{name: "NetworkUnavailable", node: node("a", setCond(corev1.NodeNetworkUnavailable, corev1.ConditionTrue, "NoRouteCreated")),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "NetworkUnavailable (NoRouteCreated)"}},
		{name: "exclude label with empty value still excludes",
			node: node("a", func(n *corev1.Node) { n.Labels = map[string]string{ExcludeLabel: ""} }),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Reason: "labelled " + ExcludeLabel}},
		{name: "cordoned, depool (default)", node: node("a", func(n *corev1.Node) { n.Spec.Unschedulable = true }),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Reason: "cordoned"}},
		{name: "cordoned, keep", node: node("a", func(n *corev1.Node) { n.Spec.Unschedulable = true }), policy: Policy{KeepCordon: true},
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "configured taint",
			node: node("a", func(n *corev1.Node) {
				n.Spec.Taints = []corev1.Taint{{Key: "lb.example/drain", Value: "yes", Effect: corev1.TaintEffectNoSchedule}}
			}),
			policy: Policy{Taints: []string{"other", "lb.example/drain"}},
			want:   source.Server{Host: "a", Addr: v4, Weight: 1, Reason: "tainted lb.example/drain=yes:NoSchedule"}},
		{name: "unconfigured taint is ignored",
			node: node("a", func(n *corev1.Node) {
				n.Spec.Taints = []corev1.Taint{{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoSchedule}}
			}),
			policy: Policy{Taints: []string{"lb.example/drain"}},
			want:   source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "weight annotation", node: node("a", func(n *corev1.Node) { n.Annotations = map[string]string{WeightAnnotation: " 7 "} }),
			want: source.Server{Host: "a", Addr: v4, Weight: 7, Enabled: true}},
		{name: "weight annotation 0", node: node("a", func(n *corev1.Node) { n.Annotations = map[string]string{WeightAnnotation: "0"} }),
			want: source.Server{Host: "a", Addr: v4, Weight: 0, Enabled: true}},
		{name: "bad weight annotation: weight 1 and a finding",
			node: node("a", func(n *corev1.Node) { n.Annotations = map[string]string{WeightAnnotation: "heavy"} }),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}, wantErr: `kubal.io/weight="heavy"`},
		{name: "weight annotation out of range",
			node: node("a", func(n *corev1.Node) { n.Annotations = map[string]string{WeightAnnotation: "70000"} }),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}, wantErr: "0..65535"},

		{name: "gated: ready endpoint", node: node("a"), ep: eps(epNotReady, epReady), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "gated: nil conditions mean ready", node: node("a"), ep: eps(epNilConds), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "gated: serving, not terminating, not ready", node: node("a"), ep: eps(epServingNotReady), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "gated: endpoint not ready", node: node("a"), ep: eps(epNotReady), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "istio-system/gw endpoint not ready"}},
		{name: "gated: terminating, still serving", node: node("a"), ep: eps(epTermServing), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "istio-system/gw endpoint terminating (still serving)"}},
		{name: "gated: terminating, not serving", node: node("a"), ep: eps(epTermNotServing), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "istio-system/gw endpoint terminating"}},
		{name: "gated: terminating but published ready is still terminating", node: node("a"), ep: eps(epTermButMarkReady), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "istio-system/gw endpoint terminating (still serving)"}},
		{name: "gated: rollout, a new ready pod beside a terminating one", node: node("a"), ep: eps(epTermServing, epReady), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "gated: no endpoint on node", node: node("a"), policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true, Down: "no istio-system/gw endpoint on node"}},
		{name: "not gated: endpoints ignored", node: node("a"), ep: eps(epNotReady),
			want: source.Server{Host: "a", Addr: v4, Weight: 1, Enabled: true}},
		{name: "every reason is listed",
			node: node("a", setCond(corev1.NodeReady, corev1.ConditionFalse, ""), func(n *corev1.Node) {
				n.Spec.Unschedulable = true
				n.Labels = map[string]string{ExcludeLabel: "true"}
			}),
			policy: gated,
			want: source.Server{Host: "a", Addr: v4, Weight: 1,
				Reason: "labelled " + ExcludeLabel + "; cordoned", Down: "not Ready (Ready=False); no istio-system/gw endpoint on node"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NodeServer(tt.node, tt.ep, tt.policy)
			if got != tt.want {
				t.Errorf("NodeServer =\n %+v\nwant\n %+v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("unexpected finding: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("finding %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestEndpointsByNode(t *testing.T) {
	slice := func(name string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name}, Endpoints: eps}
	}
	on := func(node string, c discoveryv1.EndpointConditions) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{NodeName: ptr(node), Conditions: c}
	}
	got := EndpointsByNode([]*discoveryv1.EndpointSlice{
		slice("v4", on("a", epReady), on("b", epTermServing), discoveryv1.Endpoint{Conditions: epReady}),
		// The same pods in the IPv6 slice of a dual-stack service, and c only there.
		slice("v6", on("a", epReady), on("b", epNotReady), on("c", epServingNotReady), on("", epReady)),
	})
	want := map[string]Endpoints{
		"a": {Ready: 2},
		"b": {Terminating: 1, TerminatingServing: 1, NotReady: 1},
		"c": {Serving: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("EndpointsByNode = %+v, want %+v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("node %s: %+v, want %+v", k, got[k], w)
		}
	}
	if !got["a"].Usable() || got["b"].Usable() || !got["c"].Usable() {
		t.Errorf("Usable: a %v b %v c %v, want true false true", got["a"].Usable(), got["b"].Usable(), got["c"].Usable())
	}
}

func TestTrimKeepsWhatEligibilityReads(t *testing.T) {
	n := node("a", setCond(corev1.NodeReady, corev1.ConditionFalse, "KubeletNotReady"), func(n *corev1.Node) {
		n.Labels = map[string]string{ExcludeLabel: "", "zone": "z1"}
		n.Annotations = map[string]string{WeightAnnotation: "3", "big": strings.Repeat("x", 1000)}
		n.Spec.Unschedulable = true
		n.Spec.Taints = []corev1.Taint{{Key: "t", Effect: corev1.TaintEffectNoExecute}}
		n.Status.Images = []corev1.ContainerImage{{Names: []string{"img"}, SizeBytes: 1}}
		n.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	})
	p := Policy{IPv6: true, Taints: []string{"t"}}
	tr, err := trimNode(n)
	if err != nil {
		t.Fatal(err)
	}
	tn := tr.(*corev1.Node)
	full, _ := NodeServer(n, Endpoints{}, p)
	trimmed, _ := NodeServer(tn, Endpoints{}, p)
	if full != trimmed {
		t.Errorf("trimmed node maps to %+v, full node to %+v", trimmed, full)
	}
	if len(tn.Status.Images) != 0 || len(tn.ManagedFields) != 0 || len(tn.Annotations) != 1 || len(tn.Labels) != 1 {
		t.Errorf("trim kept too much: %+v", tn)
	}
}
