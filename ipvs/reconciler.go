package ipvs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
)

// Reconciler converges a Backend to the desired pools, one pool (virtual service) at
// a time. The desired world comes in whole (Set) or one pool at a time (Update,
// Remove); each change gets a version, and Status tells when that version is in the
// backend or why not. Run applies the changes: at most one pass per MinInterval (the
// first one at once), a full dump of the backend every ResyncPeriod to repair drift.
// Between dumps it keeps the last known kernel state and touches only the pools that
// changed, so one weight change costs one netlink operation and no work proportional
// to the number of pools.
//
// Failures are per pool: a pool whose operation failed is retried with its own
// exponential backoff (up to MaxBackoff) from a fresh read of its service, while the
// other pools' changes go through at once. Only a failure of the backend as a whole
// (the service dump) backs off every pool.
//
// Ownership: only services whose key is desired are touched. A service that leaves the
// desired set is deleted only if this Reconciler created or adopted it. At start the
// services of the config found in the kernel are adopted as they are (no flush).
type Reconciler struct {
	// Tunables; change them before Run.
	MinInterval  time.Duration // at most one pass per MinInterval (default 100ms)
	ResyncPeriod time.Duration // full dump and drift repair (default 5s)
	DrainPoll    time.Duration // how often draining destinations are polled (default 1s)
	MaxBackoff   time.Duration // cap of a pool's retry delay after errors (default 30s)
	Clock        clock.Clock   // timers, backoff and drain timeouts (default the real clock)

	b   Backend
	log *slog.Logger
	m   *metrics

	mu      sync.Mutex
	want    map[ServiceKey]wanted     // the desired pools
	changed map[ServiceKey]struct{}   // keys changed since the last pass took them
	gen     uint64                    // last version handed out
	status  map[ServiceKey]PoolStatus // published for Status; desired or being deleted
	notify  chan struct{}             // closed when a status is published; nil: nobody waits
	taken   []update                  // take's result, reused
	kick    chan struct{}
	idle    func(due time.Time)   // tests: see loop.idle
	sweep   func(ServiceKey) bool // Sweep's, until a pass takes it
	// The kernel settings to keep (SetSysctls), whether a pass must apply them before
	// the next resync, and what is wrong with them.
	sysctls      []Sysctl
	sysctlsDirty bool
	sysctlErrs   []error

	// Owned by the Run goroutine.
	pools    map[ServiceKey]*poolRun       // per pool: what to apply, what was, errors
	failing  map[ServiceKey]bool           // pools whose last attempt failed
	known    map[ServiceKey]*kernelService // last known backend state; nil = dump first
	covered  map[ServiceKey]bool           // keys whose state in known is trusted
	owned    map[ServiceKey]bool           // created or adopted by this process
	draining map[ServiceKey]map[destKey]time.Time
	queue    []queued              // destination changes waiting for a batching backend
	work     map[ServiceKey]bool   // the pools of a pass, reused
	keys     []ServiceKey          // the same, sorted, reused
	sweeping func(ServiceKey) bool // the Sweep a pass took, for its dump
}

type wanted struct {
	pool    Pool
	version uint64
	set     uint64 // the last Set that listed it (finds the keys a Set left out)
}

// poolRun is the Run goroutine's record of one pool.
type poolRun struct {
	pool     Pool
	version  uint64 // version of pool
	removed  bool   // no longer desired: delete the service if owned
	applied  uint64 // last version wholly applied
	base     Pool   // pool last applied against known, for the cheap diff
	based    bool   // base is valid (false after a dump or an error: compare everything)
	dup      bool   // base listed a destination twice (the cheap diff would be wrong)
	failures int
	err      error
	retryAt  time.Time
}

// PoolStatus is the reconciliation state of one pool: "is my change in the kernel yet,
// and if not, why?"
type PoolStatus struct {
	// Version is the pool's desired version: the value Set, Update or Remove returned
	// when the pool last changed.
	Version uint64
	// Applied is the last version whose operations all succeeded (0: none yet). The
	// pool is converged when Applied == Version. A draining destination (weight 0,
	// waiting for its connections) counts as applied.
	Applied uint64
	// Err is the error of the last attempt (nil once an attempt succeeded); Failures
	// counts the attempts that failed in a row, and RetryAt is the next one.
	Err      error
	Failures int
	RetryAt  time.Time
	// Attempted is the version of the last attempt (Err is its error, if any).
	Attempted uint64
	// Removing: the pool left the desired set; its service is being deleted.
	Removing bool
}

type destKey struct {
	Addr netip.Addr
	Port uint16
}

