// Package daemon runs kubal's lifecycle: it builds the stages from the config (a
// service actor per service, with its source and admin store), hands the services'
// published states through plan to the reconcilers (IPVS, VIP addresses, BGP), serves
// the HTTP API, and diffs reloads. It holds no pooling logic of its own.
//
// Data walks (docs/DESIGN.md has them in full): a server-list change goes source ->
// service actor (admin intent applied, coordinator) -> State -> plan.Pool ->
// ipvs.Reconciler; an admin depool goes API -> admin store Apply (threshold check and
// durable write in one step) -> store watch -> service actor -> State (which the API
// waits for) -> plan.Pool -> ipvs.Reconciler.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/utils/clock"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/adminstate"
	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/bgp"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/conftool"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/plan"
	"github.com/kubal/kubal/service"
)

// Options configure a Daemon. Zero values mean production defaults.
type Options struct {
	ConfigPath string
	// DryRun (-n): IPVS operations and VIP addresses are printed, not applied, and no
	// BGP session is opened unless DryRunBGP.
	DryRun    bool
	DryRunBGP bool
	Debug     bool // -d
	Log       *slog.Logger
	// DryRunOutput receives the ipvsadm lines in dry-run mode (default: stdout).
	DryRunOutput io.Writer
	// IPVS and Addrs override the IPVS and VIP-address backends (tests).
	IPVS  ipvs.Backend
	Addrs ipvs.AddrBackend
	// Resolve overrides DNS resolution of server names (tests).
	Resolve service.Resolver
	// Clock is the one clock of the daemon's stages (tests inject a fake).
	Clock clock.WithTicker
	// Ready is called once the config is loaded and every source has delivered its
	// first server set, or ReadyTimeout passed (systemd READY=1).
	Ready        func()
	ReadyTimeout time.Duration // default 60 s, below the unit's TimeoutStartSec
}

// Daemon is a running kubal.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *daemonMetrics
	etcd    *conftool.Clients
	state   *admin.StateFile // the admin store of services without conftool
	// The HTTP listeners; the main loop replaces them on a reload that changes them.
	listeners *api.Listeners

	cfg      atomic.Pointer[config.Config] // static + declared services: what runs
	static   *config.Config                // pybal.conf as last loaded
	startCfg *config.Config                // restart-only settings come from it

	// Kubernetes-declared services ([k8s-services]): the controller's latest set.
	declared    atomic.Pointer[k8ssource.Desired]
	declaredCh  chan struct{}
	declaredRun *declaredRun // the running controller; owned by the main loop

	services *service.Group

	mu          sync.RWMutex // guards reloadErr, restartKeys, listeners, listenErr
	listenErr   error
	reloadErr   error
	restartKeys []string

	reloadCh chan chan error
	monitors *monitor.Manager
	ipvs     *ipvs.Reconciler
	addrs    *ipvs.Addresses
	speaker  *bgp.Speaker
	ctx      context.Context

	// Owned by the main loop.
	planner *plan.Planner
	ready   bool
	started time.Time

	lastLoop atomic.Int64 // unix nanos of the main loop's last turn (watchdog)
	detach   atomic.Bool  // stop for a planned restart: keep BGP routes (graceful restart)
}

