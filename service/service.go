// Package service is the per-service actor: one goroutine per configured service that
// owns its coordinator, its source subscription, address resolution and monitor
// watches. Everything that changes a service arrives as a typed input (source update,
// source failure, monitor result, resolution, admin intent, reconfigure) and is
// applied on that goroutine; the result is published as an immutable, versioned State.
// A service never calls back into its owner: it only signals that a new State exists.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/source"
)

// HealthMonitor is the name under which a source's health signal (Server.Down, e.g. a
// Kubernetes node NotReady) is fed to the coordinator: a monitor like the others, so
// it is held to the depool threshold.
const HealthMonitor = "Kubernetes"

// State is what a service publishes. It is immutable: a change publishes a new State.
type State struct {
	Version  uint64
	Config   *config.Service
	Snapshot *pool.Snapshot
	// Source is the server set as the source last delivered it, before admin intent.
	Source source.Set
	// Intent is the admin intent in force (Intent.Revision: the last admin change
	// applied).
	Intent admin.Intent
	// Synced: the source delivered its first set and the admin intent was read. Until
	// then the kernel's destinations of this service are kept as they are.
	Synced bool
	// Settled: synced, and every server's address was resolved (or failed) once.
	Settled   bool
	SourceErr error
	// Problems maps host -> a data problem (a malformed value) that keeps its state.
	Problems map[string]string

	next chan struct{} // closed when a newer State is published
}

// Next is closed once a newer State than s has been published.
func (s *State) Next() <-chan struct{} { return s.next }

// Watcher starts monitors; monitor.Manager implements it.
type Watcher interface {
	Watch(svc *config.Service, name string, t monitor.Target, report func(monitor.Result)) (stop func(), err error)
}

// Resolver resolves a server name to an address of the VIP's family.
type Resolver func(ctx context.Context, host string, v6 bool) (netip.Addr, error)

// Deps are what a service uses. Source and Store are built once for the service.
type Deps struct {
	Source   source.Source
	Store    admin.Store
	Monitors Watcher // nil: no monitors (tests)
	Resolve  Resolver
	Clock    clock.WithTicker
	Log      *slog.Logger
	// Health: the source reports health (Server.Down), fed as HealthMonitor.
	Health bool
	// Changed is called (it must not block) after each publish.
	Changed func()
}

// Service is a running service actor.
type Service struct {
	name  string
	deps  Deps
	log   *slog.Logger
	in    chan input
	state atomic.Pointer[State]

	intentMu  sync.Mutex // the latest undelivered admin intent (latest wins)
	intent    *admin.Intent
	intentSig chan struct{}

	ctx     context.Context // Run's: ends the goroutines that feed the actor
	stopped chan struct{}   // closed when Run has returned

	// Owned by the actor goroutine.
	cfg         *config.Service
	coord       *pool.Coordinator
	source      source.Set
	applied     admin.Intent
	sourceSeen  bool
	settled     bool // published a settled State once (Settled stays true)
	srcErr      error
	problems    map[string]string
	watches     map[string]*watch
	resolving   map[string]bool
	resolveWait map[string]time.Duration
	version     uint64
	// serversChanged: servers or addresses may have changed since the last syncWatches
	// (a monitor result changes neither).
	serversChanged bool
	// acks are closed after the next publish: a Reconfigure returns only once State()
	// shows the new config (its caller replans from State() straight away).
	acks []chan struct{}
}

type watch struct {
	addr  netip.Addr
	stops []func()
	// raw is each monitor's last result as reported, before ForwardedVerdict: a
	// forwarded probe's reason depends on the direct probe's current result.
	raw map[string]monitor.Result
}