type kernelService struct {
	svc   Service
	dests map[destKey]Destination

	// For the mh scheduler, whose lookup table depends on the order of the kernel's
	// destination list and on each destination's last non-zero weight (see mh.go).
	order     []destKey        // the kernel's list, head first; kept for mh services only
	ordered   bool             // order is kept
	stale     map[destKey]bool // weight 0, but the kernel may remember a non-zero last weight
	canonical bool             // order and last weights found canonical since the last change
}

// addDest records a successful add: the kernel puts it at the head of the list, with
// its weight as last weight.
func (ks *kernelService) addDest(dk destKey, d Destination) {
	ks.dests[dk] = d
	delete(ks.stale, dk)
	ks.canonical = false
	if ks.ordered {
		ks.order = slices.Insert(ks.order, 0, dk)
	}
}

// setDest records a successful update: an update to weight 0 leaves the kernel's last
// weight at the previous non-zero one.
func (ks *kernelService) setDest(dk destKey, d Destination) {
	was := ks.dests[dk]
	ks.dests[dk] = d
	switch {
	case d.Weight != 0:
		delete(ks.stale, dk)
	case was.Weight != 0:
		if ks.stale == nil {
			ks.stale = map[destKey]bool{}
		}
		ks.stale[dk] = true
		ks.canonical = false
	}
}

// delDest records a successful delete.
func (ks *kernelService) delDest(dk destKey) {
	delete(ks.dests, dk)
	delete(ks.stale, dk)
	if ks.ordered {
		if i := slices.Index(ks.order, dk); i >= 0 {
			ks.order = slices.Delete(ks.order, i, i+1)
		}
	}
}

// NewReconciler returns a Reconciler for b. reg may be nil (no metrics).
func NewReconciler(b Backend, log *slog.Logger, reg prometheus.Registerer) *Reconciler {
	return &Reconciler{
		MinInterval:  100 * time.Millisecond,
		ResyncPeriod: 5 * time.Second,
		DrainPoll:    time.Second,
		MaxBackoff:   30 * time.Second,
		Clock:        clock.RealClock{},
		b:            b,
		log:          log,
		m:            newMetrics(reg),
		want:         map[ServiceKey]wanted{},
		changed:      map[ServiceKey]struct{}{},
		status:       map[ServiceKey]PoolStatus{},
		kick:         make(chan struct{}, 1),
		pools:        map[ServiceKey]*poolRun{},
		failing:      map[ServiceKey]bool{},
		owned:        map[ServiceKey]bool{},
		draining:     map[ServiceKey]map[destKey]time.Time{},
	}
}

// Set replaces the whole desired state: every configured service with the
// destinations it should have; services not in pools are removed. It never blocks and
// returns the version of this state (every pool Set changed has it; Status). A pool
// whose Destinations slice is the one of the previous Set costs a pointer comparison:
// replace the slices of pools that change, never modify them in place. A key listed
// twice is logged and the last one wins.
//
// Set compares every pool; a caller that knows what changed calls Update and Remove,
// whose cost does not depend on the number of pools.
func (r *Reconciler) Set(pools []Pool) uint64 {
	r.mu.Lock()
	r.gen++
	v := r.gen
	distinct := 0
	for _, p := range pools {
		k := p.Service.ServiceKey
		if cur, ok := r.want[k]; ok && cur.set == v {
			r.log.Error("ipvs: service configured twice; using the last one", "service", k.String())
		} else {
			distinct++
		}
		r.updateLocked(p, v, true)
		w := r.want[k]
		w.set = v // stamped: in this Set
		r.want[k] = w
	}
	if len(r.want) > distinct {
		for k, w := range r.want {
			if w.set != v {
				r.removeLocked(k, v)
			}
		}
	}
	r.mu.Unlock()
	r.poke()
	return v
}

// Update sets the desired state of one pool (added if new) and returns its version: the
// change is in the backend when Status(key).Applied >= that version. An unchanged pool
// keeps its version. The Destinations slice is kept, not copied: never modify it after.
func (r *Reconciler) Update(p Pool) uint64 {
	r.mu.Lock()
	r.gen++
	r.updateLocked(p, r.gen, false)
	v := r.want[p.Service.ServiceKey].version
	r.mu.Unlock()
	r.poke()
	return v
}

// Sweep claims the services in the backend that match and are not desired: they are
// kubal's leftovers (forwarded-probe helpers, ipvs.IsProbeMark, of an option removed
// while kubal was down) and the next pass deletes them. Call it once the desired state
// is complete (every service settled), or it deletes what is about to be desired.
func (r *Reconciler) Sweep(match func(ServiceKey) bool) {
	r.mu.Lock()
	r.sweep = match
	r.mu.Unlock()
	r.poke()
}

