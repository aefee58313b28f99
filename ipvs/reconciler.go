package ipvs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reconciler converges a Backend to the desired pools. Set hands it the full desired
// state (non-blocking, bursts coalesced); Run applies it: at most one pass per
// MinInterval (the first one at once), a full dump of the backend every ResyncPeriod to
// repair drift, exponential backoff after errors. Between full dumps it keeps the last
// known kernel state and applies only the difference, so a single weight change costs a
// single netlink operation.
//
// Ownership: only services whose key is desired are touched. A service that leaves the
// desired set is deleted only if this Reconciler created or adopted it. At start the
// services of the config found in the kernel are adopted as they are (no flush).
type Reconciler struct {
	// Tunables; change them before Run.
	MinInterval  time.Duration    // at most one pass per MinInterval (default 100ms)
	ResyncPeriod time.Duration    // full dump and drift repair (default 5s)
	DrainPoll    time.Duration    // how often draining destinations are polled (default 1s)
	MaxBackoff   time.Duration    // cap of the retry delay after errors (default 30s)
	Now          func() time.Time // clock of the drain timeouts (default time.Now)

	b   Backend
	log *slog.Logger
	m   *metrics

	mu       sync.Mutex
	desired  []Pool
	dirty    map[ServiceKey]bool // pools changed by Set since the last pass
	allDirty bool                // the set of services changed: look at everything
	kick     chan struct{}

	// Owned by the Run goroutine.
	known    map[ServiceKey]*kernelService // last known backend state; nil = dump first
	covered  map[ServiceKey]bool           // keys whose state the last dump looked at
	owned    map[ServiceKey]bool           // created or adopted by this process
	draining map[ServiceKey]map[destKey]time.Time
	applied  map[ServiceKey]Pool // converged since the last dump: skipped while unchanged
	index    map[ServiceKey]int  // position of each key in the pools of the last full look
	queue    []queued            // destination changes waiting for a batching backend
}

type destKey struct {
	Addr netip.Addr
	Port uint16
}

type kernelService struct {
	svc   Service
	dests map[destKey]Destination
}

// NewReconciler returns a Reconciler for b. reg may be nil (no metrics).
func NewReconciler(b Backend, log *slog.Logger, reg prometheus.Registerer) *Reconciler {
	return &Reconciler{
		MinInterval:  100 * time.Millisecond,
		ResyncPeriod: 5 * time.Second,
		DrainPoll:    time.Second,
		MaxBackoff:   30 * time.Second,
		Now:          time.Now,
		b:            b,
		log:          log,
		m:            newMetrics(reg),
		kick:         make(chan struct{}, 1),
		owned:        map[ServiceKey]bool{},
		draining:     map[ServiceKey]map[destKey]time.Time{},
		applied:      map[ServiceKey]Pool{},
		dirty:        map[ServiceKey]bool{},
		allDirty:     true,
	}
}

