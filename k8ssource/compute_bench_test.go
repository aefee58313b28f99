package k8ssource

import (
	"fmt"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kubal/kubal/source"
)

// perfView is a view over 5,000 trimmed Nodes gated by 5,000 endpoints in 50 slices.
func perfView(tb testing.TB) (*view, cache.Store) {
	nodes := cache.NewStore(cache.MetaNamespaceKeyFunc)
	slices := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for s := 0; s < perfNodes/perfPerSlice; s++ {
		var eps []discoveryv1.Endpoint
		for i := s * perfPerSlice; i < (s+1)*perfPerSlice; i++ {
			eps = append(eps, endpoint("10.0.0.1", perfNodeName(i), epReady))
		}
		es, _ := trimEndpointSlice(epSlice(fmt.Sprintf("gw-%03d", s), "ns", "gw", eps...))
		if err := slices.Add(es); err != nil {
			tb.Fatal(err)
		}
	}
	for i := range perfNodes {
		n, _ := trimNode(perfNode(i))
		if err := nodes.Add(n); err != nil {
			tb.Fatal(err)
		}
	}
	v := newView(Policy{Gated: true, ServiceName: "ns/gw"}, slog.New(slog.DiscardHandler), nodes, slices)
	return v, nodes
}

// BenchmarkViewFull is a full pass (initial sync, recovery): 5,000 Nodes, 5,000
// endpoints.
func BenchmarkViewFull(b *testing.B) {
	v, _ := perfView(b)
	for b.Loop() {
		v.set, v.contrib, v.byNode = source.Set{}, map[string]map[string]Endpoints{}, map[string]Endpoints{}
		nodes, slices := v.all()
		if c := v.update(nodes, slices); len(c) != perfNodes {
			b.Fatal(len(c))
		}
	}
}

// BenchmarkViewOneNode is what one node's readiness change costs, including the copy
// of the set handed to the pool.
func BenchmarkViewOneNode(b *testing.B) {
	v, nodes := perfView(b)
	v.update(v.all())
	name := perfNodeName(42)
	obj, _, _ := nodes.GetByKey(name)
	ready := obj.(*corev1.Node)
	notReady := ready.DeepCopy()
	notReady.Status.Conditions[0].Status = corev1.ConditionFalse
	i := 0
	for b.Loop() {
		n := ready
		if i%2 == 0 {
			n = notReady
		}
		i++
		_ = nodes.Update(n)
		if c := v.update([]string{name}, nil); len(c) != 1 {
			b.Fatal(len(c))
		}
		_ = v.set.Clone()
	}
}
