package source

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock fires After channels when advanced; no test sleeps.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}

// pushSource is a Source the test drives by hand.
type pushSource struct{ ev chan Events }

func (p *pushSource) Run(ctx context.Context, ev Events) error {
	p.ev <- ev
	<-ctx.Done()
	return nil
}

func hosts(n int, prefix string) Set {
	s := Set{}
	for i := range n {
		h := fmt.Sprintf("%s%d", prefix, i)
		s[h] = Server{Host: h, Weight: 10, Enabled: true}
	}
	return s
}

// holdRecorder records updates, problems and holds.
type holdRecorder struct {
	*problemRecorder
	hmu   sync.Mutex
	holds []*Hold
}

func (r *holdRecorder) Held(h *Hold) {
	r.hmu.Lock()
	r.holds = append(r.holds, h)
	r.hmu.Unlock()
	r.ch <- struct{}{}
}

func (r *holdRecorder) nHolds() int {
	r.hmu.Lock()
	defer r.hmu.Unlock()
	return len(r.holds)
}

func startGuard(t *testing.T, opts GuardOptions, ev Events) (*Guard, Events) {
	t.Helper()
	ps := &pushSource{ev: make(chan Events, 1)}
	g := NewGuard(ps, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Run(ctx, ev); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return g, <-ps.ev
}

func TestGuard(t *testing.T) {
	ten := hosts(10, "mw")
	three := hosts(3, "mw")  // removes 7 of 10
	six := hosts(6, "mw")    // removes 4 of 10: within 50%
	five := hosts(5, "mw")   // removes 5 of 10: exactly 50%, within
	plus := hosts(12, "mw")  // adds
	other := hosts(3, "new") // removes all 10

	type step struct {
		update  Set
		advance time.Duration
		confirm bool
		want    int  // updates delivered after the step
		held    bool // a hold in force after the step
	}
	tests := []struct {
		name  string
		opts  GuardOptions
		steps []step
	}{
		{"first update passes even if empty", GuardOptions{}, []step{
			{update: Set{}, want: 1}, {update: ten, want: 2}}},
		{"small removal and additions pass", GuardOptions{}, []step{
			{update: ten, want: 1}, {update: six, want: 2}, {update: plus, want: 3}}},
		{"exactly the limit passes", GuardOptions{}, []step{
			{update: ten, want: 1}, {update: five, want: 2}}},
		{"big removal held, then applied when it persists", GuardOptions{}, []step{
			{update: ten, want: 1},
			{update: three, want: 1, held: true},
			{advance: DefaultRemovalHold - time.Second, want: 1, held: true},
			{advance: time.Second, want: 2}}},
		{"a newer big removal keeps the first deadline", GuardOptions{}, []step{
			{update: ten, want: 1},
			{update: three, want: 1, held: true},
			{advance: 4 * time.Minute, want: 1, held: true},
			{update: other, want: 1, held: true},
			{advance: time.Minute, want: 2}}},
		{"the list recovers: hold released, nothing removed", GuardOptions{}, []step{
			{update: ten, want: 1},
			{update: three, want: 1, held: true},
			{update: ten, want: 2},
			{advance: 10 * time.Minute, want: 2}}},
		{"confirm applies at once", GuardOptions{}, []step{
			{update: ten, want: 1},
			{update: other, want: 1, held: true},
			{confirm: true, want: 2}}},
		{"confirm without a hold does nothing", GuardOptions{}, []step{
			{update: ten, want: 1}, {confirm: true, want: 1}}},
		{"custom fraction and hold", GuardOptions{MaxRemoval: 0.2, Hold: time.Minute}, []step{
			{update: ten, want: 1},
			{update: six, want: 1, held: true},
			{advance: time.Minute, want: 2}}},
		{"fraction 1 turns it off", GuardOptions{MaxRemoval: 1}, []step{
			{update: ten, want: 1}, {update: Set{}, want: 2}}},
		{"initial set: a truncated first read after a reload is held", GuardOptions{Initial: ten}, []step{
			{update: three, want: 0, held: true},
			{update: ten, want: 1}}},
		{"initial set: a full first read passes", GuardOptions{Initial: ten}, []step{
			{update: ten, want: 1}, {update: six, want: 2}}},
		{"removing the only server is held", GuardOptions{}, []step{
			{update: hosts(1, "mw"), want: 1}, {update: Set{}, want: 1, held: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			tc.opts.Clock = clock
			r := &holdRecorder{problemRecorder: &problemRecorder{recorder: newRecorder()}}
			g, inner := startGuard(t, tc.opts, r)
			for i, st := range tc.steps {
				holdsBefore := r.nHolds()
				switch {
				case st.update != nil:
					inner.Update(st.update)
				case st.advance > 0:
					clock.Advance(st.advance)
				case st.confirm:
					if got := g.Confirm(); got != (i > 0 && tc.steps[i-1].held) {
						t.Fatalf("step %d: Confirm() = %v", i, got)
					}
				}
				// Wait for the guard to act: an update or a hold report, or (nothing
				// expected) a flush through Failed, which it forwards in order.
				inner.Failed(nil)
				r.waitFor(t, 2*time.Second, func() bool { return len(r.fails) == i+1 })
				r.mu.Lock()
				got := len(r.updates)
				r.mu.Unlock()
				if got != st.want {
					t.Fatalf("step %d: %d updates, want %d", i, got, st.want)
				}
				h, held := g.Held()
				if held != st.held {
					t.Fatalf("step %d: held = %v (%+v), want %v", i, held, h, st.held)
				}
				if st.held && r.nHolds() == holdsBefore && (i == 0 || !tc.steps[i-1].held) {
					t.Fatalf("step %d: a new hold was not reported", i)
				}
				if !st.held && i > 0 && tc.steps[i-1].held {
					r.hmu.Lock()
					last := r.holds[len(r.holds)-1]
					r.hmu.Unlock()
					if last != nil {
						t.Fatalf("step %d: the end of the hold was not reported", i)
					}
				}
			}
		})
	}
}

// Without a HoldReporter, the hold is a problem next to the inner source's own.
func TestGuardReportsHoldAsProblem(t *testing.T) {
	clock := newFakeClock()
	r := &problemRecorder{recorder: newRecorder()}
	_, inner := startGuard(t, GuardOptions{Clock: clock}, r)
	inner.Update(hosts(4, "mw"))
	inner.(ProblemReporter).Problems(map[string]string{"/x:3": "bad weight"})
	inner.Update(Set{})
	r.waitFor(t, 2*time.Second, func() bool {
		p := r.lastProblems()
		return p != nil && p[HoldProblemKey] != ""
	})
	p := r.lastProblems()
	if p["/x:3"] != "bad weight" || !strings.Contains(p[HoldProblemKey], "removes 4 of 4 servers (mw0, mw1, mw2, mw3)") {
		t.Errorf("problems %v", p)
	}
	clock.Advance(DefaultRemovalHold)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 2 })
	r.waitFor(t, 2*time.Second, func() bool { _, held := r.lastProblems()[HoldProblemKey]; return !held })
	if p := r.lastProblems(); p["/x:3"] != "bad weight" {
		t.Errorf("problems after the hold %v", p)
	}
}