// IsProbeHelper matches kubal's forwarded-probe helper services (for Sweep).
func IsProbeHelper(k ServiceKey) bool { return k.IsFWMark() && IsProbeMark(k.FWMark) }

// Remove takes one pool out of the desired state (its service is deleted if this
// process created or adopted it) and returns the version of the removal.
func (r *Reconciler) Remove(k ServiceKey) uint64 {
	r.mu.Lock()
	r.gen++
	v := r.gen
	if _, ok := r.want[k]; ok {
		r.removeLocked(k, v)
	}
	r.mu.Unlock()
	r.poke()
	return v
}

// updateLocked records p as desired. deep compares the destinations of a new slice
// (Set: callers rebuild the world); otherwise (Update: the caller says it changed) only
// the same slice counts as unchanged, and the pass finds what differs.
func (r *Reconciler) updateLocked(p Pool, v uint64, deep bool) {
	k := p.Service.ServiceKey
	if cur, ok := r.want[k]; ok && samePool(cur.pool, p, deep) {
		return
	}
	r.want[k] = wanted{pool: p, version: v, set: r.want[k].set}
	r.changed[k] = struct{}{}
	st := r.status[k]
	st.Version, st.Removing = v, false
	r.status[k] = st
}

func (r *Reconciler) removeLocked(k ServiceKey, v uint64) {
	delete(r.want, k)
	r.changed[k] = struct{}{}
	st := r.status[k]
	st.Version, st.Removing = v, true
	r.status[k] = st
}

// SetSysctls replaces the kernel settings the Reconciler keeps: a pass sets them at
// once, and every resync checks and repairs them (SysctlBackend); what cannot be set
// is in Alerts. nil keeps none (settings set before are left as they are).
func (r *Reconciler) SetSysctls(want []Sysctl) {
	r.mu.Lock()
	r.sysctls, r.sysctlsDirty = slices.Clone(want), true
	r.mu.Unlock()
	r.poke()
}

// syncSysctls applies the wanted sysctls on a full pass or after SetSysctls.
func (r *Reconciler) syncSysctls(full bool) {
	r.mu.Lock()
	want, dirty := r.sysctls, r.sysctlsDirty
	r.sysctlsDirty = false
	r.mu.Unlock()
	if !full && !dirty {
		return
	}
	r.mu.Lock()
	prev := map[string]bool{} // the errors of the last attempt: logged once, not every resync
	for _, err := range r.sysctlErrs {
		prev[err.Error()] = true
	}
	r.mu.Unlock()
	failing := func(name string) bool {
		for e := range prev {
			if strings.Contains(e, "sysctl "+name+" ") {
				return true
			}
		}
		return false
	}
	errs := syncSysctls(r.b, want, func(s Sysctl, was string) {
		level := slog.LevelInfo
		if failing(s.Name) {
			level = slog.LevelDebug // a retry of a write that failed: /alerts says so
		}
		r.log.Log(context.Background(), level, "ipvs: setting a kernel setting", "sysctl", s.Name, "from", was, "to", s.Value, "why", s.Why)
	})
	for _, err := range errs {
		level := slog.LevelWarn
		if prev[err.Error()] {
			level = slog.LevelDebug
		}
		r.log.Log(context.Background(), level, "ipvs: kernel setting not in force; retrying at the next resync", "error", err)
	}
	r.mu.Lock()
	r.sysctlErrs = errs
	r.mu.Unlock()
}

