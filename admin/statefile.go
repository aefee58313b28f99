package admin

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kubal/kubal/adminstate"
)

// StateFile keeps the admin intent of services without conftool in the local fsync'd
// state file. One StateFile serves every such service (Pool returns its Store).
// Revisions are local: they count the changes since the file was opened.
type StateFile struct {
	file *adminstate.File

	mu   sync.Mutex // serialises check + write, and orders deliveries
	rev  int64
	subs map[string]map[*func(Intent)]struct{}
}

// NewStateFile wraps an open state file.
func NewStateFile(f *adminstate.File) *StateFile {
	return &StateFile{file: f, rev: 1, subs: map[string]map[*func(Intent)]struct{}{}}
}

// Pool returns the store of one pool.
func (s *StateFile) Pool(name string) Store { return statePool{s, name} }

type statePool struct {
	s    *StateFile
	pool string
}

func (p statePool) String() string { return "state file " + p.s.file.Path() }

// intent is the pool's current intent. s.mu is held.
func (s *StateFile) intent(pool string) Intent {
	in := Intent{Revision: s.rev, Loaded: true, Overrides: map[string]Override{}}
	for host, o := range s.file.Overrides(pool) {
		in.Overrides[host] = Override{
			Depooled: o.Enabled != nil && !*o.Enabled,
			Weight:   o.Weight,
			Reason:   o.Reason,
			Actor:    o.Actor,
			Time:     o.Time,
		}
	}
	return in
}

// Watch implements Store.
func (p statePool) Watch(ctx context.Context, out func(Intent)) {
	s := p.s
	f := &out
	s.mu.Lock()
	if s.subs[p.pool] == nil {
		s.subs[p.pool] = map[*func(Intent)]struct{}{}
	}
	s.subs[p.pool][f] = struct{}{}
	out(s.intent(p.pool))
	s.mu.Unlock()
	<-ctx.Done()
	s.mu.Lock()
	delete(s.subs[p.pool], f)
	s.mu.Unlock()
}

// Apply implements Store: check, fsync, then deliver the new intent to the watchers
// before returning, all under one lock.
func (p statePool) Apply(_ context.Context, ch Change, check Check) (Receipt, error) {
	if err := ch.Validate(); err != nil {
		return Receipt{}, err
	}
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.file.Overrides(p.pool)[ch.Host]
	next := cur
	switch ch.Op {
	case OpDepool:
		f := false
		next.Enabled = &f
	case OpPool:
		next.Enabled = nil // the source's word counts again
	case OpWeight:
		w := ch.Weight
		next.Weight = &w
	case OpClear:
		next = adminstate.Override{}
	}
	if same(cur, next) {
		return Receipt{Where: p.String()}, nil
	}
	if check != nil {
		before := s.intent(p.pool)
		if err := check(before, before.With(ch)); err != nil {
			return Receipt{}, err
		}
	}
	next.Reason, next.Actor, next.Time = ch.Reason, ch.Actor, time.Time{}
	if _, err := s.file.Set(p.pool, ch.Host, next, adminstate.Audit{Actor: ch.Actor, Action: string(ch.Op), Reason: ch.Reason, Force: ch.Force}); err != nil {
		return Receipt{}, fmt.Errorf("state file: %w", err)
	}
	s.rev++
	in := s.intent(p.pool)
	for f := range s.subs[p.pool] {
		(*f)(in)
	}
	return Receipt{Revision: s.rev, Where: p.String()}, nil
}

func same(a, b adminstate.Override) bool {
	eq := func(x, y *int) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	eb := func(x, y *bool) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return eb(a.Enabled, b.Enabled) && eq(a.Weight, b.Weight)
}