// New returns a service for cfg; Run starts it.
func New(cfg *config.Service, deps Deps) *Service {
	if deps.Clock == nil {
		deps.Clock = clock.RealClock{}
	}
	if deps.Changed == nil {
		deps.Changed = func() {}
	}
	log := deps.Log.With("system", cfg.Name)
	s := &Service{
		name:        cfg.Name,
		deps:        deps,
		log:         log,
		in:          make(chan input, 1024),
		intentSig:   make(chan struct{}, 1),
		stopped:     make(chan struct{}),
		cfg:         cfg,
		coord:       pool.New(cfg.Name, cfg.DepoolThreshold, monitorsOf(cfg, deps.Health), deps.Log),
		watches:     map[string]*watch{},
		resolving:   map[string]bool{},
		resolveWait: map[string]time.Duration{},
	}
	s.coord.SetPoolUnchecked(cfg.PoolUnchecked)
	s.publish()
	return s
}

func monitorsOf(cfg *config.Service, health bool) []string {
	m := monitor.Watched(cfg) // the monitors, then their forwarded probes
	if len(m) == 0 {
		m = nil
	}
	if health {
		m = append(m, HealthMonitor)
	}
	return m
}

// Name is the service (pool) name.
func (s *Service) Name() string { return s.name }

// State returns the current published state.
func (s *Service) State() *State { return s.state.Load() }

// Inputs. Each is applied on the actor goroutine.
type input interface{ apply(s *Service) }

type sourceUpdate struct{ set source.Set }
type sourceFailed struct{ err error }
type sourceProblems struct{ p map[string]string }
type monitorResult struct {
	host, monitor string
	w             *watch
	r             monitor.Result
}
type resolved struct {
	host string
	addr netip.Addr
	err  error
}
type retryResolve struct{ host string }
type reconfigure struct {
	cfg  *config.Service
	done chan struct{}
}

// Run runs the actor until ctx is done, then stops its monitors and source.
func (s *Service) Run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	s.ctx = ctx
	defer close(s.stopped)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer s.stopWatches()
	wg.Go(func() {
		if err := s.deps.Source.Run(ctx, events{s, ctx}); err != nil && ctx.Err() == nil {
			s.log.Error("server-list source stopped", "err", err)
		}
	})
	wg.Go(func() {
		s.deps.Store.Watch(ctx, func(in admin.Intent) {
			s.intentMu.Lock()
			s.intent = &in
			s.intentMu.Unlock()
			select {
			case s.intentSig <- struct{}{}:
			default:
			}
		})
	})
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.intentSig:
			s.takeIntent()
		case in := <-s.in:
			in.apply(s)
			// Apply whatever else is queued before one publish: bursts of monitor results
			// are settled together.
		drain:
			for range 256 {
				select {
				case in := <-s.in:
					in.apply(s)
				default:
					break drain
				}
			}
		}
		s.takeIntent()
		s.settle()
		for _, ack := range s.acks {
			close(ack)
		}
		s.acks = s.acks[:0]
	}
}

func (s *Service) send(ctx context.Context, in input) {
	select {
	case s.in <- in:
	case <-ctx.Done():
	}
}

// events receives the source's reports.
type events struct {
	s   *Service
	ctx context.Context
}

func (e events) Update(set source.Set)             { e.s.send(e.ctx, sourceUpdate{set.Clone()}) }
func (e events) Failed(err error)                  { e.s.send(e.ctx, sourceFailed{err}) }
func (e events) Problems(p map[string]string)      { e.s.send(e.ctx, sourceProblems{maps.Clone(p)}) }
func (u sourceUpdate) apply(s *Service)            { s.source, s.sourceSeen = u.set, true; s.applyServers() }
func (p sourceProblems) apply(s *Service)          { s.problems = p.p }
func (r retryResolve) apply(s *Service)            { s.retryResolve(r.host) }
func (r resolved) apply(s *Service)                { s.resolved(r) }
func (m monitorResult) apply(s *Service)           { s.monitorResult(m) }
func (c reconfigure) apply(s *Service)             { s.reconfigure(c.cfg); s.acks = append(s.acks, c.done) }
func (f sourceFailed) apply(s *Service)            { s.sourceFailed(f.err) }
func (s *Service) takeIntentLocked() *admin.Intent { in := s.intent; s.intent = nil; return in }

