package bgp

import (
	"context"
	"slices"
	"sync"
)

// Fake is an in-memory stand-in for Speaker (daemon tests, dry runs): it has the same
// Run/Set/Shutdown methods and records what it is given, without any BGP.
type Fake struct {
	mu       sync.Mutex
	current  []Announcement
	sets     int
	shutdown bool
	changed  chan struct{} // closed and replaced on every Set
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{changed: make(chan struct{})} }

// Run waits for ctx.
func (f *Fake) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// Set records the desired set (ignored after Shutdown, as Speaker does).
func (f *Fake) Set(anns []Announcement) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shutdown {
		return
	}
	f.current = slices.Clone(anns)
	slices.SortFunc(f.current, func(a, b Announcement) int { return comparePrefix(a.Prefix, b.Prefix) })
	f.sets++
	close(f.changed)
	f.changed = make(chan struct{})
}

// Shutdown withdraws everything.
func (f *Fake) Shutdown(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdown = true
	f.current = nil
	return nil
}

// Advertised returns the last set, sorted by prefix (empty after Shutdown).
func (f *Fake) Advertised() []Announcement {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.current)
}

// Sets returns how many times Set was called, and a channel closed at the next Set.
func (f *Fake) Sets() (int, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sets, f.changed
}
