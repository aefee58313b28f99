package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"sort"
	"sync/atomic"
	"time"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/source"
)

// service is one configured pool: an actor goroutine that owns the coordinator, the
// source subscription, address resolution and the monitor watches. Everything that
// changes its state arrives as a closure on events and runs on that goroutine, so the
// core needs no locks; readers use the published snapshot.
type service struct {
	name   string
	log    *slog.Logger
	deps   serviceDeps
	events chan func()

	// Owned by the actor goroutine.
	cfg         *config.Service
	coord       *pool.Coordinator
	sourceSet   source.Set
	overrides   map[string]override
	watches     map[string]*serverWatch // host -> monitors running against addr
	resolving   map[string]bool
	resolveWait map[string]time.Duration
	cancelSrc   context.CancelFunc
	srcGen      int
	started     time.Time

	// Published for readers on other goroutines.
	snap      atomic.Pointer[pool.Snapshot]
	status    atomic.Pointer[serviceStatus]
	monitored atomic.Bool // every ready server has a result from every monitor
}

// serviceStatus is what the daemon reports about a service besides its pool.
type serviceStatus struct {
	Synced    bool              // the source delivered a first server set
	SourceErr error             // the source's current failure, nil when healthy
	Problems  map[string]string // per-server data problems (host -> why), e.g. a malformed value
}

// override is an admin decision from the local state file (services without conftool).
type override struct {
	Enabled *bool
	Weight  *int
	Reason  string
}

type serverWatch struct {
	addr  netip.Addr
	stops []func()
}

// serviceDeps are the shared components a service uses.
type serviceDeps struct {
	ctx       context.Context
	monitors  watcher
	newSource func(svc *config.Service) (source.Source, error)
	resolve   func(ctx context.Context, host string, v6 bool) (netip.Addr, error)
	changed   func() // tells the daemon that a snapshot changed
	now       func() time.Time
}

// watcher starts monitors; monitor.Manager implements it.
type watcher interface {
	Watch(svc *config.Service, name string, t monitor.Target, report func(monitor.Result)) (stop func(), err error)
}

func newService(cfg *config.Service, overrides map[string]override, deps serviceDeps, log *slog.Logger) *service {
	s := &service{
		name:        cfg.Name,
		log:         log.With("system", cfg.Name),
		deps:        deps,
		events:      make(chan func(), 1024),
		cfg:         cfg,
		coord:       pool.New(cfg.Name, cfg.DepoolThreshold, cfg.Monitors, log.With("system", cfg.Name)),
		overrides:   overrides,
		watches:     map[string]*serverWatch{},
		resolving:   map[string]bool{},
		resolveWait: map[string]time.Duration{},
		started:     deps.now(),
	}
	s.status.Store(&serviceStatus{})
	s.publish()
	return s
}

// send queues fn to run on the actor goroutine; it gives up when the daemon stops.
func (s *service) send(fn func()) {
	select {
	case s.events <- fn:
	case <-s.deps.ctx.Done():
	}
}