func (s *Service) takeIntent() {
	s.intentMu.Lock()
	in := s.takeIntentLocked()
	s.intentMu.Unlock()
	if in == nil {
		return
	}
	if (in.Err == nil) != (s.applied.Err == nil) && in.Err != nil {
		s.log.Warn("admin store failing; keeping the last known admin overrides", "store", s.deps.Store.String(), "err", in.Err)
	}
	if in.Loaded && !s.applied.Loaded {
		for _, host := range slices.Sorted(maps.Keys(in.Overrides)) {
			s.log.Info("admin override in force", "host", host, "override", in.Overrides[host].String(), "store", s.deps.Store.String())
		}
	}
	changed := !in.Loaded || !s.applied.Loaded || !reflect.DeepEqual(in.Overrides, s.applied.Overrides)
	s.applied = *in
	if changed {
		s.applyServers()
	}
}

func (s *Service) sourceFailed(err error) {
	if err != nil && (s.srcErr == nil || s.srcErr.Error() != err.Error()) {
		s.log.Warn("server-list source failing; keeping the last known servers", "err", err)
	}
	if err == nil && s.srcErr != nil {
		s.log.Info("server-list source recovered")
	}
	s.srcErr = err
}

// applyServers feeds the gated server set to the coordinator once both the source and
// the admin intent are known.
func (s *Service) applyServers() {
	if !s.sourceSeen || !s.applied.Loaded {
		return
	}
	gated := s.applied.Gate(s.source)
	servers := make([]pool.ServerConfig, 0, len(gated))
	for _, sv := range gated {
		servers = append(servers, pool.ServerConfig{Host: sv.Host, Addr: sv.Addr, Weight: sv.Weight, Enabled: sv.Enabled, Reason: sv.Reason,
			Override: s.applied.Overrides[sv.Host].String()})
		if sv.Addr.IsValid() {
			delete(s.resolving, sv.Host)
		}
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].Host < servers[j].Host })
	s.coord.Update(servers)
	s.serversChanged = true
	snap := s.coord.SnapshotShared()
	for _, sv := range snap.Servers {
		if !sv.Ready && !s.resolving[sv.Host] {
			s.startResolve(sv.Host)
		}
	}
	s.feedHealth()
}

// feedHealth gives the coordinator the source's health verdict of every ready server.
func (s *Service) feedHealth() {
	if !s.deps.Health {
		return
	}
	snap := s.coord.SnapshotShared()
	for _, sv := range snap.Servers {
		if !sv.Ready {
			continue
		}
		down := s.source[sv.Host].Down
		r := pool.MonitorResult{Up: down == "", Reason: down}
		if cur, ok := sv.Monitors[HealthMonitor]; ok && cur == r {
			continue
		}
		s.coord.Result(sv.Host, HealthMonitor, r)
	}
}

func (s *Service) monitorResult(m monitorResult) {
	if cur, ok := s.watches[m.host]; !ok || cur != m.w {
		return // from a watch that was replaced
	}
	m.w.raw[m.monitor] = m.r
	s.coord.Result(m.host, m.monitor, s.verdict(m.w, m.monitor))
	// The direct probe changed: so may the reason of its forwarded probe.
	if fwd := monitor.ForwardedName(m.monitor); m.w.has(fwd) {
		s.coord.Result(m.host, fwd, s.verdict(m.w, fwd))
	}
}

func (w *watch) has(name string) bool { _, ok := w.raw[name]; return ok }

// verdict is the result the coordinator gets for monitor name: a forwarded probe
// that fails while the direct one passes says so (monitor.ForwardedVerdict).
func (s *Service) verdict(w *watch, name string) pool.MonitorResult {
	r := w.raw[name]
	if direct, ok := strings.CutSuffix(name, monitor.ForwardedName("")); ok {
		if d, known := w.raw[direct]; known {
			r = monitor.ForwardedVerdict(d, r)
		}
	}
	return pool.MonitorResult{Up: r.Up, Reason: r.Reason}
}

