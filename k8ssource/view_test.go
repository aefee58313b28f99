package k8ssource

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// TestViewIncrementalMatchesFull applies random Node and EndpointSlice changes and
// checks after each that the incrementally updated set equals a full recomputation
// from the same caches: the incremental bookkeeping (per-slice contributions, deletes,
// nodes moving between slices) never drifts.
func TestViewIncrementalMatchesFull(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	nodes := cache.NewStore(cache.MetaNamespaceKeyFunc)
	eps := cache.NewStore(cache.MetaNamespaceKeyFunc)
	p := Policy{Gated: true, ServiceName: "ns/gw", Taints: []string{"drain"}}
	v := newView(p, slog.New(slog.DiscardHandler), nodes, eps)
	conds := []discoveryv1.EndpointConditions{epReady, epNotReady, epServingNotReady, epTermServing, epTermNotServing, epNilConds}
	nodeName := func() string { return fmt.Sprintf("n%d", rng.IntN(12)) }

	for step := range 2000 {
		var nodeKeys, sliceKeys []string
		switch rng.IntN(5) {
		case 0, 1: // add or change a node
			n := node(nodeName())
			if rng.IntN(3) == 0 {
				n.Status.Conditions[0].Status = corev1.ConditionFalse
			}
			if rng.IntN(4) == 0 {
				n.Spec.Taints = []corev1.Taint{{Key: "drain", Effect: corev1.TaintEffectNoSchedule}}
			}
			_ = nodes.Update(n) // Update adds when absent
			nodeKeys = []string{n.Name}
		case 2: // delete a node
			name := nodeName()
			_ = nodes.Delete(node(name))
			nodeKeys = []string{name}
		case 3: // replace a slice's endpoints (pods move between nodes)
			name := fmt.Sprintf("gw-%d", rng.IntN(4))
			var list []discoveryv1.Endpoint
			for range rng.IntN(5) {
				list = append(list, endpoint("10.0.0.1", nodeName(), conds[rng.IntN(len(conds))]))
			}
			s := epSlice(name, "ns", "gw", list...)
			_ = eps.Update(s)
			sliceKeys = []string{"ns/" + name}
		case 4: // delete a slice
			name := fmt.Sprintf("gw-%d", rng.IntN(4))
			_ = eps.Delete(epSlice(name, "ns", "gw"))
			sliceKeys = []string{"ns/" + name}
		}
		v.update(nodeKeys, sliceKeys)

		full := newView(p, slog.New(slog.DiscardHandler), nodes, eps)
		full.update(full.all())
		if !maps.Equal(v.set, full.set) {
			t.Fatalf("step %d: incremental\n%s\nfull\n%s", step, dump(v.set), dump(full.set))
		}
		for n, e := range v.byNode {
			if e == (Endpoints{}) || e != full.byNode[n] {
				t.Fatalf("step %d: node %s endpoints %+v, full pass %+v", step, n, e, full.byNode[n])
			}
		}
	}
}