// The guard over a real file source: a list truncated to a fraction of its servers
// is held; the full list written back releases it without a single removal.
func TestGuardOverFileSource(t *testing.T) {
	path := t.TempDir() + "/pool.txt"
	var full, cut strings.Builder
	for i := range 10 {
		line := fmt.Sprintf("{'host': 'mw%d', 'weight': 10, 'enabled': True}\n", i)
		full.WriteString(line)
		if i < 2 {
			cut.WriteString(line)
		}
	}
	writeAtomic(t, path, []byte(full.String()))
	clock := newFakeClock()
	r := &holdRecorder{problemRecorder: &problemRecorder{recorder: newRecorder()}}
	g := NewGuard(&File{Path: path, Log: quiet(), Interval: 5 * time.Millisecond}, GuardOptions{Clock: clock})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Run(ctx, r)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 1 })
	writeAtomic(t, path, []byte(cut.String()))
	r.waitFor(t, 2*time.Second, func() bool { return r.nHolds() == 1 })
	writeAtomic(t, path, []byte(full.String()+"{'host': 'mw10', 'weight': 10, 'enabled': True}\n"))
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 2 })
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.updates[1]) != 11 {
		t.Errorf("update %v", r.updates[1])
	}
	if _, held := g.Held(); held {
		t.Error("still held")
	}
}