// startResolve looks a hostname up off the actor, retrying with backoff on failure
// (PyBal resolved once and never retried: SPEC §14 #10).
func (s *Service) startResolve(host string) {
	s.resolving[host] = true
	v6 := s.cfg.IPv6()
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		addr, err := s.deps.Resolve(ctx, host, v6)
		cancel()
		s.send(s.ctx, resolved{host, addr, err})
	}()
}

func (s *Service) resolved(r resolved) {
	if !s.resolving[r.host] {
		return
	}
	if _, known := s.source[r.host]; !known {
		delete(s.resolving, r.host)
		return
	}
	if r.err != nil {
		wait := min(s.resolveWait[r.host]*2+time.Second, time.Minute)
		s.resolveWait[r.host] = wait
		s.log.Error("cannot resolve server; retrying", "host", r.host, "err", r.err, "retry_in", wait)
		s.coord.ResolveFailed(r.host, r.err)
		t := s.deps.Clock.NewTimer(wait)
		go func() {
			select {
			case <-t.C():
				s.send(s.ctx, retryResolve{r.host})
			case <-s.ctx.Done():
				t.Stop()
			}
		}()
		return
	}
	delete(s.resolving, r.host)
	delete(s.resolveWait, r.host)
	s.coord.Resolved(r.host, r.addr)
	s.serversChanged = true
	s.feedHealth()
}

func (s *Service) retryResolve(host string) {
	if !s.resolving[host] {
		return
	}
	delete(s.resolving, host)
	if _, known := s.source[host]; known {
		s.startResolve(host)
	}
}

// settle keeps monitor watches in line with the servers and publishes a new State
// when anything changed.
func (s *Service) settle() {
	snap := s.coord.SnapshotShared()
	if s.serversChanged {
		s.syncWatches(&snap)
		s.serversChanged = false
	}
	s.publishSnap(&snap)
}

func (s *Service) publish() {
	snap := s.coord.SnapshotShared()
	s.publishSnap(&snap)
}

func (s *Service) publishSnap(snap *pool.Snapshot) {
	synced := s.sourceSeen && s.applied.Loaded
	// Settled once, settled for good: a server added later and still resolving must
	// not unsettle the service (an active-active director would withdraw its VIP for
	// every added host name, and the kernel's removed destinations would linger).
	settled := synced
	for _, sv := range snap.Servers {
		if !s.settled && !sv.Ready && sv.Why == "resolving" {
			settled = false
			break
		}
	}
	s.settled = s.settled || settled
	old := s.state.Load()
	next := &State{
		Config:    s.cfg,
		Snapshot:  snap,
		Source:    s.source,
		Intent:    s.applied,
		Synced:    synced,
		Settled:   settled,
		SourceErr: s.srcErr,
		Problems:  s.problems,
		next:      make(chan struct{}),
	}
	if old != nil {
		if old.Config == next.Config && old.Synced == next.Synced && old.Settled == next.Settled &&
			old.Intent.Revision == next.Intent.Revision && errString(old.SourceErr) == errString(next.SourceErr) &&
			errString(old.Intent.Err) == errString(next.Intent.Err) && maps.Equal(old.Problems, next.Problems) &&
			pool.Unchanged(old.Snapshot, next.Snapshot) && sameSet(old.Source, next.Source) {
			return
		}
	}
	s.version++
	next.Version = s.version
	s.state.Store(next)
	if old != nil {
		close(old.next)
	}
	s.deps.Changed()
}