// Alerts are the Reconciler's problems for /alerts: pools not in the kernel yet
// (each retried with backoff) and kernel settings not in force.
func (r *Reconciler) Alerts() []string {
	errs := r.Errors()
	var out []string
	for _, k := range sortedKeys(errs) {
		out = append(out, fmt.Sprintf("IPVS %s: not in the kernel yet, retrying: %s", k, firstLine(errs[k].Error())))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, err := range r.sysctlErrs {
		out = append(out, "IPVS kernel setting: "+firstLine(err.Error()))
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func (r *Reconciler) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Status returns the reconciliation state of the pool of k; false if k is neither
// desired nor being removed.
func (r *Reconciler) Status(k ServiceKey) (PoolStatus, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.status[k]
	return st, ok
}

// WaitApplied blocks until version v of the pool of k (or a later one) is in the
// backend, and returns its status; or until an attempt at v or later failed, and
// returns that error too (the Reconciler keeps retrying: Status follows it); or until
// ctx is done. A removed pool counts as applied once its service is gone (and a key
// with no status at all returns at once).
func (r *Reconciler) WaitApplied(ctx context.Context, k ServiceKey, v uint64) (PoolStatus, error) {
	for {
		r.mu.Lock()
		st, ok := r.status[k]
		if r.notify == nil {
			r.notify = make(chan struct{})
		}
		ch := r.notify
		r.mu.Unlock()
		switch {
		case !ok || st.Applied >= v:
			return st, nil
		case st.Err != nil && st.Attempted >= v:
			return st, st.Err
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-ch:
		}
	}
}

// Errors returns the pools whose last attempt failed, with the error (for /alerts).
func (r *Reconciler) Errors() map[ServiceKey]error {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[ServiceKey]error{}
	for k, st := range r.status {
		if st.Err != nil {
			out[k] = st.Err
		}
	}
	return out
}

// Run reconciles until ctx is done. Backend errors are logged, counted and retried
// with backoff (per pool); they never end Run. A full dump happens at start and every
// ResyncPeriod (drift repair); other passes apply only what changed.
func (r *Reconciler) Run(ctx context.Context) error {
	var nextResync time.Time
	l := &loop{clock: r.Clock, log: r.log, what: "ipvs reconcile", kick: r.kick,
		minInterval: r.MinInterval, maxBackoff: r.MaxBackoff, idle: r.idle}
	l.run(ctx, func(ctx context.Context) (time.Time, error) {
		full := !r.Clock.Now().Before(nextResync)
		want, err, _ := r.pass(ctx, full)
		if err == nil && full {
			nextResync = r.Clock.Now().Add(r.ResyncPeriod)
		}
		if err != nil {
			return time.Time{}, err // the loop backs off
		}
		return earliest(want, nextResync), nil
	})
	return nil
}

// Reconcile runs one pass synchronously (full: dump the backend first) and returns
// every error of it. Pools in backoff after an error are retried only once their
// retry is due (Clock). For tests, benchmarks and tools; never call it while Run runs.
func (r *Reconciler) Reconcile(ctx context.Context, full bool) error {
	_, err, poolErrs := r.pass(ctx, full)
	var all errList
	all.add(err)
	all.add(poolErrs)
	return all.err()
}

type update struct {
	k       ServiceKey
	w       wanted
	removed bool
}

// take returns the changes since the last take: O(changes), not O(pools).
func (r *Reconciler) take() []update {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.changed) == 0 {
		return nil
	}
	out := r.taken[:0]
	for k := range r.changed {
		w, ok := r.want[k]
		if !ok {
			w.version = r.status[k].Version
		}
		out = append(out, update{k: k, w: w, removed: !ok})
	}
	r.taken = out
	r.changed = reset(r.changed)
	return out
}

// reset empties m for reuse. Clearing and iterating a map cost its capacity, which a
// whole-world change grew to the number of pools: a map that held many keys is
// replaced, a small one cleared (no allocation per pass).
func reset[V any](m map[ServiceKey]V) map[ServiceKey]V {
	if m == nil || len(m) > 64 {
		return map[ServiceKey]V{}
	}
	clear(m)
	return m
}

// pass runs one reconciliation. full forces a dump of the backend; without it the last
// known state is used, and only the pools that changed, are due for a retry or drain,
// or were never looked at are read and written. err is a failure of the whole pass
// (the next pass dumps again); poolErrs are the failures of single pools, each
// recorded with its own retry time. want is when the next pass is needed (zero: only
// when something changes).
func (r *Reconciler) pass(ctx context.Context, full bool) (want time.Time, err, poolErrs error) {
	start := r.Clock.Now()
	defer func() {
		r.m.duration.Observe(r.Clock.Since(start).Seconds())
		if err != nil {
			r.known = nil // converge from a fresh dump next time
		}
	}()
	now := start
	r.syncSysctls(full)
	r.work = reset(r.work)
	work := r.work
	for _, u := range r.take() {
		e := r.pools[u.k]
		if e == nil {
			if u.removed {
				r.publish(u.k, nil) // never seen by a pass: nothing to delete
				continue
			}
			e = &poolRun{}
			r.pools[u.k] = e
		}
		e.removed, e.version = u.removed, u.w.version
		if !u.removed {
			e.pool = u.w.pool
		}
		e.retryAt = time.Time{} // new intent: tried at once, even in backoff
		work[u.k] = true
	}
	due := func(e *poolRun) bool { return e.err == nil || !e.retryAt.After(now) }
	r.mu.Lock()
	r.sweeping, r.sweep = r.sweep, nil
	r.mu.Unlock()
	if full || r.known == nil || r.sweeping != nil {
		failed, err := r.dump(ctx)
		r.sweeping = nil
		if err != nil {
			return time.Time{}, err, nil // the sweep is lost: Sweep again
		}
		for k, e := range r.pools {
			if due(e) || work[k] {
				work[k] = true
			}
		}
		for k, err := range failed {
			if e := r.pools[k]; e != nil && work[k] {
				r.fail(k, e, err, now)
				delete(work, k)
			}
		}
	} else {
		for k := range r.failing {
			if due(r.pools[k]) {
				work[k] = true
			}
		}
		for k, err := range r.pollDraining(ctx, due) {
			r.fail(k, r.pools[k], err, now)
			delete(work, k)
		}
		for k := range r.draining {
			if due(r.pools[k]) {
				work[k] = true
			}
		}
	}
	// Pools never looked at (new in the config, or after an error): read them first.
	var look []ServiceKey
	for k := range work {
		if !r.covered[k] && (!r.pools[k].removed || r.owned[k]) {
			look = append(look, k)
		}
	}
	if len(look) > 0 {
		failed, err := r.lookup(ctx, look)
		if err != nil {
			return time.Time{}, err, nil
		}
		for k, err := range failed {
			r.fail(k, r.pools[k], err, now)
			delete(work, k)
		}
	}

	var errs errList
	keys := r.keys[:0]
	for k := range work {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	r.keys = keys
	for _, k := range keys {
		if ctx.Err() != nil {
			return time.Time{}, ctx.Err(), nil // shutting down: the next process converges
		}
		e := r.pools[k]
		if e.removed {
			if err := r.removeService(ctx, k); err != nil {
				errs.add(err)
				r.fail(k, e, err, now)
				continue
			}
			delete(r.pools, k)
			delete(r.failing, k)
			r.publish(k, nil)
			continue
		}
		if err := r.syncPool(ctx, k, e); err != nil {
			errs.add(err)
			r.fail(k, e, err, now)
			continue
		}
		e.applied, e.err, e.failures, e.retryAt = e.version, nil, 0, time.Time{}
		delete(r.failing, k)
		r.publish(k, e)
	}
	r.m.draining.Set(float64(r.drainingCount()))
	r.m.failing.Set(float64(len(r.failing)))
	for k := range r.failing {
		want = earliest(want, r.pools[k].retryAt)
	}
	if len(r.draining) > 0 {
		want = earliest(want, r.Clock.Now().Add(r.DrainPoll))
	}
	return want, nil, errs.err()
}

// fail records a failed attempt of pool k: its own backoff, and a fresh read of its
// service before the retry (the failed operation may have half happened).
func (r *Reconciler) fail(k ServiceKey, e *poolRun, err error, now time.Time) {
	e.failures++
	e.err = err
	delay := backoff(e.failures, r.MinInterval, r.MaxBackoff)
	e.retryAt = now.Add(delay)
	e.based = false
	r.failing[k] = true
	delete(r.known, k)
	delete(r.covered, k)
	r.log.Warn("ipvs: pool failed; retrying", "service", k.String(), "retry_in", delay, "failures", e.failures, "error", err)
	r.publish(k, e)
}

// publish copies the Run goroutine's view of pool k into the status (nil: forget it).
func (r *Reconciler) publish(k ServiceKey, e *poolRun) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.notify != nil {
		close(r.notify)
		r.notify = nil
	}
	st, ok := r.status[k]
	if e == nil {
		// Forget it unless it was desired again in the meantime.
		if ok && st.Removing {
			delete(r.status, k)
		}
		return
	}
	if !ok {
		return
	}
	st.Applied, st.Err, st.Failures, st.RetryAt, st.Attempted = e.applied, e.err, e.failures, e.retryAt, e.version
	r.status[k] = st
}

// removeService deletes a service that left the desired set, if it is ours.
func (r *Reconciler) removeService(ctx context.Context, k ServiceKey) error {
	if _, ok := r.known[k]; ok && r.owned[k] {
		if err := r.apply(ctx, change{kind: OpDeleteService, k: k}); err != nil {
			return err
		}
		r.log.Info("ipvs: removed service no longer configured", "service", k.String())
	}
	delete(r.owned, k)
	delete(r.known, k)
	delete(r.covered, k)
	delete(r.draining, k)
	return nil
}

// lookup reads the state of services not looked at yet: one service dump, and the
// destinations of those present. A failed destination dump fails that key only.
func (r *Reconciler) lookup(ctx context.Context, keys []ServiceKey) (map[ServiceKey]error, error) {
	svcs, err := r.b.Services(ctx)
	if err != nil {
		r.m.errors.WithLabelValues(OpDumpServices).Inc()
		return nil, fmt.Errorf("dump services: %w", err)
	}
	if r.known == nil {
		r.known, r.covered = map[ServiceKey]*kernelService{}, map[ServiceKey]bool{}
	}
	want := make(map[ServiceKey]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	failed := map[ServiceKey]error{}
	for _, s := range svcs {
		k := s.ServiceKey
		if !want[k] {
			continue
		}
		ks, err := r.readService(ctx, s, nil)
		if err != nil {
			failed[k] = err
			delete(want, k)
			continue
		}
		r.known[k] = ks
		if !r.owned[k] {
			r.owned[k] = true
			r.log.Info("ipvs: adopted existing service", "service", k.String(), "destinations", len(ks.dests))
		}
	}
	for k := range want {
		r.covered[k] = true // present and read, or known absent
	}
	return failed, nil
}

func (r *Reconciler) readService(ctx context.Context, s Service, prev *kernelService) (*kernelService, error) {
	k := s.ServiceKey
	ds, err := r.b.Destinations(ctx, k)
	if err != nil {
		r.m.errors.WithLabelValues(OpDumpDestinations).Inc()
		return nil, fmt.Errorf("dump destinations of %s: %w", k, err)
	}
	ks := &kernelService{svc: normalizeService(s), dests: make(map[destKey]Destination, len(ds))}
	ks.ordered = ks.svc.Scheduler == "mh"
	for _, d := range ds {
		d = normalizeDestKeepConns(k, d)
		dk := keyOf(k, d)
		ks.dests[dk] = d
		if ks.ordered {
			ks.order = append(ks.order, dk)
		}
		// A weight-0 destination's last weight is not in the dump: known to be 0 only
		// if it was 0 (and not stale) before.
		if d.Weight == 0 {
			if p, ok := prev.dest(dk); !ok || p.Weight != 0 || prev.stale[dk] {
				if ks.stale == nil {
					ks.stale = map[destKey]bool{}
				}
				ks.stale[dk] = true
			}
		}
	}
	return ks, nil
}

func (ks *kernelService) dest(dk destKey) (Destination, bool) {
	if ks == nil {
		return Destination{}, false
	}
	d, ok := ks.dests[dk]
	return d, ok
}

// dump reads the services and, for the ones kubal cares about, their destinations. If
// a previous state was known, every difference is drift (a change made outside kubal):
// it is logged and counted, and the following sync repairs it. A failed destination
// dump fails that key only (returned in failed).
func (r *Reconciler) dump(ctx context.Context) (failed map[ServiceKey]error, err error) {
	svcs, err := r.b.Services(ctx)
	if err != nil {
		r.m.errors.WithLabelValues(OpDumpServices).Inc()
		return nil, fmt.Errorf("dump services: %w", err)
	}
	kernel := make(map[ServiceKey]*kernelService)
	covered := make(map[ServiceKey]bool, len(r.pools))
	for k := range r.pools {
		covered[k] = true
	}
	for k := range r.owned {
		covered[k] = true
	}
	failed = map[ServiceKey]error{}
	for _, s := range svcs {
		k := s.ServiceKey
		if r.sweeping != nil && r.pools[k] == nil && r.sweeping(k) {
			// Swept: kubal's though not desired; deleted by this pass.
			r.pools[k] = &poolRun{removed: true}
			r.owned[k], covered[k] = true, true
			r.log.Info("ipvs: removing a leftover service of kubal's", "service", k.String())
		}
		if !covered[k] {
			continue // not ours: never read, never touched
		}
		ks, err := r.readService(ctx, s, r.known[k])
		if err != nil {
			failed[k] = err
			delete(covered, k)
			continue
		}
		kernel[k] = ks
	}
	if r.known != nil {
		r.reportDrift(kernel, covered)
	}
	for k, e := range r.pools {
		if _, ok := kernel[k]; ok && !e.removed && !r.owned[k] {
			r.owned[k] = true
			r.log.Info("ipvs: adopted existing service", "service", k.String(), "destinations", len(kernel[k].dests))
		}
		e.based = false // the dump may differ from what was applied: compare everything
	}
	r.known, r.covered = kernel, covered
	return failed, nil
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

// pollDraining refreshes the connection counters of services with draining
// destinations whose pool is due (not in backoff). A failed read fails that pool only.
func (r *Reconciler) pollDraining(ctx context.Context, due func(*poolRun) bool) map[ServiceKey]error {
	var failed map[ServiceKey]error
	for _, k := range sortedKeys(r.draining) {
		ks, ok := r.known[k]
		if !ok || r.pools[k] == nil || !due(r.pools[k]) {
			continue
		}
		ds, err := r.b.Destinations(ctx, k)
		if err != nil {
			r.m.errors.WithLabelValues(OpDumpDestinations).Inc()
			if failed == nil {
				failed = map[ServiceKey]error{}
			}
			failed[k] = fmt.Errorf("poll draining destinations of %s: %w", k, err)
			continue
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
				ks.delDest(dk) // gone already (by hand): nothing left to drain
				delete(r.draining[k], dk)
			}
		}
	}
	return failed
}

// syncPool converges one desired service against the known state.
func (r *Reconciler) syncPool(ctx context.Context, k ServiceKey, e *poolRun) error {
	p := e.pool
	want := normalizeService(p.Service)
	cur, ok := r.known[k]
	if !ok {
		if err := r.apply(ctx, change{kind: OpAddService, k: k, svc: want}); err != nil {
			return err
		}
		cur = &kernelService{svc: want, dests: map[destKey]Destination{}, ordered: want.Scheduler == "mh"}
		r.known[k] = cur
		r.covered[k] = true
		e.based = false
	} else if !sameService(cur.svc, want) {
		if err := r.apply(ctx, change{kind: OpUpdateService, k: k, svc: want}); err != nil {
			return err
		}
		cur.svc = want
		cur.canonical = false
	}
	r.owned[k] = true
	handled, err := r.syncChanged(ctx, k, e, cur)
	if !handled {
		var errs errList
		errs.add(err)
		errs.add(r.syncAll(ctx, k, e, cur))
		err = errs.err()
	}
	if err == nil && want.Scheduler == "mh" && !cur.canonical {
		err = r.canonicalize(ctx, k, cur)
	}
	e.base, e.based = e.pool, err == nil
	return err
}

// syncChanged is the cheap diff: when the pool differs from the one last applied (and
// nothing was read from the kernel since) only by destination settings at the same
// positions, it updates those and reports true; no map, no sort, no allocation.
// Otherwise it does nothing and reports false.
func (r *Reconciler) syncChanged(ctx context.Context, k ServiceKey, e *poolRun, cur *kernelService) (bool, error) {
	b := e.base
	p := e.pool
	if !e.based || e.dup || len(r.draining[k]) > 0 || b.KeepExtra != p.KeepExtra || b.Drain != p.Drain ||
		len(b.Keep) > 0 || len(p.Keep) > 0 { // Keep: rare and brief (first checks), syncAll
		return false, nil
	}
	if d := len(p.Destinations) - len(b.Destinations); d == 1 || d == -1 {
		return r.syncOneMoreOrLess(ctx, k, e, cur)
	}
	if len(b.Destinations) != len(p.Destinations) {
		return false, nil
	}
	var errs errList
	for i := range p.Destinations {
		if b.Destinations[i] == p.Destinations[i] {
			continue
		}
		if keyOf(k, b.Destinations[i]) != keyOf(k, p.Destinations[i]) {
			// Not a settings change: compare everything (what was applied or queued
			// so far is in cur already, or flushed with the rest).
			return false, errs.err()
		}
		d := normalizeDest(k, p.Destinations[i])
		dk := keyOf(k, d)
		have, ok := cur.dests[dk]
		switch {
		case !ok:
			errs.add(r.enqueue(ctx, change{kind: OpAddDestination, k: k, d: d}, func() { cur.addDest(dk, d) }))
		case have.Weight != d.Weight || have.Forwarding != d.Forwarding:
			d.ActiveConns, d.InactiveConns = have.ActiveConns, have.InactiveConns
			errs.add(r.enqueue(ctx, change{kind: OpUpdateDestination, k: k, d: d}, func() { cur.setDest(dk, d) }))
		}
	}
	errs.add(r.flush(ctx))
	return true, errs.err()
}

// syncOneMoreOrLess is the cheap diff of a pool that gained or lost exactly one
// destination since the one last applied, everything else equal and in the same order
// (a server pooled or depooled): one add or one delete, no map, no sort. Otherwise it
// does nothing and reports false.
func (r *Reconciler) syncOneMoreOrLess(ctx context.Context, k ServiceKey, e *poolRun, cur *kernelService) (bool, error) {
	long, short := e.pool.Destinations, e.base.Destinations
	added := len(long) > len(short)
	if !added {
		long, short = short, long
	}
	if normalizeService(e.pool.Service).Scheduler == "mh" || (!added && e.pool.Drain && k.Protocol == TCP) {
		return false, nil // canonical order, drain: syncAll
	}
	i := 0
	for i < len(short) && short[i] == long[i] {
		i++
	}
	for j := i; j < len(short); j++ {
		if short[j] != long[j+1] {
			return false, nil
		}
	}
	d := normalizeDest(k, long[i])
	dk := keyOf(k, d)
	for _, o := range short {
		if keyOf(k, o) == dk {
			return false, nil // a duplicate key: syncAll
		}
	}
	have, ok := cur.dests[dk]
	var err error
	switch {
	case added && !ok:
		err = r.enqueue(ctx, change{kind: OpAddDestination, k: k, d: d}, func() { cur.addDest(dk, d) })
	case added && (have.Weight != d.Weight || have.Forwarding != d.Forwarding):
		d.ActiveConns, d.InactiveConns = have.ActiveConns, have.InactiveConns
		err = r.enqueue(ctx, change{kind: OpUpdateDestination, k: k, d: d}, func() { cur.setDest(dk, d) })
	case !added && ok && !e.pool.KeepExtra:
		err = r.enqueue(ctx, change{kind: OpDeleteDestination, k: k, d: have}, func() { cur.delDest(dk) })
	}
	var errs errList
	errs.add(err)
	errs.add(r.flush(ctx))
	return true, errs.err()
}

// syncAll compares every destination of the pool with the known state.
func (r *Reconciler) syncAll(ctx context.Context, k ServiceKey, e *poolRun, cur *kernelService) error {
	p := e.pool
	var errs errList
	e.dup = false
	mh := normalizeService(p.Service).Scheduler == "mh"
	var adds []Destination
	wantDests := make(map[destKey]bool, len(p.Destinations))
	for _, d := range p.Destinations {
		d = normalizeDest(k, d)
		dk := keyOf(k, d)
		if wantDests[dk] {
			e.dup = true
			continue // listed twice: the first one wins
		}
		wantDests[dk] = true
		if dr := r.draining[k]; dr != nil {
			delete(dr, dk) // desired again: no longer draining
		}
		have, ok := cur.dests[dk]
		switch {
		case !ok && mh:
			adds = append(adds, d) // added below, in canonical order
		case !ok:
			errs.add(r.enqueue(ctx, change{kind: OpAddDestination, k: k, d: d}, func() { cur.addDest(dk, d) }))
		case have.Weight != d.Weight || have.Forwarding != d.Forwarding:
			d.ActiveConns, d.InactiveConns = have.ActiveConns, have.InactiveConns
			errs.add(r.enqueue(ctx, change{kind: OpUpdateDestination, k: k, d: d}, func() { cur.setDest(dk, d) }))
		}
	}
	// The kernel adds to the head of the list: adding in descending order leaves the
	// list ascending (canonical) when the new destinations sort before the others.
	slices.SortFunc(adds, func(a, b Destination) int { return compareDestKeys(keyOf(k, b), keyOf(k, a)) })
	for _, d := range adds {
		dk := keyOf(k, d)
		errs.add(r.enqueue(ctx, change{kind: OpAddDestination, k: k, d: d}, func() { cur.addDest(dk, d) }))
	}
	for _, dk := range sortedDestKeys(cur.dests) {
		if wantDests[dk] {
			continue
		}
		have := cur.dests[dk]
		if p.KeepExtra || slices.Contains(p.Keep, dk.Addr) {
			continue // unsynced source, or a server awaiting its first check
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
			cur.delDest(dk)
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
	now := r.Clock.Now()
	since, ok := dr[dk]
	if !ok {
		since = now
		dr[dk] = now
	}
	if have.Weight != 0 {
		zero := have
		zero.Weight = 0
		if err := r.enqueue(ctx, change{kind: OpUpdateDestination, k: k, d: zero}, func() { cur.setDest(dk, zero) }); err != nil {
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

// samePool reports whether two pools are the same: same settings and the same
// destinations (the same slice, as the caller keeps unchanged pools, or, if deep,
// equal ones).
func samePool(a, b Pool, deep bool) bool {
	if !sameService(a.Service, b.Service) || a.Drain != b.Drain || a.DrainTimeout != b.DrainTimeout || a.KeepExtra != b.KeepExtra ||
		!slices.Equal(a.Keep, b.Keep) {
		return false
	}
	if len(a.Destinations) != len(b.Destinations) {
		return false
	}
	if len(a.Destinations) == 0 || &a.Destinations[0] == &b.Destinations[0] {
		return true
	}
	return deep && slices.Equal(a.Destinations, b.Destinations)
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
	return cmp.Or(cmp.Compare(a.FWMark, b.FWMark), cmp.Compare(a.Protocol, b.Protocol), a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
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
	slices.SortFunc(ks, compareDestKeys)
	return ks
}

func compareDestKeys(a, b destKey) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
}
