package k8ssource

import (
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubal/kubal/source"
)

// keyStore is the part of an informer cache the view reads.
type keyStore interface {
	GetByKey(key string) (item any, exists bool, err error)
	ListKeys() []string
}

// dirty collects the keys informer handlers saw change, from their goroutines, until
// the source's loop takes them.
type dirty struct {
	mu     sync.Mutex
	nodes  map[string]struct{}
	slices map[string]struct{}
	since  time.Time     // when the oldest untaken change arrived
	poke   chan struct{} // cap 1
}

func newDirty() *dirty {
	return &dirty{nodes: map[string]struct{}{}, slices: map[string]struct{}{}, poke: make(chan struct{}, 1)}
}

func (d *dirty) add(res, key string) {
	d.mu.Lock()
	if d.since.IsZero() {
		d.since = time.Now()
	}
	if res == resNodes {
		d.nodes[key] = struct{}{}
	} else {
		d.slices[key] = struct{}{}
	}
	d.mu.Unlock()
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

func (d *dirty) take() (nodes, slices []string, since time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	since, d.since = d.since, time.Time{}
	for k := range d.nodes {
		nodes = append(nodes, k)
	}
	for k := range d.slices {
		slices = append(slices, k)
	}
	clear(d.nodes)
	clear(d.slices)
	return nodes, slices, since
}

// view is the loop-owned server set, updated incrementally: only the Nodes and
// EndpointSlices that changed are re-read, so one node's readiness change costs
// O(1) work (plus handing a copy of the set to the pool), not a pass over 5,000 Nodes.
type view struct {
	policy Policy
	log    *slog.Logger
	nodes  keyStore
	slices keyStore // nil: not gated

	set     source.Set
	contrib map[string]map[string]Endpoints // EndpointSlice key -> node -> its endpoints there
	byNode  map[string]Endpoints            // sum of contrib per node
	warned  map[string]string               // nodes with a non-fatal finding already logged
}

func newView(p Policy, log *slog.Logger, nodes, slices keyStore) *view {
	return &view{
		policy: p, log: log, nodes: nodes, slices: slices,
		set: source.Set{}, contrib: map[string]map[string]Endpoints{},
		byNode: map[string]Endpoints{}, warned: map[string]string{},
	}
}

// change is one server's transition in an update (ok: present).
type change struct {
	host            string
	old, cur        source.Server
	hadOld, hasCurr bool
}

// all returns every key the view knows or the caches hold: a full resync.
func (v *view) all() (nodes, slices []string) {
	nodes = v.nodes.ListKeys()
	for h := range v.set {
		nodes = append(nodes, h)
	}
	if v.slices != nil {
		slices = v.slices.ListKeys()
	}
	for k := range v.contrib {
		slices = append(slices, k)
	}
	return nodes, slices
}

// update re-reads the given keys from the caches and returns what changed.
func (v *view) update(nodeKeys, sliceKeys []string) []change {
	touched := make(map[string]struct{}, len(nodeKeys))
	for _, k := range nodeKeys {
		touched[k] = struct{}{}
	}
	for _, k := range sliceKeys {
		for n, e := range v.contrib[k] {
			v.byNode[n] = v.byNode[n].minus(e)
			touched[n] = struct{}{}
		}
		delete(v.contrib, k)
		if v.slices == nil {
			continue
		}
		obj, ok, _ := v.slices.GetByKey(k)
		es, isSlice := obj.(*discoveryv1.EndpointSlice)
		if !ok || !isSlice {
			continue
		}
		c := EndpointsByNode([]*discoveryv1.EndpointSlice{es})
		v.contrib[k] = c
		for n, e := range c {
			v.byNode[n] = v.byNode[n].plus(e)
			touched[n] = struct{}{}
		}
	}
	var changes []change
	for name := range touched {
		if v.byNode[name] == (Endpoints{}) {
			delete(v.byNode, name)
		}
		old, had := v.set[name]
		obj, ok, _ := v.nodes.GetByKey(name)
		n, isNode := obj.(*corev1.Node)
		if !ok || !isNode {
			if had {
				delete(v.set, name)
				changes = append(changes, change{host: name, old: old, hadOld: true})
			}
			delete(v.warned, name)
			continue
		}
		srv, warn := NodeServer(n, v.byNode[name], v.policy)
		v.warn(name, warn)
		if !had || srv != old {
			v.set[name] = srv
			changes = append(changes, change{host: name, old: old, cur: srv, hadOld: had, hasCurr: true})
		}
	}
	slices.SortFunc(changes, func(a, b change) int {
		switch {
		case a.host < b.host:
			return -1
		case a.host > b.host:
			return 1
		}
		return 0
	})
	return changes
}

// warn logs a node's non-fatal finding once (and again only when it changes).
func (v *view) warn(name string, warn error) {
	prev, had := v.warned[name]
	switch {
	case warn != nil && (!had || prev != warn.Error()):
		v.log.Warn(warn.Error())
		v.warned[name] = warn.Error()
	case warn == nil && had:
		delete(v.warned, name)
	}
}

func (e Endpoints) plus(o Endpoints) Endpoints {
	return Endpoints{
		Ready: e.Ready + o.Ready, Serving: e.Serving + o.Serving, Terminating: e.Terminating + o.Terminating,
		TerminatingServing: e.TerminatingServing + o.TerminatingServing, NotReady: e.NotReady + o.NotReady,
	}
}

func (e Endpoints) minus(o Endpoints) Endpoints {
	return Endpoints{
		Ready: e.Ready - o.Ready, Serving: e.Serving - o.Serving, Terminating: e.Terminating - o.Terminating,
		TerminatingServing: e.TerminatingServing - o.TerminatingServing, NotReady: e.NotReady - o.NotReady,
	}
}