func sameSet(a, b source.Set) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	if reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() {
		return true // the same set: the actor replaces s.source, never modifies it
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// syncWatches starts monitors for ready servers and stops those of removed servers or
// of servers whose address changed. Disabled servers are monitored too (as PyBal).
func (s *Service) syncWatches(snap *pool.Snapshot) {
	if s.deps.Monitors == nil {
		return
	}
	seen := make(map[string]bool, len(snap.Servers))
	for _, sv := range snap.Servers {
		seen[sv.Host] = true
		w, ok := s.watches[sv.Host]
		if ok && w.addr == sv.Addr {
			continue
		}
		if ok {
			s.stopWatch(sv.Host)
		}
		if sv.Ready && sv.Addr.IsValid() {
			s.startWatch(sv.Host, sv.Addr)
		}
	}
	for host := range s.watches {
		if !seen[host] {
			s.stopWatch(host)
		}
	}
}

func (s *Service) startWatch(host string, addr netip.Addr) {
	w := &watch{addr: addr, raw: map[string]monitor.Result{}}
	t := monitor.Target{Service: s.name, Host: host, Addr: addr, Port: s.cfg.Port, Prompt: !s.cfg.PoolUnchecked}
	for _, name := range monitor.Watched(s.cfg) {
		stop, err := s.deps.Monitors.Watch(s.cfg, name, t, func(r monitor.Result) {
			s.send(s.ctx, monitorResult{host: host, monitor: name, w: w, r: r})
		})
		if err != nil {
			s.log.Error("cannot start monitor", "host", host, "monitor", name, "err", err)
			continue
		}
		w.stops = append(w.stops, stop)
	}
	s.watches[host] = w
}

func (s *Service) stopWatch(host string) {
	if w, ok := s.watches[host]; ok {
		for _, stop := range w.stops {
			stop()
		}
		delete(s.watches, host)
	}
}

func (s *Service) stopWatches() {
	for host := range s.watches {
		s.stopWatch(host)
	}
}

// Reconfigure applies a reloaded config of the same virtual service and source, and
// returns once it is in force (or ctx is done). A changed source or store needs a new
// Service instead.
func (s *Service) Reconfigure(ctx context.Context, cfg *config.Service) error {
	done := make(chan struct{})
	select {
	case s.in <- reconfigure{cfg, done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-s.stopped:
		return fmt.Errorf("service %s: reconfigure: %w", s.name, ErrStopped)
	case <-ctx.Done():
		return fmt.Errorf("service %s: reconfigure not confirmed: %w", s.name, ctx.Err())
	}
}

func (s *Service) reconfigure(cfg *config.Service) {
	old := s.cfg
	s.cfg = cfg
	if !reflect.DeepEqual(old.Monitors, cfg.Monitors) || !reflect.DeepEqual(monitorOptions(old), monitorOptions(cfg)) {
		s.stopWatches() // syncWatches restarts them with the new options
		s.serversChanged = true
	}
	s.coord.Reconfigure(cfg.DepoolThreshold, monitorsOf(cfg, s.deps.Health))
	s.coord.SetPoolUnchecked(cfg.PoolUnchecked)
	s.feedHealth()
}

func monitorOptions(svc *config.Service) map[string]string {
	out := map[string]string{}
	for _, m := range svc.Monitors {
		for k, v := range svc.Monitor(m).Keys() {
			out[m+"."+k] = v
		}
	}
	return out
}

// WaitAdmin returns the first published State whose admin intent includes revision
// rev, or ctx's error.
func (s *Service) WaitAdmin(ctx context.Context, rev int64) (*State, error) {
	for {
		st := s.State()
		if st.Intent.Revision >= rev {
			return st, nil
		}
		select {
		case <-st.Next():
		case <-s.stopped:
			return st, ErrStopped
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

// Store is the service's admin store.
func (s *Service) Store() admin.Store { return s.deps.Store }

// ConfirmRemoval applies a server-list update held back for removing too many servers
// at once (see source.Guard); false when none is held or the source has no guard.
func (s *Service) ConfirmRemoval() bool {
	c, ok := s.deps.Source.(interface{ Confirm() bool })
	return ok && c.Confirm()
}
