package k8ssource

import (
	"context"
	"sync"

	"github.com/kubal/kubal/source"
)

// hub hands the controller's node sets to the Sources of the declared services. The
// controller never blocks on a consumer: each subscriber keeps only the latest set
// (and the latest failure), and its own goroutine (the Source's Run) delivers it.
type hub struct {
	mu     sync.Mutex
	sets   map[string]source.Set // groupKey -> latest set (immutable once published)
	subs   map[string]map[*sub]struct{}
	failed error
}

func newHub() *hub {
	return &hub{sets: map[string]source.Set{}, subs: map[string]map[*sub]struct{}{}}
}

type sub struct {
	mu      sync.Mutex
	set     source.Set // undelivered latest set, nil: none
	failed  error
	failNew bool // failed changed and is undelivered
	signal  chan struct{}
}

func (s *sub) poke() {
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// publish replaces a group's set and notifies its subscribers.
func (h *hub) publish(key string, set source.Set) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sets[key] = set
	for s := range h.subs[key] {
		s.mu.Lock()
		s.set = set
		s.mu.Unlock()
		s.poke()
	}
}

// remove forgets a group (its Service is gone); running Sources keep their last set
// until the daemon stops them.
func (h *hub) remove(key string) {
	h.mu.Lock()
	delete(h.sets, key)
	h.mu.Unlock()
}

// fail reports an API outage (nil: recovered) to every subscriber.
func (h *hub) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failed = err
	for _, subs := range h.subs {
		for s := range subs {
			s.mu.Lock()
			s.failed, s.failNew = err, true
			s.mu.Unlock()
			s.poke()
		}
	}
}

func (h *hub) subscribe(key string) *sub {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &sub{signal: make(chan struct{}, 1), set: h.sets[key], failed: h.failed, failNew: h.failed != nil}
	if h.subs[key] == nil {
		h.subs[key] = map[*sub]struct{}{}
	}
	h.subs[key][s] = struct{}{}
	s.poke()
	return s
}

func (h *hub) unsubscribe(key string, s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[key], s)
	if len(h.subs[key]) == 0 {
		delete(h.subs, key)
	}
}

// groupSource is the source.Source of one declared service: the node set of its
// Service and family, from the controller's shared informers (no watch of its own).
type groupSource struct {
	hub  *hub
	key  string
	name string
}

// Run delivers the group's set until ctx is done: the current one at once (when
// the controller has computed it), then every change; API outages as Failed.
func (g *groupSource) Run(ctx context.Context, ev source.Events) error {
	s := g.hub.subscribe(g.key)
	defer g.hub.unsubscribe(g.key, s)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.signal:
		}
		s.mu.Lock()
		set, failed, failNew := s.set, s.failed, s.failNew
		s.set, s.failNew = nil, false
		s.mu.Unlock()
		if set != nil {
			ev.Update(set.Clone())
		}
		if failNew {
			ev.Failed(failed)
		}
	}
}

// String names the source in logs.
func (g *groupSource) String() string { return "k8s-services:" + g.key }