// call runs fn on the actor goroutine and waits for it.
func (s *service) call(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	select {
	case s.events <- func() { fn(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is the actor loop. It returns when ctx is done or stop is closed.
func (s *service) run(stop <-chan struct{}) {
	s.startSource()
	defer s.shutdown()
	for {
		select {
		case <-s.deps.ctx.Done():
			return
		case <-stop:
			return
		case fn := <-s.events:
			fn()
			// Apply whatever else is queued before one snapshot: a snapshot costs ~1 µs
			// per server, so bursts of monitor results are settled together.
			for i := 0; i < 256; i++ {
				select {
				case fn := <-s.events:
					fn()
					continue
				default:
				}
				break
			}
			s.settle()
		}
	}
}

func (s *service) shutdown() {
	if s.cancelSrc != nil {
		s.cancelSrc()
	}
	for host := range s.watches {
		s.stopWatch(host)
	}
}

// startSource (re)starts the server-list source of the current config.
func (s *service) startSource() {
	if s.cancelSrc != nil {
		s.cancelSrc()
	}
	s.srcGen++
	gen := s.srcGen
	src, err := s.deps.newSource(s.cfg)
	if err != nil {
		s.log.Error("cannot start server-list source", "config", s.cfg.ConfigURL, "err", err)
		s.setStatus(func(st *serviceStatus) { st.SourceErr = err })
		return
	}
	ctx, cancel := context.WithCancel(s.deps.ctx)
	s.cancelSrc = cancel
	go func() {
		if err := src.Run(ctx, &sourceEvents{s: s, gen: gen}); err != nil && ctx.Err() == nil {
			s.log.Error("server-list source stopped", "err", err)
		}
	}()
}

// sourceEvents forwards a source's events to the actor, dropping those of a source
// that was replaced by a reload.
type sourceEvents struct {
	s   *service
	gen int
}

func (e *sourceEvents) Update(set source.Set) {
	e.s.send(func() {
		if e.gen != e.s.srcGen {
			return
		}
		e.s.sourceSet = set
		e.s.setStatus(func(st *serviceStatus) { st.Synced = true })
		e.s.applyConfig()
	})
}

func (e *sourceEvents) Failed(err error) {
	e.s.send(func() {
		if e.gen != e.s.srcGen {
			return
		}
		if err != nil {
			e.s.log.Warn("server-list source failing; keeping the last known servers", "err", err)
		}
		e.s.setStatus(func(st *serviceStatus) { st.SourceErr = err })
	})
}

// Problems implements source.ProblemReporter.
func (e *sourceEvents) Problems(p map[string]string) {
	e.s.send(func() {
		if e.gen != e.s.srcGen {
			return
		}
		e.s.setStatus(func(st *serviceStatus) { st.Problems = p })
	})
}

func (s *service) setStatus(f func(*serviceStatus)) {
	st := *s.status.Load()
	f(&st)
	s.status.Store(&st)
	s.deps.changed()
}

// effective merges the source's servers with the admin overrides.
func (s *service) effective() []pool.ServerConfig {
	out := make([]pool.ServerConfig, 0, len(s.sourceSet))
	for _, sv := range s.sourceSet {
		sc := pool.ServerConfig{Host: sv.Host, Addr: sv.Addr, Weight: sv.Weight, Enabled: sv.Enabled, Reason: sv.Reason}
		if o, ok := s.overrides[sv.Host]; ok {
			if o.Enabled != nil {
				sc.Enabled = *o.Enabled
				if !sc.Enabled {
					sc.Reason = "depooled by admin"
					if o.Reason != "" {
						sc.Reason += ": " + o.Reason
					}
				}
			}
			if o.Weight != nil {
				sc.Weight = *o.Weight
			}
		}
		if sc.Addr.IsValid() && s.resolving[sv.Host] {
			delete(s.resolving, sv.Host)
		}
		out = append(out, sc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

// applyConfig feeds the effective server set to the coordinator and starts address
// resolution for servers that need it.
func (s *service) applyConfig() {
	servers := s.effective()
	s.coord.Update(servers)
	snap := s.coord.Snapshot()
	for _, sv := range snap.Servers {
		if !sv.Ready && !s.resolving[sv.Host] {
			s.startResolve(sv.Host)
		}
	}
}

// startResolve looks a hostname up, retrying with backoff on failure (PyBal resolved
// once and never retried: SPEC §14 #10).
func (s *service) startResolve(host string) {
	s.resolving[host] = true
	v6 := s.cfg.IPv6()
	go func() {
		ctx, cancel := context.WithTimeout(s.deps.ctx, 10*time.Second)
		addr, err := s.deps.resolve(ctx, host, v6)
		cancel()
		s.send(func() {
			if !s.resolving[host] {
				return
			}
			if _, known := s.sourceSet[host]; !known {
				delete(s.resolving, host)
				return
			}
			if err != nil {
				wait := s.resolveWait[host]*2 + time.Second
				if wait > time.Minute {
					wait = time.Minute
				}
				s.resolveWait[host] = wait
				s.log.Error("cannot resolve server; retrying", "host", host, "err", err, "retry_in", wait)
				s.coord.ResolveFailed(host, err)
				time.AfterFunc(wait, func() {
					s.send(func() {
						if s.resolving[host] {
							delete(s.resolving, host)
							if _, known := s.sourceSet[host]; known {
								s.startResolve(host)
							}
						}
					})
				})
				return
			}
			delete(s.resolving, host)
			delete(s.resolveWait, host)
			s.coord.Resolved(host, addr)
		})
	}()
}

// settle runs after every event: keeps monitor watches in line with the servers,
// publishes the snapshot and tells the daemon.
func (s *service) settle() {
	snap := s.coord.Snapshot()
	s.syncWatches(&snap)
	s.publishSnap(&snap)
}

func (s *service) publish() {
	snap := s.coord.Snapshot()
	s.publishSnap(&snap)
}

func (s *service) publishSnap(snap *pool.Snapshot) {
	old := s.snap.Load()
	s.snap.Store(snap)
	complete := true
	for _, sv := range snap.Servers {
		if sv.Ready && len(sv.Monitors) < len(s.cfg.Monitors) {
			complete = false
			break
		}
	}
	s.monitored.Store(complete && s.status.Load().Synced)
	if old == nil || !reflect.DeepEqual(old, snap) {
		s.deps.changed()
	}
}

// syncWatches starts monitors for ready servers and stops those of removed servers or
// of servers whose address changed. Disabled servers are monitored too (as PyBal).
func (s *service) syncWatches(snap *pool.Snapshot) {
	if s.deps.monitors == nil {
		return
	}
	seen := map[string]bool{}
	for _, sv := range snap.Servers {
		seen[sv.Host] = true
		w, ok := s.watches[sv.Host]
		if ok && w.addr == sv.Addr {
			continue
		}
		if ok {
			s.stopWatch(sv.Host)
		}
		if !sv.Ready || !sv.Addr.IsValid() {
			continue
		}
		s.startWatch(sv.Host, sv.Addr)
	}
	for host := range s.watches {
		if !seen[host] {
			s.stopWatch(host)
		}
	}
}

func (s *service) startWatch(host string, addr netip.Addr) {
	w := &serverWatch{addr: addr}
	t := monitor.Target{Service: s.name, Host: host, Addr: addr, Port: s.cfg.Port}
	for _, name := range s.cfg.Monitors {
		name := name
		stop, err := s.deps.monitors.Watch(s.cfg, name, t, func(r monitor.Result) {
			s.send(func() {
				if cur, ok := s.watches[host]; !ok || cur != w {
					return // a result from a watch that was replaced
				}
				s.coord.Result(host, name, pool.MonitorResult{Up: r.Up, Reason: r.Reason})
			})
		})
		if err != nil {
			s.log.Error("cannot start monitor", "host", host, "monitor", name, "err", err)
			continue
		}
		w.stops = append(w.stops, stop)
	}
	s.watches[host] = w
}

func (s *service) stopWatch(host string) {
	if w, ok := s.watches[host]; ok {
		for _, stop := range w.stops {
			stop()
		}
		delete(s.watches, host)
	}
}

// reconfigure applies a reloaded config for the same virtual service.
func (s *service) reconfigure(cfg *config.Service) {
	old := s.cfg
	s.cfg = cfg
	if !reflect.DeepEqual(old.Monitors, cfg.Monitors) || !reflect.DeepEqual(monitorOptions(old), monitorOptions(cfg)) {
		for host := range s.watches {
			s.stopWatch(host) // syncWatches restarts them with the new options
		}
	}
	s.coord.Reconfigure(cfg.DepoolThreshold, cfg.Monitors)
	if old.ConfigURL != cfg.ConfigURL || old.Conftool != cfg.Conftool {
		s.log.Info("server-list source changed", "from", old.ConfigURL, "to", cfg.ConfigURL)
		s.sourceSet = nil
		s.setStatus(func(st *serviceStatus) { st.Synced = false; st.SourceErr = nil })
		s.startSource()
		// Keep the current servers until the new source delivers: a reload never empties a pool.
	}
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

// setOverrides replaces the admin overrides and re-applies the server set.
func (s *service) setOverrides(o map[string]override) {
	s.overrides = o
	if s.sourceSet != nil {
		s.applyConfig()
	}
}

// lookupHost resolves host to one address of the VIP's family, preferring the first
// answer (PyBal picked at random; a stable choice avoids needless IPVS churn).
func lookupHost(ctx context.Context, host string, v6 bool) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		if is6 := a.Is6() && !a.Is4In6(); is6 != v6 {
			return netip.Addr{}, fmt.Errorf("%s is not of the VIP's address family", host)
		}
		return a, nil
	}
	network := "ip4"
	if v6 {
		network = "ip6"
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("no %s address for %s", network, host)
	}
	return addrs[0].Unmap(), nil
}
