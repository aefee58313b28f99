package api

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/kubal/kubal/pool"
)

// fakeState is an in-memory State for unit tests.
type fakeState struct {
	mu     sync.Mutex
	order  []string
	snaps  map[string]pool.Snapshot
	alerts []Alert
	ready  error
}

func newFakeState(snaps ...pool.Snapshot) *fakeState {
	f := &fakeState{snaps: map[string]pool.Snapshot{}}
	for _, s := range snaps {
		f.order = append(f.order, s.Name)
		f.snaps[s.Name] = s
	}
	return f
}

func (f *fakeState) Pools() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.order...)
}

func (f *fakeState) Snapshot(p string) (pool.Snapshot, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.snaps[p]
	return s, ok
}

func (f *fakeState) Alerts() []Alert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Alert(nil), f.alerts...)
}

func (f *fakeState) Ready() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready
}

func (f *fakeState) set(s pool.Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sort.Slice(s.Servers, func(i, j int) bool { return s.Servers[i].Host < s.Servers[j].Host })
	f.snaps[s.Name] = s
}

// srv builds a server state; status is "e/u/p" letters: e.g. "EUP" = enabled, up,
// pooled; lower case = not; "h" in the middle = partially up.
func srv(host, status string, weight int) pool.ServerState {
	s := pool.ServerState{Host: host, Weight: weight, Ready: true,
		Addr: netip.MustParseAddr("192.0.2.1")}
	s.Enabled = status[0] == 'E'
	s.Up = status[1] == 'U'
	s.Pooled = status[2] == 'P'
	switch status[1] {
	case 'U':
		s.Monitors = map[string]pool.MonitorResult{"ProxyFetch": {Up: true}, "IdleConnection": {Up: true}}
	case 'h':
		s.Monitors = map[string]pool.MonitorResult{"ProxyFetch": {Up: false, Reason: "503 Service Unavailable"}, "IdleConnection": {Up: true}}
		s.Why = "ProxyFetch: 503 Service Unavailable"
	default:
		s.Monitors = map[string]pool.MonitorResult{"ProxyFetch": {Up: false, Reason: "connection refused"}}
		s.Why = "ProxyFetch: connection refused"
	}
	if !s.Enabled {
		s.Why = "disabled by admin"
	}
	return s
}

// fakeAdmin is an Admin over a fakeState: it flips enabled/weight and enforces a
// threshold of "at least minPooled servers pooled" with a racy check-then-act, so
// that only the handler's serialisation keeps concurrent depools correct.
type fakeAdmin struct {
	st        *fakeState
	minPooled int
	mu        sync.Mutex
	calls     []Action
	err       error         // returned instead of applying, when set
	pause     time.Duration // between the threshold check and the write
}

func (a *fakeAdmin) Apply(ctx context.Context, act Action) (Outcome, error) {
	a.mu.Lock()
	a.calls = append(a.calls, act)
	err := a.err
	a.mu.Unlock()
	if err != nil {
		return Outcome{}, err
	}
	snap, ok := a.st.Snapshot(act.Pool)
	if !ok {
		return Outcome{}, fmt.Errorf("pool %s: %w", act.Pool, ErrNotFound)
	}
	snap.Servers = append([]pool.ServerState(nil), snap.Servers...)
	idx := -1
	pooled := 0
	for i, s := range snap.Servers {
		if s.Host == act.Host {
			idx = i
		}
		if s.Pooled {
			pooled++
		}
	}
	if idx < 0 {
		return Outcome{}, fmt.Errorf("host %s: %w", act.Host, ErrNotFound)
	}
	if a.pause > 0 {
		time.Sleep(a.pause)
	}
	old := snap.Servers[idx]
	nw := old
	switch act.Op {
	case OpDepool:
		if old.Pooled && pooled-1 < a.minPooled && !act.Force {
			return Outcome{}, fmt.Errorf("depooling %s would leave %d of %d pooled: %w", act.Host, pooled-1, len(snap.Servers), ErrThreshold)
		}
		nw.Enabled, nw.Pooled, nw.Why = false, false, "depooled by "+act.Actor
	case OpPool:
		nw.Enabled, nw.Pooled, nw.Why = true, nw.Up, ""
	case OpWeight:
		nw.Weight = act.Weight
	}
	snap.Servers[idx] = nw
	a.st.set(snap)
	return Outcome{Old: old, New: nw}, nil
}

func (a *fakeAdmin) callCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.calls)
}