// Set replaces the desired state: every configured service with the destinations it
// should have. It never blocks; Run picks up the latest state. The pools slice is
// copied, but the Destinations and Flags slices are kept as they are: replace them for
// the next Set, never modify them in place. (A pool whose slices are unchanged since
// the last pass costs nothing: 1,000 services x 100 destinations are not re-diffed
// for one weight change.)
func (r *Reconciler) Set(pools []Pool) {
	cp := slices.Clone(pools)
	r.mu.Lock()
	prev := r.desired
	r.desired = cp
	// Remember which pools changed (a pointer comparison for untouched ones), so
	// that a pass for one weight change looks at one pool.
	if !r.allDirty {
		if len(prev) != len(cp) {
			r.allDirty = true
		} else {
			for i := range cp {
				if cp[i].Service.ServiceKey != prev[i].Service.ServiceKey {
					r.allDirty = true
					break
				}
				if !samePool(prev[i], cp[i]) {
					r.dirty[cp[i].Service.ServiceKey] = true
				}
			}
		}
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx is done. Backend errors are logged, counted and retried
// with backoff; they never end Run. A full dump happens at start and every
// ResyncPeriod (drift repair); other passes apply only what changed.
func (r *Reconciler) Run(ctx context.Context) error {
	var nextResync time.Time
	runLoop(ctx, r.log, "ipvs reconcile", r.kick, r.MinInterval, r.MaxBackoff, func(ctx context.Context) (time.Time, error) {
		full := !time.Now().Before(nextResync)
		err := r.pass(ctx, full)
		done := time.Now()
		if err == nil && full {
			nextResync = done.Add(r.ResyncPeriod)
		}
		want := nextResync
		if len(r.draining) > 0 {
			if d := done.Add(r.DrainPoll); d.Before(want) {
				want = d
			}
		}
		return want, err
	})
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// backoff is the delay before retry n (1-based): base, 2*base, 4*base ... capped.
func backoff(n int, base, limit time.Duration) time.Duration {
	base = max(base, 10*time.Millisecond)
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// take returns the desired pools and what changed since the last take.
func (r *Reconciler) take() (pools []Pool, dirty map[ServiceKey]bool, all bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pools, dirty, all = r.desired, r.dirty, r.allDirty
	r.dirty, r.allDirty = map[ServiceKey]bool{}, false
	return pools, dirty, all
}

// Reconcile runs one pass synchronously (full: dump the backend first). For tests,
// benchmarks and tools; never call it while Run is running.
func (r *Reconciler) Reconcile(ctx context.Context, full bool) error { return r.pass(ctx, full) }

// pass runs one reconciliation. full forces a dump of the backend; without it the last
// known state is used (and a dump happens only when that state is unknown or a desired
// service was never looked at).
func (r *Reconciler) pass(ctx context.Context, full bool) (err error) {
	start := time.Now()
	defer func() {
		r.m.duration.Observe(time.Since(start).Seconds())
		if err != nil {
			r.known = nil // converge from a fresh dump next time
		}
	}()
	pools, dirty, all := r.take()
	if !full && !all && r.known != nil && r.index != nil {
		return r.passChanged(ctx, pools, dirty)
	}
	r.index = make(map[ServiceKey]int, len(pools))
	for i, p := range pools {
		r.index[p.Service.ServiceKey] = i
	}
	desired := make(map[ServiceKey]Pool, len(pools))
	keys := make([]ServiceKey, 0, len(pools))
	for _, p := range pools {
		k := p.Service.ServiceKey
		if _, dup := desired[k]; dup {
			r.log.Error("ipvs: service configured twice; using the last one", "service", k.String())
		} else {
			keys = append(keys, k)
		}
		desired[k] = p
	}
	if !full && r.known != nil {
		for _, k := range keys {
			if !r.covered[k] {
				full = true
				break
			}
		}
	}
	if full || r.known == nil {
		if err := r.dump(ctx, desired); err != nil {
			return err
		}
	} else if err := r.pollDraining(ctx); err != nil {
		return err
	}

	var errs errList
	for _, k := range keys {
		if ctx.Err() != nil {
			return ctx.Err() // shutting down: the next process converges
		}
		p := desired[k]
		if prev, ok := r.applied[k]; ok && len(r.draining[k]) == 0 && samePool(prev, p) {
			continue
		}
		if err := r.syncPool(ctx, p); err != nil {
			delete(r.applied, k)
			errs.add(err)
			continue
		}
		r.applied[k] = p
	}
	// Services kubal created or adopted that left the config.
	gone := map[ServiceKey]bool{}
	for k := range r.owned {
		if _, ok := desired[k]; !ok {
			gone[k] = true
		}
	}
	for _, k := range sortedKeys(gone) {
		if _, ok := r.known[k]; ok {
			if err := r.apply(ctx, change{kind: OpDeleteService, k: k}); err != nil {
				errs.add(err)
				continue
			}
			r.log.Info("ipvs: removed service no longer configured", "service", k.String())
		}
		delete(r.owned, k)
		delete(r.applied, k)
		delete(r.known, k)
		delete(r.covered, k)
		delete(r.draining, k)
	}
	r.m.draining.Set(float64(r.drainingCount()))
	return errs.err()
}

// passChanged is the incremental pass: the set of services is the same as in the last
// full look, so only the pools Set changed and the draining ones need work.
func (r *Reconciler) passChanged(ctx context.Context, pools []Pool, dirty map[ServiceKey]bool) error {
	if err := r.pollDraining(ctx); err != nil {
		return err
	}
	for k := range r.draining {
		dirty[k] = true
	}
	idx := make([]int, 0, len(dirty))
	for k := range dirty {
		if i, ok := r.index[k]; ok {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx) // config order, as a full pass
	var errs errList
	for _, i := range idx {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p := pools[i]
		k := p.Service.ServiceKey
		if prev, ok := r.applied[k]; ok && len(r.draining[k]) == 0 && samePool(prev, p) {
			continue
		}
		if err := r.syncPool(ctx, p); err != nil {
			delete(r.applied, k)
			errs.add(err)
			continue
		}
		r.applied[k] = p
	}
	r.m.draining.Set(float64(r.drainingCount()))
	return errs.err()
}

// dump reads the services and, for the ones kubal cares about, their destinations. If
// a previous state was known, every difference is drift (a change made outside kubal):
// it is logged and counted, and the following sync repairs it.
func (r *Reconciler) dump(ctx context.Context, desired map[ServiceKey]Pool) error {
	svcs, err := r.b.Services(ctx)
	if err != nil {
		r.m.errors.WithLabelValues(OpDumpServices).Inc()
		return fmt.Errorf("dump services: %w", err)
	}
	kernel := make(map[ServiceKey]*kernelService)
	covered := make(map[ServiceKey]bool)
	for k := range desired {
		covered[k] = true
	}
	for k := range r.owned {
		covered[k] = true
	}
	for _, s := range svcs {
		k := s.ServiceKey
		if !covered[k] {
			continue // not ours: never read, never touched
		}
		ds, err := r.b.Destinations(ctx, k)
		if err != nil {
			r.m.errors.WithLabelValues(OpDumpDestinations).Inc()
			return fmt.Errorf("dump destinations of %s: %w", k, err)
		}
		ks := &kernelService{svc: normalizeService(s), dests: make(map[destKey]Destination, len(ds))}
		for _, d := range ds {
			d = normalizeDestKeepConns(k, d)
			ks.dests[keyOf(k, d)] = d
		}
		kernel[k] = ks
	}
	if r.known != nil {
		r.reportDrift(kernel, covered)
	}
	for k := range desired {
		if _, ok := kernel[k]; ok && !r.owned[k] {
			r.owned[k] = true
			r.log.Info("ipvs: adopted existing service", "service", k.String(), "destinations", len(kernel[k].dests))
		}
	}
	r.known, r.covered = kernel, covered
	clear(r.applied) // the dump may differ from what was applied: re-diff everything
	return nil
}

func (r *Reconciler) reportDrift(kernel map[ServiceKey]*kernelService, covered map[ServiceKey]bool) {
	drift := func(k ServiceKey, what string, args ...any) {
		r.m.drift.Inc()
		r.log.Warn("ipvs drift: "+what+"; repairing", append([]any{"service", k.String()}, args...)...)
	}
	for _, k := range sortedKeys(covered) {
		was, wasOK := r.known[k]
		is, isOK := kernel[k]
		switch {
		case !r.covered[k]:
			continue // not looked at before: nothing to compare with
		case wasOK && !isOK:
			drift(k, "service removed outside kubal")
			continue
		case !wasOK && isOK:
			drift(k, "service added outside kubal")
			continue
		case !wasOK && !isOK:
			continue
		}
		if !sameService(was.svc, is.svc) {
			drift(k, "service settings changed outside kubal", "was", AddServiceCommand(was.svc), "now", AddServiceCommand(is.svc))
		}
		for _, dk := range sortedDestKeys(was.dests) {
			w := was.dests[dk]
			n, ok := is.dests[dk]
			switch {
			case !ok:
				drift(k, "destination removed outside kubal", "destination", netip.AddrPortFrom(dk.Addr, dk.Port).String())
			case n.Weight != w.Weight || n.Forwarding != w.Forwarding:
				drift(k, "destination changed outside kubal", "destination", netip.AddrPortFrom(dk.Addr, dk.Port).String(),
					"was", UpdateDestinationCommand(k, w), "now", UpdateDestinationCommand(k, n))
			}
		}
		for _, dk := range sortedDestKeys(is.dests) {
			if _, ok := was.dests[dk]; !ok {
				drift(k, "destination added outside kubal", "destination", netip.AddrPortFrom(dk.Addr, dk.Port).String())
			}
		}
	}
}

// pollDraining refreshes the connection counters of services with draining destinations.
func (r *Reconciler) pollDraining(ctx context.Context) error {
	for _, k := range sortedKeys(r.draining) {
		ks, ok := r.known[k]
		if !ok {
			continue
		}
		ds, err := r.b.Destinations(ctx, k)
		if err != nil {
			r.m.errors.WithLabelValues(OpDumpDestinations).Inc()
			return fmt.Errorf("poll draining destinations of %s: %w", k, err)
		}
		seen := make(map[destKey]bool, len(ds))
		for _, d := range ds {
			d = normalizeDestKeepConns(k, d)
			dk := keyOf(k, d)
			seen[dk] = true
			if cur, ok := ks.dests[dk]; ok {
				cur.ActiveConns, cur.InactiveConns = d.ActiveConns, d.InactiveConns
				ks.dests[dk] = cur
			}
		}
		for dk := range r.draining[k] {
			if !seen[dk] {
				delete(ks.dests, dk) // gone already (by hand): nothing left to drain
				delete(r.draining[k], dk)
			}
		}
	}
	return nil
}

// syncPool converges one desired service against the known state.
func (r *Reconciler) syncPool(ctx context.Context, p Pool) error {
	want := normalizeService(p.Service)
	k := want.ServiceKey
	cur, ok := r.known[k]
	if !ok {
		if err := r.apply(ctx, change{kind: OpAddService, k: k, svc: want}); err != nil {
			return err
		}
		cur = &kernelService{svc: want, dests: map[destKey]Destination{}}
		r.known[k] = cur
		r.covered[k] = true
	} else if !sameService(cur.svc, want) {
		if err := r.apply(ctx, change{kind: OpUpdateService, k: k, svc: want}); err != nil {
			return err
		}
		cur.svc = want
	}
	r.owned[k] = true

	var errs errList
	wantDests := make(map[destKey]bool, len(p.Destinations))
	for _, d := range p.Destinations {
		d = normalizeDest(k, d)
		dk := keyOf(k, d)
		if wantDests[dk] {
			continue // listed twice: the first one wins
		}
		wantDests[dk] = true
		if dr := r.draining[k]; dr != nil {
			delete(dr, dk) // desired again: no longer draining
		}
		have, ok := cur.dests[dk]
		switch {
		case !ok:
			errs.add(r.enqueue(ctx, change{kind: OpAddDestination, k: k, d: d}, func() { cur.dests[dk] = d }))
		case have.Weight != d.Weight || have.Forwarding != d.Forwarding:
			d.ActiveConns, d.InactiveConns = have.ActiveConns, have.InactiveConns
			errs.add(r.enqueue(ctx, change{kind: OpUpdateDestination, k: k, d: d}, func() { cur.dests[dk] = d }))
		}
	}
	for _, dk := range sortedDestKeys(cur.dests) {
		if wantDests[dk] {
			continue
		}
		have := cur.dests[dk]
		if p.KeepExtra {
			continue // hitless restart: keep until the monitors have spoken
		}
		if p.Drain && k.Protocol == TCP {
			done, err := r.drain(ctx, p, cur, dk, have)
			if err != nil {
				errs.add(err)
			}
			if !done {
				continue
			}
		}
		errs.add(r.enqueue(ctx, change{kind: OpDeleteDestination, k: k, d: have}, func() {
			delete(cur.dests, dk)
			if dr := r.draining[k]; dr != nil {
				delete(dr, dk)
			}
		}))
	}
	errs.add(r.flush(ctx))
	if dr := r.draining[k]; dr != nil && len(dr) == 0 {
		delete(r.draining, k)
	}
	return errs.err()
}

// drain moves a removed destination to weight 0 and reports whether it may be deleted
// now: no active or inactive connections left, or DrainTimeout (if > 0) elapsed.
func (r *Reconciler) drain(ctx context.Context, p Pool, cur *kernelService, dk destKey, have Destination) (bool, error) {
	k := cur.svc.ServiceKey
	dr := r.draining[k]
	if dr == nil {
		dr = map[destKey]time.Time{}
		r.draining[k] = dr
	}
	now := r.Now()
	since, ok := dr[dk]
	if !ok {
		since = now
		dr[dk] = now
	}
	if have.Weight != 0 {
		zero := have
		zero.Weight = 0
		if err := r.enqueue(ctx, change{kind: OpUpdateDestination, k: k, d: zero}, func() { cur.dests[dk] = zero }); err != nil {
			return false, err
		}
		r.log.Info("ipvs: draining destination", "service", k.String(), "destination", netip.AddrPortFrom(dk.Addr, dk.Port).String(),
			"active", have.ActiveConns, "inactive", have.InactiveConns)
		return false, nil // counters are re-read on the next poll
	}
	if have.ActiveConns+have.InactiveConns == 0 {
		r.log.Info("ipvs: drained destination idle; removing", "service", k.String(), "destination", netip.AddrPortFrom(dk.Addr, dk.Port).String(),
			"drained_for", now.Sub(since).Round(time.Millisecond))
		return true, nil
	}
	if p.DrainTimeout > 0 && now.Sub(since) >= p.DrainTimeout {
		r.log.Info("ipvs: drain timeout; removing busy destination", "service", k.String(), "destination", netip.AddrPortFrom(dk.Addr, dk.Port).String(),
			"active", have.ActiveConns, "inactive", have.InactiveConns)
		return true, nil
	}
	return false, nil
}

// errList collects the errors of a pass, keeping the first few: when the backend is
// gone every operation fails, and one log line must stay readable.
type errList struct {
	first []error
	more  int
}

func (e *errList) add(err error) {
	if err == nil {
		return
	}
	var inner *errList
	if errors.As(err, &inner) {
		for _, x := range inner.first {
			e.add(x)
		}
		e.more += inner.more
		return
	}
	if len(e.first) < 5 {
		e.first = append(e.first, err)
	} else {
		e.more++
	}
}

func (e *errList) err() error {
	if len(e.first) == 0 {
		return nil
	}
	return e
}

func (e *errList) Error() string {
	s := errors.Join(e.first...).Error()
	if e.more > 0 {
		s += fmt.Sprintf("\n(and %d more errors)", e.more)
	}
	return s
}

func (e *errList) Unwrap() []error { return e.first }

// change is one backend operation.
type change struct {
	kind string // Op* constant
	k    ServiceKey
	svc  Service     // add/update service
	d    Destination // destination ops
}

// line is the operation as an ipvsadm -R line, for logs and errors.
func (c change) line() string {
	switch c.kind {
	case OpAddService:
		return AddServiceCommand(c.svc)
	case OpUpdateService:
		return UpdateServiceCommand(c.svc)
	case OpDeleteService:
		return DeleteServiceCommand(c.k)
	case OpAddDestination:
		return AddDestinationCommand(c.k, c.d)
	case OpUpdateDestination:
		return UpdateDestinationCommand(c.k, c.d)
	case OpDeleteDestination:
		return DeleteDestinationCommand(c.k, c.d)
	}
	return c.kind
}

func (c change) do(ctx context.Context, b Backend) error {
	switch c.kind {
	case OpAddService:
		return b.AddService(ctx, c.svc)
	case OpUpdateService:
		return b.UpdateService(ctx, c.svc)
	case OpDeleteService:
		return b.DeleteService(ctx, c.k)
	case OpAddDestination:
		return b.AddDestination(ctx, c.k, c.d)
	case OpUpdateDestination:
		return b.UpdateDestination(ctx, c.k, c.d)
	case OpDeleteDestination:
		return b.DeleteDestination(ctx, c.k, c.d)
	}
	return fmt.Errorf("unknown operation %q", c.kind)
}

// batcher is a Backend that can pipeline many operations in one round trip
// (Netlink). applyBatch returns one error (or nil) per change, in order.
type batcher interface {
	applyBatch(ctx context.Context, cs []change) []error
}

type queued struct {
	c  change
	ok func()
}

// enqueue applies c, at once or (batching backend) at the next flush; ok runs when it
// succeeded.
func (r *Reconciler) enqueue(ctx context.Context, c change, ok func()) error {
	if _, batching := r.b.(batcher); !batching {
		if err := r.apply(ctx, c); err != nil {
			return err
		}
		ok()
		return nil
	}
	r.queue = append(r.queue, queued{c, ok})
	return nil
}

// flush applies the queued changes in one batch.
func (r *Reconciler) flush(ctx context.Context) error {
	if len(r.queue) == 0 {
		return nil
	}
	q := r.queue
	r.queue = r.queue[:0]
	cs := make([]change, len(q))
	for i := range q {
		cs[i] = q[i].c
		r.m.op(q[i].c.kind).Inc()
	}
	results := r.b.(batcher).applyBatch(ctx, cs)
	var errs errList
	for i, err := range results {
		if err != nil {
			r.m.opErr(cs[i].kind).Inc()
			errs.add(fmt.Errorf("ipvs %s (%s): %w", cs[i].kind, cs[i].line(), err))
			continue
		}
		q[i].ok()
	}
	return errs.err()
}

func (r *Reconciler) apply(ctx context.Context, c change) error {
	r.m.op(c.kind).Inc()
	if err := c.do(ctx, r.b); err != nil {
		r.m.opErr(c.kind).Inc()
		return fmt.Errorf("ipvs %s (%s): %w", c.kind, c.line(), err)
	}
	if r.log.Enabled(ctx, slog.LevelDebug) {
		r.log.Debug("ipvs op", "op", c.line())
	}
	return nil
}

func (r *Reconciler) drainingCount() int {
	n := 0
	for _, dr := range r.draining {
		n += len(dr)
	}
	return n
}

// normalizeService is a service as the kernel reports it back.
func normalizeService(s Service) Service {
	s = cloneService(s)
	if s.Scheduler == "" {
		s.Scheduler = "wlc" // the kernel's (and ipvsadm's) default
	}
	s.Flags = canonicalFlags(s.Flags)
	return s
}

// samePool reports whether p is the pool last applied: same settings and the same
// destinations (the same slice, as the caller keeps unchanged pools, or equal ones).
func samePool(a, b Pool) bool {
	if !sameService(a.Service, b.Service) || a.Drain != b.Drain || a.DrainTimeout != b.DrainTimeout || a.KeepExtra != b.KeepExtra {
		return false
	}
	if len(a.Destinations) != len(b.Destinations) {
		return false
	}
	if len(a.Destinations) == 0 || &a.Destinations[0] == &b.Destinations[0] {
		return true
	}
	return slices.Equal(a.Destinations, b.Destinations)
}

func sameService(a, b Service) bool {
	return a.ServiceKey == b.ServiceKey && a.Scheduler == b.Scheduler && a.OPS == b.OPS &&
		(slices.Equal(a.Flags, b.Flags) || slices.Equal(canonicalFlags(a.Flags), canonicalFlags(b.Flags)))
}

func normalizeDestKeepConns(k ServiceKey, d Destination) Destination {
	a, i := d.ActiveConns, d.InactiveConns
	d = normalizeDest(k, d)
	d.ActiveConns, d.InactiveConns = a, i
	return d
}

func keyOf(k ServiceKey, d Destination) destKey {
	p := d.Port
	if p == 0 {
		p = k.Port
	}
	return destKey{Addr: d.Addr, Port: p}
}

func compareKeys(a, b ServiceKey) int {
	return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
}

func sortedKeys[V any](m map[ServiceKey]V) []ServiceKey {
	ks := make([]ServiceKey, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, compareKeys)
	return ks
}

func sortedDestKeys(m map[destKey]Destination) []destKey {
	ks := make([]destKey, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b destKey) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port)) })
	return ks
}