// New loads and validates the config. A bad config returns every error
// (config.Diagnostics) and starts nothing.
func New(opts Options) (*Daemon, error) {
	opts.Log = cmp.Or(opts.Log, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	opts.DryRunOutput = cmp.Or(opts.DryRunOutput, io.Writer(os.Stdout))
	opts.Clock = cmp.Or(opts.Clock, clock.WithTicker(clock.RealClock{}))
	opts.ReadyTimeout = cmp.Or(opts.ReadyTimeout, 60*time.Second)
	if opts.Resolve == nil {
		opts.Resolve = service.LookupHost
	}
	// 100k unresolvable names must not mean 100k lookups at once.
	opts.Resolve = service.Bounded(opts.Resolve, 32)
	cfg, err := LoadConfig(opts.ConfigPath)
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings {
		opts.Log.Warn(w.String())
	}
	d := &Daemon{
		opts:     opts,
		log:      opts.Log,
		reg:      prometheus.NewRegistry(),
		startCfg: cfg, static: cfg, declaredCh: make(chan struct{}, 1),
		services: service.NewGroup(opts.Log),
		reloadCh: make(chan chan error),
		planner:  plan.NewPlanner(cfg),
	}
	d.cfg.Store(cfg)
	d.etcd = conftool.NewClients(d.log, d.reg)
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.metrics = newDaemonMetrics(d.reg)
	d.reg.MustRegister(api.NewServiceCollector(d))
	return d, nil
}

// Registry is the daemon's Prometheus registry (served on /metrics).
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Config returns the running config.
func (d *Daemon) Config() *config.Config { return d.cfg.Load() }

// Reload re-reads the config file; a bad file keeps the running config and returns why.
func (d *Daemon) Reload(ctx context.Context) error {
	ch := make(chan error, 1)
	select {
	case d.reloadCh <- ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// DetachOnStop makes the coming stop a planned restart: with bgp-graceful-restart the
// BGP sessions close without withdrawing, so routers keep forwarding to this host
// (IPVS stays programmed) until the restarted kubal re-announces.
func (d *Daemon) DetachOnStop() { d.detach.Store(true) }

// Alive reports whether the main loop turned recently (it turns at least every
// second); systemd's watchdog is only petted while it does.
func (d *Daemon) Alive() bool {
	return time.Since(time.Unix(0, d.lastLoop.Load())) < 10*time.Second
}

// Run runs the daemon until ctx is done, then withdraws BGP routes (so routers move to
// the backup LVS) and stops, leaving IPVS as it is.
func (d *Daemon) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer d.etcd.Close()
	d.ctx = runCtx
	d.started = d.opts.Clock.Now()
	cfg := d.Config()

	backend, addrs, err := ipvs.Open(d.dryRun(cfg), d.opts.Debug, d.opts.DryRunOutput, d.log)
	if d.opts.IPVS != nil { // tests
		backend, addrs, err = d.opts.IPVS, ipvs.NewAddressesWith(d.opts.Addrs, d.log), nil
	}
	if err != nil {
		return err
	}
	d.ipvs, d.addrs = ipvs.NewReconciler(backend, d.log.With("system", "ipvs"), d.reg), addrs
	d.ipvs.Clock, d.addrs.Clock = d.opts.Clock, d.opts.Clock
	d.monitors = monitor.NewManager(d.reg, d.log.With("system", "monitor"))
	defer d.monitors.Close()

	var wg sync.WaitGroup
	defer func() {
		cancel() // stop the reconcilers before waiting for them, also on an early return
		wg.Wait()
	}()
	wg.Go(func() { d.logStop("IPVS reconciler", d.ipvs.Run(runCtx), runCtx) })
	wg.Go(func() { d.logStop("VIP address reconciler", d.addrs.Run(runCtx), runCtx) })

	// Admin overrides apply from the first pool state: a depool survives restarts.
	f, err := adminstate.Open(cfg.Global.StateFile, d.log.With("system", "adminstate"))
	if err != nil {
		return fmt.Errorf("state-file: %w", err)
	}
	d.state = admin.NewStateFile(f)
	speakerCtx, stopSpeaker := context.WithCancel(context.Background())
	defer stopSpeaker()
	if cfg.Global.BGP && (!d.dryRun(cfg) || d.opts.DryRunBGP) {
		sp, err := bgp.New(cfg.Global, d.log.With("system", "bgp"), d.reg)
		if err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		d.speaker = sp
		wg.Go(func() { d.logStop("BGP speaker", sp.Run(speakerCtx), speakerCtx) })
	} else if cfg.Global.BGP {
		d.log.Warn("dry run: no BGP session is opened (would announce the VIPs); use --dryrun-bgp to open them")
	}

	ls, err := api.Listen(cfg.Global, d, d, d.reg, d.log)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.listeners = ls
	d.mu.Unlock()
	defer func() { d.listeners.Shutdown() }() // the main loop's: no lock needed

	ctl, err := d.newDeclared(cfg)
	if err != nil {
		return err
	}
	d.runDeclared(runCtx, ctl, cfg.K8sServices)
	d.applyServices(cfg)
	d.metrics.reloadSuccess.Set(1)
	d.metrics.reloadTime.SetToCurrentTime()

	tick := d.opts.Clock.NewTicker(time.Second)
	defer tick.Stop()
	for {
		d.lastLoop.Store(time.Now().UnixNano())
		select {
		case <-runCtx.Done():
			d.shutdown(stopSpeaker)
			return nil
		case ch := <-d.reloadCh:
			ch <- d.reload()
		case <-d.services.Changed():
			d.converge(false)
		case <-d.declaredCh: // Kubernetes-declared services changed
			cfg := d.declared.Load().With(d.static)
			d.cfg.Store(cfg)
			d.applyServices(cfg)
		case <-tick.C():
			d.checkReady()
		}
	}
}

func (d *Daemon) logStop(what string, err error, ctx context.Context) {
	if err != nil && ctx.Err() == nil {
		d.log.Error(what+" stopped", "err", err)
	}
}

func (d *Daemon) dryRun(cfg *config.Config) bool { return d.opts.DryRun || cfg.Global.DryRun }

func (d *Daemon) shutdown(stopSpeaker context.CancelFunc) {
	graceful := d.detach.Load() && d.Config().Global.BGPGracefulRestart
	if err := d.speaker.Stop(graceful, d.log); err != nil {
		d.log.Error("BGP shutdown", "system", "bgp", "err", err)
	}
	stopSpeaker()
	d.services.Stop()
}

// applyServices makes the running services match cfg (service.Group.Sync): a changed
// virtual service, source or admin store gets a new actor; the rest are reconfigured.
func (d *Daemon) applyServices(cfg *config.Config) {
	key := func(svc *config.Service) string { return plan.Key(svc).String() + "|" + d.sourceKey(svc, cfg.Global) }
	d.services.Sync(d.ctx, cfg.Services, key, func(svc *config.Service) (*service.Service, error) {
		src, store, err := d.build(cfg.Global, svc)
		if err != nil {
			return nil, err
		}
		defer d.services.MarkDirty(svc.Name)
		return service.New(svc, service.Deps{
			Source: src, Store: store, Monitors: d.monitors, Resolve: d.opts.Resolve, Clock: d.opts.Clock, Log: d.log,
			Health:  scheme(svc.ConfigURL) == "k8s",
			Changed: func() { d.services.MarkDirty(svc.Name) },
		}), nil
	})
	d.converge(true)
}

// converge hands the changed services' plans to the reconcilers; all (start, reload)
// replans everything. The cost of one change is that of its pool.
func (d *Daemon) converge(all bool) {
	cfg := d.Config()
	if all {
		d.planner.SetConfig(cfg)
	}
	announce := all
	for name := range d.services.TakeDirty() {
		s := d.service(name)
		if s == nil {
			continue
		}
		st := s.State()
		d.metrics.sourceHealthy.WithLabelValues(name).Set(boolGauge(st.SourceErr == nil && st.Intent.Err == nil))
		announce = d.planner.Update(name, plan.Service{Snapshot: st.Snapshot, Settled: st.Settled}) || announce
	}
	upd, rm, problems := d.planner.Changes() // services and forwarded-probe helpers
	for _, c := range problems {
		d.log.Error(c)
	}
	if all {
		want := d.planner.Desired()
		d.ipvs.Set(want.Pools)
		d.ipvs.SetSysctls(want.Sysctls)
		if cfg.Global.VIPAddresses { // off by default: PyBal hosts get their VIPs from Puppet
			d.addrs.Set(want.VIPs)
		}
	}
	for _, p := range upd {
		d.ipvs.Update(p) // after a Set: unchanged, costs nothing
	}
	for _, k := range rm {
		d.ipvs.Remove(k)
	}
	if d.speaker != nil && announce {
		d.speaker.Set(d.planner.Desired().Announcements)
	}
	d.checkReady()
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// checkReady tells systemd once every source synced, or after ReadyTimeout anyway:
// otherwise its start timeout would kill a kubal that is serving (IPVS adopted, BGP
// up) only because one source is down. /readyz and /alerts keep naming the source.
func (d *Daemon) checkReady() {
	if d.ready {
		return
	}
	err := d.Ready()
	switch {
	case err == nil:
		d.log.Info("all sources synced; ready", "services", len(d.Config().Services))
		d.ipvs.Sweep(plan.Leftover(d.Config())) // the plan is complete: what else matches is a leftover
	case d.opts.Clock.Since(d.started) > d.opts.ReadyTimeout:
		d.log.Warn("not every source has synced; reporting ready anyway", "waited", d.opts.ReadyTimeout, "why", err)
	default:
		return
	}
	d.ready = true
	if d.opts.Ready != nil {
		d.opts.Ready()
	}
}

// reload validates the file first; on error the running config stays.
func (d *Daemon) reload() error {
	start := time.Now()
	cfg, err := LoadConfig(d.opts.ConfigPath)
	if err == nil && d.Config().Global.BGP != cfg.Global.BGP {
		err = errors.New("[global] bgp changed: restart kubal to apply")
	}
	var nextDeclared *k8ssource.Services
	if err == nil && d.templateChanged(cfg) {
		// Built before anything changes: a template the controller refuses fails the
		// reload and the running one stays.
		nextDeclared, err = d.newDeclared(cfg)
	}
	if err != nil {
		d.mu.Lock()
		d.reloadErr = err
		d.mu.Unlock()
		d.metrics.reloadSuccess.Set(0)
		d.metrics.reloads.WithLabelValues("failure").Inc()
		d.log.Error("config reload failed; keeping the running config", "path", d.opts.ConfigPath, "err", err)
		return err
	}
	for _, w := range cfg.Warnings {
		d.log.Warn(w.String())
	}
	keys := config.RestartNeeded(d.startCfg, cfg)
	d.reloadDeclared(cfg, nextDeclared)
	if len(keys) > 0 {
		d.log.Warn("config reloaded, but these [global] settings only take effect after a restart", "keys", keys)
	}
	d.mu.Lock()
	d.reloadErr, d.restartKeys = nil, keys
	d.mu.Unlock()
	ls, err := d.listeners.Reload(d.Config().Global, cfg.Global, d, d, d.reg, d.log)
	d.mu.Lock()
	d.listeners, d.listenErr = ls, err
	d.mu.Unlock()
	d.static, cfg = cfg, d.declared.Load().With(cfg)
	d.cfg.Store(cfg)
	d.applyServices(cfg)
	d.metrics.reloadSuccess.Set(1)
	d.metrics.reloadTime.SetToCurrentTime()
	d.metrics.reloads.WithLabelValues("success").Inc()
	d.log.Info("config reloaded", "path", d.opts.ConfigPath, "services", len(cfg.Services), "took", time.Since(start))
	return nil
}
