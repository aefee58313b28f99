package source

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Defaults of GuardOptions.
const (
	DefaultMaxRemoval  = 0.5
	DefaultRemovalHold = 5 * time.Minute
)

// Clock is the time a Guard reads; tests inject a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// GuardOptions configures a Guard.
type GuardOptions struct {
	// MaxRemoval is the fraction of the servers in force that one update may remove
	// at once; an update removing more is held. 0 means DefaultMaxRemoval; 1 (or
	// more) turns the guard off.
	MaxRemoval float64
	// Hold is how long a held update must persist before it is applied anyway.
	// 0 means DefaultRemovalHold.
	Hold  time.Duration
	Clock Clock // nil: the system clock
	Log   *slog.Logger
	// Initial is the server set in force when the guard starts, e.g. the service's
	// set before a reload restarted its source: the first update is then held like
	// any other if it removes too many of these. nil: the first update passes.
	Initial Set
}

// Hold describes an update a Guard is holding back.
type Hold struct {
	Removed []string  // the servers it would remove, sorted
	Total   int       // servers in force now
	Since   time.Time // when the first such update arrived
	ApplyAt time.Time // when it is applied if it persists
}

func (h Hold) String() string {
	names := h.Removed
	more := ""
	if len(names) > 5 {
		names, more = names[:5], fmt.Sprintf(" and %d more", len(h.Removed)-5)
	}
	return fmt.Sprintf("holding a server-list update that removes %d of %d servers (%s%s) since %s: applied at %s if it persists, or at once when confirmed",
		len(h.Removed), h.Total, strings.Join(names, ", "), more,
		h.Since.UTC().Format(time.RFC3339), h.ApplyAt.UTC().Format(time.RFC3339))
}

// HoldReporter is implemented by Events receivers that want to know about an update a
// Guard holds: Held(h) when an update is held (again, when a newer one replaces it),
// Held(nil) when nothing is held any more (applied, confirmed or superseded). A
// receiver that implements only ProblemReporter gets the hold as the problem
// HoldProblemKey instead, next to the inner source's own problems.
type HoldReporter interface {
	Held(h *Hold)
}

// HoldProblemKey is the ProblemReporter key of a held update.
const HoldProblemKey = "held update"

// Guard wraps a Source and holds back an update that removes more than MaxRemoval of
// the servers in force at once (a truncated list from a config-management run, a
// half-written file), in the spirit of Seesaw's per-update deletion limit. A held
// update is reported (HoldReporter, or ProblemReporter), and applied when it has
// persisted for Hold, or at once on Confirm. An update within the limit is applied at
// once and releases a pending hold. The first update after start is held only against
// GuardOptions.Initial (without it there is nothing to compare with). Disabling servers is not removing them: the depool
// threshold guards that.
type Guard struct {
	inner   Source
	initial Set
	max     float64
	hold    time.Duration
	clock   Clock
	log     *slog.Logger

	mu        sync.Mutex
	held      *Hold
	holdGen   int // incremented at every new hold
	confirmed int // the holdGen Confirm was called for
	wake      chan struct{}
}

// NewGuard wraps inner.
func NewGuard(inner Source, opts GuardOptions) *Guard {
	g := &Guard{inner: inner, initial: opts.Initial.Clone(), max: opts.MaxRemoval, hold: opts.Hold, clock: opts.Clock, log: opts.Log,
		wake: make(chan struct{}, 1)}
	if g.max <= 0 {
		g.max = DefaultMaxRemoval
	}
	if g.hold <= 0 {
		g.hold = DefaultRemovalHold
	}
	if g.clock == nil {
		g.clock = realClock{}
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	return g
}

// Held returns the update being held, if any.
func (g *Guard) Held() (Hold, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held == nil {
		return Hold{}, false
	}
	h := *g.held
	h.Removed = append([]string(nil), h.Removed...)
	return h, true
}

// Confirm applies the held update now (an admin said the removal is intended). It
// reports whether an update was held; it never blocks, the update is applied by the
// Guard's goroutine right after.
func (g *Guard) Confirm() bool {
	g.mu.Lock()
	held := g.held != nil
	if held {
		g.confirmed = g.holdGen
	}
	g.mu.Unlock()
	if held {
		g.signal()
	}
	return held
}

func (g *Guard) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// guardEvent is one call of the inner source, queued in order.
type guardEvent struct {
	kind     int // evUpdate, evFailed, evProblems
	set      Set
	err      error
	problems map[string]string
}

const (
	evUpdate = iota
	evFailed
	evProblems
)

// guardInbox receives the inner source's calls without ever blocking it.
type guardInbox struct {
	g  *Guard
	mu sync.Mutex
	q  []guardEvent
}

func (in *guardInbox) push(e guardEvent) {
	in.mu.Lock()
	in.q = append(in.q, e)
	in.mu.Unlock()
	in.g.signal()
}

func (in *guardInbox) Update(s Set)     { in.push(guardEvent{kind: evUpdate, set: s.Clone()}) }
func (in *guardInbox) Failed(err error) { in.push(guardEvent{kind: evFailed, err: err}) }
func (in *guardInbox) Problems(p map[string]string) {
	in.push(guardEvent{kind: evProblems, problems: maps.Clone(p)})
}

func (in *guardInbox) take() []guardEvent {
	in.mu.Lock()
	defer in.mu.Unlock()
	q := in.q
	in.q = nil
	return q
}

// guardRun is the state of one Run, owned by its goroutine.
type guardRun struct {
	g         *Guard
	ev        Events
	delivered bool
	last      Set // in force
	pending   Set // held
	timer     <-chan time.Time
	inner     map[string]string // the inner source's problems
	sent      map[string]string // the problems last reported
}

// Run implements Source: it runs the inner source and filters its updates. Every call
// to ev is made from Run's goroutine.
func (g *Guard) Run(ctx context.Context, ev Events) error {
	in := &guardInbox{g: g}
	done := make(chan error, 1)
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { done <- g.inner.Run(ictx, in) }()
	r := &guardRun{g: g, ev: ev}
	if g.initial != nil {
		r.last, r.delivered = g.initial, true
	}
	defer func() { // a stopped guard holds nothing; its receiver is gone, so no report
		g.mu.Lock()
		g.held = nil
		g.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			cancel()
			return <-done
		case err := <-done:
			return err
		case <-r.timer:
			r.apply("it persisted for " + g.hold.String())
		case <-g.wake:
		}
		// A due timer and a confirmation come first: they were there before any
		// event still queued.
		select {
		case <-r.timer:
			r.apply("it persisted for " + g.hold.String())
		default:
		}
		g.mu.Lock()
		confirmed := g.held != nil && g.confirmed == g.holdGen
		g.mu.Unlock()
		if confirmed {
			r.apply("an admin confirmed it")
		}
		for _, e := range in.take() {
			switch e.kind {
			case evUpdate:
				r.update(e.set)
			case evFailed:
				ev.Failed(e.err)
			case evProblems:
				r.inner = e.problems
				r.reportProblems()
			}
		}
	}
}

