package service

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/kubal/kubal/config"
)

// Group runs a set of service actors by name: the daemon's running services. Its
// methods are safe for concurrent use; none holds the lock while an actor works.
type Group struct {
	log *slog.Logger

	mu      sync.RWMutex
	members map[string]*member

	dirtyMu sync.Mutex
	dirty   map[string]bool // services that published a State since TakeDirty
	changed chan struct{}
}

type member struct {
	svc    *Service
	key    string // what the actor was built from (virtual service, source, store)
	cancel context.CancelFunc
	done   chan struct{}
}

// NewGroup returns an empty group.
func NewGroup(log *slog.Logger) *Group {
	return &Group{log: log, members: map[string]*member{}, dirty: map[string]bool{}, changed: make(chan struct{}, 1)}
}

// MarkDirty records that the named service published a new State; it never blocks
// (a service's Deps.Changed calls it).
func (g *Group) MarkDirty(name string) {
	g.dirtyMu.Lock()
	g.dirty[name] = true
	g.dirtyMu.Unlock()
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

// Changed signals (coalesced) that TakeDirty has something.
func (g *Group) Changed() <-chan struct{} { return g.changed }

// TakeDirty returns and forgets the services marked dirty.
func (g *Group) TakeDirty() map[string]bool {
	g.dirtyMu.Lock()
	defer g.dirtyMu.Unlock()
	d := g.dirty
	g.dirty = map[string]bool{}
	return d
}

// Get returns the named service, nil when it is not running.
func (g *Group) Get(name string) *Service {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if m, ok := g.members[name]; ok {
		return m.svc
	}
	return nil
}

// Sync makes the group run cfgs. A service whose key (see key) is unchanged is
// reconfigured in place and in force when Sync returns; one whose key changed is
// replaced by a new actor from build (the kernel keeps its destinations until the new
// source has synced); one no longer configured is stopped. Actors never call back into
// their owner, so this cannot deadlock on them.
func (g *Group) Sync(ctx context.Context, cfgs []*config.Service, key func(*config.Service) string, build func(*config.Service) (*Service, error)) {
	want := make(map[string]*config.Service, len(cfgs))
	for _, svc := range cfgs {
		want[svc.Name] = svc
	}
	g.mu.Lock()
	var stop []*member
	for name, m := range g.members {
		if svc, ok := want[name]; ok && key(svc) == m.key {
			continue
		}
		g.log.Info("stopping service", "system", name)
		stop = append(stop, m)
		delete(g.members, name)
	}
	g.mu.Unlock()
	for _, m := range stop {
		m.cancel()
		<-m.done
	}
	for _, svc := range cfgs {
		if s := g.Get(svc.Name); s != nil {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := s.Reconfigure(rctx, svc); err != nil {
				g.log.Error("reconfigure", "system", svc.Name, "err", err)
			}
			cancel()
			continue
		}
		s, err := build(svc)
		if err != nil {
			g.log.Error("cannot start service", "system", svc.Name, "config", svc.ConfigURL, "err", err)
			continue
		}
		mctx, cancel := context.WithCancel(ctx)
		m := &member{svc: s, key: key(svc), cancel: cancel, done: make(chan struct{})}
		g.mu.Lock()
		g.members[svc.Name] = m
		g.mu.Unlock()
		go func() {
			defer close(m.done)
			s.Run(mctx)
		}()
	}
}

// Stop stops every service and waits for them.
func (g *Group) Stop() {
	g.mu.Lock()
	all := g.members
	g.members = map[string]*member{}
	g.mu.Unlock()
	for _, m := range all {
		m.cancel()
	}
	for _, m := range all {
		<-m.done
	}
}