func (r *guardRun) update(set Set) {
	g := r.g
	var removed []string
	for h := range r.last {
		if _, ok := set[h]; !ok {
			removed = append(removed, h)
		}
	}
	if !r.delivered || len(removed) == 0 || float64(len(removed)) <= g.max*float64(len(r.last)) {
		// An update equal to Initial is still delivered: the receiver waits for a
		// first Update to call the source synced.
		if r.pending != nil {
			g.log.Info("server-list update within the removal limit; releasing the held one",
				"removed", len(removed), "servers", len(r.last))
			r.pending, r.timer = nil, nil
			r.setHeld(nil, false)
		}
		r.forward(set)
		return
	}
	sort.Strings(removed)
	h := Hold{Removed: removed, Total: len(r.last)}
	if r.pending == nil {
		h.Since = g.clock.Now()
		h.ApplyAt = h.Since.Add(g.hold)
		r.timer = g.clock.After(g.hold) // armed before the report: a test may advance at once
		g.log.Warn("holding a server-list update that removes too many servers at once",
			"removed", len(removed), "servers", len(r.last), "max_fraction", g.max,
			"hosts", strings.Join(first(removed, 10), ","), "apply_at", h.ApplyAt.UTC().Format(time.RFC3339))
		r.pending = set
		r.setHeld(&h, true)
		return
	}
	old, _ := g.Held()
	h.Since, h.ApplyAt = old.Since, old.ApplyAt
	r.pending = set
	if !slices.Equal(old.Removed, removed) {
		r.setHeld(&h, false)
	}
}

func (r *guardRun) apply(why string) {
	if r.pending == nil {
		return
	}
	r.g.log.Warn("applying the held server-list update", "because", why)
	set := r.pending
	r.pending, r.timer = nil, nil
	r.setHeld(nil, false)
	r.forward(set)
}

func (r *guardRun) forward(set Set) {
	r.last, r.delivered = set, true
	r.ev.Update(set.Clone())
}

// setHeld publishes the hold (nil: none) and reports it.
func (r *guardRun) setHeld(h *Hold, newHold bool) {
	g := r.g
	g.mu.Lock()
	was := g.held != nil
	g.held = h
	if newHold {
		g.holdGen++
	}
	g.mu.Unlock()
	if h == nil && !was {
		return
	}
	if hr, ok := r.ev.(HoldReporter); ok {
		if h != nil {
			c := *h
			hr.Held(&c)
		} else {
			hr.Held(nil)
		}
		return
	}
	r.reportProblems()
}

func (r *guardRun) reportProblems() {
	pr, ok := r.ev.(ProblemReporter)
	if !ok {
		return
	}
	p := maps.Clone(r.inner)
	if _, hr := r.ev.(HoldReporter); !hr {
		if h, held := r.g.Held(); held {
			if p == nil {
				p = map[string]string{}
			}
			p[HoldProblemKey] = h.String()
		}
	}
	if maps.Equal(p, r.sent) && r.sent != nil {
		return
	}
	if p == nil {
		p = map[string]string{}
	}
	r.sent = p
	pr.Problems(maps.Clone(p))
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
