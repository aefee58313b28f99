// Package daemon wires kubal together: it builds the sources, monitors, coordinators
// (one actor goroutine per service) and the reconcilers (IPVS, VIP addresses, BGP)
// from a Config, serves the HTTP API, and reloads the config on request.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/adminstate"
	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/bgp"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/conftool"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/source"
)

// Options configure a Daemon. Zero values mean production defaults.
type Options struct {
	ConfigPath string
	DryRun     bool // -n: IPVS operations are printed as ipvsadm lines, not applied
	Debug      bool // -d
	Log        *slog.Logger
	// DryRunOutput receives the ipvsadm lines in dry-run mode (default: stdout).
	DryRunOutput io.Writer
	// IPVS and Addrs override the IPVS and VIP-address backends (tests).
	IPVS  ipvs.Backend
	Addrs ipvs.AddrBackend
	// Resolve overrides DNS resolution of server names (tests).
	Resolve func(ctx context.Context, host string, v6 bool) (netip.Addr, error)
	// Ready is called once the config is loaded and every source has delivered its
	// first server set, or ReadyTimeout passed (systemd READY=1).
	Ready        func()
	ReadyTimeout time.Duration // default 60 s, below the unit's TimeoutStartSec
}

// Daemon is a running kubal.
type Daemon struct {
	opts Options
	log  *slog.Logger
	reg  *prometheus.Registry

	mu       sync.Mutex // guards cfg, services, order, reloadErr
	cfg      *config.Config
	services map[string]*runningService
	order    []string

	reloadErr   error
	startCfg    *config.Config // the config of the start: restart-only settings come from it
	restartKeys []string       // restart-only [global] settings changed by reloads since
	reloadCh    chan chan error
	changed     chan struct{}
	metrics     *daemonMetrics
	monitors    *monitor.Manager
	reconciler  *ipvs.Reconciler
	addresses   *ipvs.Addresses
	speaker     *bgp.Speaker
	ready       bool
	startedAt   time.Time
	ctx         context.Context
	servicesWG  sync.WaitGroup
	lastLoop    atomic.Int64 // unix nanos of the main loop's last turn (watchdog)
	detach      atomic.Bool  // stop for a planned restart: keep BGP routes (graceful restart)

	extMu     sync.Mutex // guards the shared external clients and stores below
	etcd      map[string]*clientv3.Client
	writers   map[*clientv3.Client]*conftool.Writer
	ctMetrics *conftool.Metrics
	state     *adminstate.File
}

type runningService struct {
	*service
	key  string // config.Service.Key() at start: a change means a different virtual service
	stop chan struct{}
	done chan struct{}
}

// New loads and validates the config. A bad config returns every error
// (config.Diagnostics) and starts nothing.
func New(opts Options) (*Daemon, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if opts.DryRunOutput == nil {
		opts.DryRunOutput = os.Stdout
	}
	if opts.Resolve == nil {
		opts.Resolve = lookupHost
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
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
		cfg:      cfg,
		startCfg: cfg,
		services: map[string]*runningService{},
		reloadCh: make(chan chan error),
		changed:  make(chan struct{}, 1),
		etcd:     map[string]*clientv3.Client{},
		writers:  map[*clientv3.Client]*conftool.Writer{},
	}
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.metrics = newDaemonMetrics(d.reg)
	d.reg.MustRegister(api.NewServiceCollector(d))
	return d, nil
}

// LoadConfig parses and validates a config file, including every monitor's options.
func LoadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	var diags config.Diagnostics
	for _, svc := range cfg.Services {
		diags = append(diags, monitor.Validate(svc)...)
	}
	if len(diags) > 0 {
		return nil, diags
	}
	return cfg, nil
}

// Registry is the daemon's Prometheus registry (served on /metrics).
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Config returns the running config.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

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

// Run runs the daemon until ctx is done, then withdraws BGP routes (so routers move to
// the backup LVS) and stops, leaving IPVS as it is.
func (d *Daemon) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer d.closeExternal()
	d.ctx = runCtx
	d.startedAt = time.Now()

	backend, err := d.ipvsBackend()
	if err != nil {
		return err
	}
	d.reconciler = ipvs.NewReconciler(backend, d.log.With("system", "ipvs"), d.reg)
	if d.addresses, err = d.addressBackend(); err != nil {
		return err
	}
	d.monitors = monitor.NewManager(d.reg, d.log.With("system", "monitor"))
	defer d.monitors.Close()

	var wg sync.WaitGroup
	defer func() {
		cancel() // stop the reconcilers before waiting for them, also on an early error return
		wg.Wait()
	}()
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := d.reconciler.Run(runCtx); err != nil && runCtx.Err() == nil {
			d.log.Error("IPVS reconciler stopped", "system", "ipvs", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := d.addresses.Run(runCtx); err != nil && runCtx.Err() == nil {
			d.log.Error("VIP address reconciler stopped", "system", "ipvs", "err", err)
		}
	}()

	cfg := d.Config()
	// Admin overrides must apply from the first pool state: a depool survives restarts.
	if err := d.openState(cfg.Global); err != nil {
		return err
	}
	speakerCtx, stopSpeaker := context.WithCancel(context.Background())
	defer stopSpeaker()
	if cfg.Global.BGP {
		sp, err := bgp.New(cfg.Global, d.log.With("system", "bgp"), d.reg)
		if err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		d.speaker = sp
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sp.Run(speakerCtx); err != nil && speakerCtx.Err() == nil {
				d.log.Error("BGP speaker stopped", "system", "bgp", "err", err)
			}
		}()
	}

	srvs, err := d.startHTTP(cfg)
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range srvs {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			_ = s.Shutdown(sctx)
			c()
		}
	}()

	d.mu.Lock()
	d.applyServices(cfg)
	d.mu.Unlock()
	d.metrics.reloadSuccess.Set(1)
	d.metrics.reloadTime.SetToCurrentTime()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		d.lastLoop.Store(time.Now().UnixNano())
		select {
		case <-runCtx.Done():
			d.shutdown(stopSpeaker)
			return nil
		case ch := <-d.reloadCh:
			ch <- d.reload()
		case <-d.changed:
			d.converge()
		case <-tick.C:
			// Periodic: readiness, hitless-restart grace expiry, status gauges.
			d.converge()
		}
	}
}

// DetachOnStop makes the coming stop a planned restart: with bgp-graceful-restart the
// BGP sessions close without withdrawing, so routers keep forwarding to this host
// (IPVS stays programmed) until the restarted kubal re-announces. Without the key a
// stop always withdraws.
func (d *Daemon) DetachOnStop() { d.detach.Store(true) }

func (d *Daemon) shutdown(stopSpeaker context.CancelFunc) {
	if d.speaker != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var err error
		if d.detach.Load() && d.Config().Global.BGPGracefulRestart {
			d.log.Info("planned restart: closing BGP sessions gracefully (routes kept by the routers), leaving IPVS in place")
			err = d.speaker.Detach(ctx)
		} else {
			d.log.Info("shutting down: withdrawing BGP routes, leaving IPVS in place")
			err = d.speaker.Shutdown(ctx)
		}
		if err != nil {
			d.log.Error("BGP shutdown", "system", "bgp", "err", err)
		}
		cancel()
	} else {
		d.log.Info("shutting down, leaving IPVS in place")
	}
	stopSpeaker()
	d.mu.Lock()
	for _, rs := range d.services {
		close(rs.stop)
	}
	d.mu.Unlock()
	d.servicesWG.Wait()
}

func (d *Daemon) ipvsBackend() (ipvs.Backend, error) {
	if d.opts.IPVS != nil {
		return d.opts.IPVS, nil
	}
	if d.opts.DryRun || d.Config().Global.DryRun {
		return ipvs.NewDryRun(d.opts.DryRunOutput), nil
	}
	nl, err := ipvs.NewNetlink("")
	if err != nil {
		return nil, fmt.Errorf("IPVS: %w (use -n/--dryrun on a host without IPVS)", err)
	}
	if d.opts.Debug {
		// PyBal's -d printed every ipvsadm line; this also turns off netlink batching,
		// which is fine for debugging.
		return debugBackend{Backend: nl, log: d.log.With("system", "ipvs")}, nil
	}
	return nl, nil
}

func (d *Daemon) addressBackend() (*ipvs.Addresses, error) {
	log := d.log.With("system", "vip")
	switch {
	case d.opts.Addrs != nil:
		return ipvs.NewAddressesWith(d.opts.Addrs, log), nil
	case d.opts.DryRun || d.Config().Global.DryRun:
		return ipvs.NewAddressesWith(ipvs.NewDryRunAddrs(d.opts.DryRunOutput), log), nil
	}
	a, err := ipvs.NewAddresses("", log)
	if err != nil {
		return nil, fmt.Errorf("VIP addresses: %w", err)
	}
	return a, nil
}

// notify marks the desired state dirty; the main loop converges it.
func (d *Daemon) notify() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// applyServices starts, reconfigures or stops services to match cfg. d.mu is held.
func (d *Daemon) applyServices(cfg *config.Config) {
	want := map[string]*config.Service{}
	for _, svc := range cfg.Services {
		want[svc.Name] = svc
	}
	for name, rs := range d.services {
		svc, ok := want[name]
		if ok && svc.Key() == rs.key {
			continue
		}
		d.log.Info("stopping service", "system", name)
		close(rs.stop)
		<-rs.done
		delete(d.services, name)
	}
	d.order = d.order[:0]
	for _, svc := range cfg.Services {
		d.order = append(d.order, svc.Name)
		if rs, ok := d.services[svc.Name]; ok {
			svc := svc
			// Synchronous, so a reload is in force when Reload returns.
			if err := rs.call(d.ctx, func() { rs.reconfigure(svc) }); err != nil {
				d.log.Error("reconfigure", "system", svc.Name, "err", err)
			}
			continue
		}
		d.startService(svc)
	}
}

func (d *Daemon) startService(svc *config.Service) {
	deps := serviceDeps{
		ctx:       d.ctx,
		monitors:  d.monitors,
		newSource: d.newSource,
		resolve:   d.opts.Resolve,
		changed:   d.notify,
		now:       time.Now,
	}
	s := newService(svc, d.localOverrides(svc.Name), deps, d.log)
	rs := &runningService{service: s, key: svc.Key(), stop: make(chan struct{}), done: make(chan struct{})}
	d.services[svc.Name] = rs
	d.servicesWG.Add(1)
	go func() {
		defer d.servicesWG.Done()
		defer close(rs.done)
		s.run(rs.stop)
	}()
}

// newSource builds the server-list source for a service's config URL.
func (d *Daemon) newSource(svc *config.Service) (source.Source, error) {
	log := d.log.With("system", "config-"+scheme(svc.ConfigURL), "pool", svc.Name)
	switch scheme(svc.ConfigURL) {
	case "file", "http", "https":
		return source.New(svc.ConfigURL, log)
	}
	return d.newExternalSource(svc, log)
}

func scheme(u string) string {
	if i := strings.Index(u, "://"); i > 0 {
		return u[:i]
	}
	return ""
}

// reload validates the file first; on error the running config stays.
func (d *Daemon) reload() error {
	start := time.Now()
	cfg, err := LoadConfig(d.opts.ConfigPath)
	if err == nil {
		err = compatibleReload(d.Config(), cfg)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.reloadErr = err
		d.metrics.reloadSuccess.Set(0)
		d.metrics.reloads.WithLabelValues("failure").Inc()
		d.log.Error("config reload failed; keeping the running config", "path", d.opts.ConfigPath, "err", err)
		return err
	}
	for _, w := range cfg.Warnings {
		d.log.Warn(w.String())
	}
	d.reloadErr = nil
	d.restartKeys = restartNeeded(d.startCfg, cfg)
	if len(d.restartKeys) > 0 {
		d.log.Warn("config reloaded, but these [global] settings only take effect after a restart", "keys", strings.Join(d.restartKeys, ", "))
	}
	d.cfg = cfg
	d.applyServices(cfg)
	d.metrics.reloadSuccess.Set(1)
	d.metrics.reloadTime.SetToCurrentTime()
	d.metrics.reloads.WithLabelValues("success").Inc()
	d.log.Info("config reloaded", "path", d.opts.ConfigPath, "services", len(cfg.Services), "took", time.Since(start))
	d.notify()
	return nil
}

// compatibleReload rejects changes a reload cannot apply safely.
func compatibleReload(old, cfg *config.Config) error {
	if old.Global.BGP != cfg.Global.BGP {
		return errors.New("[global] bgp changed: restart kubal to apply")
	}
	return nil
}

// restartOnlyKeys are the [global] settings read once at start (listeners, the BGP
// sessions, the state file). A reload applies everything else - services, sources,
// monitors, thresholds and the announcements' attributes - and reports these as
// needing a restart instead of ignoring them silently.
var restartOnlyKeys = []struct {
	key  string
	same func(a, b *config.Global) bool
}{
	{"bgp-local-asn", func(a, b *config.Global) bool { return a.BGPLocalASN == b.BGPLocalASN }},
	{"bgp-peer-address", func(a, b *config.Global) bool { return slices.Equal(a.BGPPeerAddresses, b.BGPPeerAddresses) }},
	{"bgp-local-ips", func(a, b *config.Global) bool { return slices.Equal(a.BGPLocalIPs, b.BGPLocalIPs) }},
	{"bgp-local-port", func(a, b *config.Global) bool { return a.BGPLocalPort == b.BGPLocalPort }},
	{"bgp-hold-time", func(a, b *config.Global) bool { return a.BGPHoldTime == b.BGPHoldTime }},
	{"bgp-bfd", func(a, b *config.Global) bool {
		return a.BGPBFD == b.BGPBFD && a.BGPBFDMinRx == b.BGPBFDMinRx && a.BGPBFDMinTx == b.BGPBFDMinTx && a.BGPBFDMultiplier == b.BGPBFDMultiplier
	}},
	{"bgp-graceful-restart", func(a, b *config.Global) bool { return a.BGPGracefulRestart == b.BGPGracefulRestart }},
	{"instrumentation", func(a, b *config.Global) bool {
		return a.Instrumentation == b.Instrumentation && a.InstrumentationPort == b.InstrumentationPort && slices.Equal(a.InstrumentationIPs, b.InstrumentationIPs)
	}},
	{"admin", func(a, b *config.Global) bool {
		return a.AdminPort == b.AdminPort && slices.Equal(a.AdminIPs, b.AdminIPs) && a.AdminTokenFile == b.AdminTokenFile &&
			a.AdminTLSCert == b.AdminTLSCert && a.AdminTLSKey == b.AdminTLSKey && a.AdminClientCA == b.AdminClientCA
	}},
	{"state-file", func(a, b *config.Global) bool { return a.StateFile == b.StateFile }},
}

// restartNeeded lists the restart-only [global] settings that differ between the
// config kubal started with and cfg.
func restartNeeded(started, cfg *config.Config) []string {
	var out []string
	for _, k := range restartOnlyKeys {
		if !k.same(&started.Global, &cfg.Global) {
			out = append(out, k.key)
		}
	}
	return out
}

// converge pushes the services' current state to IPVS and BGP and updates readiness.
func (d *Daemon) converge() {
	d.mu.Lock()
	cfg := d.cfg
	type svcState struct {
		cfg  *config.Service
		snap *pool.Snapshot
		st   *serviceStatus
		done bool
	}
	states := make([]svcState, 0, len(d.order))
	for _, name := range d.order {
		rs, ok := d.services[name]
		if !ok {
			continue
		}
		svc, _ := cfg.Service(name)
		states = append(states, svcState{svc, rs.snap.Load(), rs.status.Load(), rs.monitored.Load()})
	}
	d.mu.Unlock()

	grace := time.Since(d.startedAt) < hitlessGrace
	pools := make([]ipvs.Pool, 0, len(states))
	var vips []ipvs.VIP
	seenVIP := map[ipvs.VIP]bool{}
	pooled := map[string]int{}
	allSynced := true
	for _, s := range states {
		p := ipvs.Pool{
			Service: ipvs.Service{
				ServiceKey: ipvs.ServiceKey{Protocol: ipvs.Protocol(s.cfg.Protocol), Addr: s.cfg.IP, Port: s.cfg.Port},
				Scheduler:  s.cfg.Scheduler,
				Flags:      s.cfg.SchedulerFlags,
				OPS:        s.cfg.OPS,
			},
			Drain:        s.cfg.DepoolMode == config.DepoolDrain,
			DrainTimeout: s.cfg.DrainTimeout,
			// Hitless restart: keep what the kernel has until the source synced and the
			// monitors have spoken (or the grace period ran out).
			KeepExtra: grace && !s.done,
		}
		for _, sv := range s.snap.Servers {
			if !sv.Pooled || !sv.Addr.IsValid() {
				continue
			}
			pooled[s.cfg.Name]++
			p.Destinations = append(p.Destinations, ipvs.Destination{
				Addr: sv.Addr, Weight: sv.Weight, Forwarding: ipvs.Forwarding(s.cfg.Forwarding),
			})
		}
		pools = append(pools, p)
		if v := (ipvs.VIP{Addr: s.cfg.IP, Interface: s.cfg.VIPInterface}); !seenVIP[v] {
			seenVIP[v] = true
			vips = append(vips, v)
		}
		if !s.st.Synced {
			allSynced = false
		}
		healthy := 1.0
		if s.st.SourceErr != nil {
			healthy = 0
		}
		d.metrics.sourceHealthy.WithLabelValues(s.cfg.Name).Set(healthy)
	}
	d.reconciler.Set(pools)
	d.addresses.Set(vips)
	if d.speaker != nil {
		d.speaker.Set(bgp.Desired(cfg, pooled))
	}
	if d.ready {
		return
	}
	switch {
	case allSynced:
		d.log.Info("all sources synced; ready", "services", len(states))
	case time.Since(d.startedAt) > d.opts.ReadyTimeout:
		// Tell systemd anyway: otherwise its start timeout would kill a kubal that is
		// serving (IPVS adopted, BGP up) only because one source is down, and the
		// restart would withdraw the routes. /readyz and /alerts keep saying which
		// source has not synced.
		d.log.Warn("not every source has synced; reporting ready anyway", "waited", d.opts.ReadyTimeout, "why", d.Ready())
	default:
		return
	}
	d.ready = true
	if d.opts.Ready != nil {
		d.opts.Ready()
	}
}

// Alive reports whether the main loop turned recently (it turns at least every
// second); systemd's watchdog is only petted while it does.
func (d *Daemon) Alive() bool {
	return time.Since(time.Unix(0, d.lastLoop.Load())) < 10*time.Second
}

// hitlessGrace bounds how long a restarted kubal keeps kernel destinations it has no
// verdict on yet.
const hitlessGrace = 60 * time.Second

// ---- api.State ----

// Pools implements api.State.
func (d *Daemon) Pools() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.order...)
}

// Snapshot implements api.State.
func (d *Daemon) Snapshot(name string) (pool.Snapshot, bool) {
	d.mu.Lock()
	rs, ok := d.services[name]
	d.mu.Unlock()
	if !ok {
		return pool.Snapshot{}, false
	}
	return *rs.snap.Load(), true
}

// Alerts implements api.State: kubal's own alerts beyond PyBal's pool alerts.
func (d *Daemon) Alerts() []api.Alert {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []api.Alert
	if d.reloadErr != nil {
		out = append(out, api.Alert{Level: "warning", Msg: "config reload failed, running the previous config: " + firstLine(d.reloadErr.Error())})
	}
	if len(d.restartKeys) > 0 {
		out = append(out, api.Alert{Level: "warning", Msg: "restart kubal to apply changed [global] settings: " + strings.Join(d.restartKeys, ", ")})
	}
	for _, name := range d.order {
		rs := d.services[name]
		if rs == nil {
			continue
		}
		st := rs.status.Load()
		if st.SourceErr != nil {
			out = append(out, api.Alert{Level: "warning", Msg: fmt.Sprintf("%s: server-list source failing, keeping last known servers: %s", name, firstLine(st.SourceErr.Error()))})
		}
		hosts := make([]string, 0, len(st.Problems))
		for h := range st.Problems {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		for _, h := range hosts {
			out = append(out, api.Alert{Level: "warning", Msg: fmt.Sprintf("%s: %s keeps its previous state: %s", name, h, firstLine(st.Problems[h]))})
		}
	}
	return out
}

// Ready implements api.State.
func (d *Daemon) Ready() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var waiting []string
	for _, name := range d.order {
		if rs := d.services[name]; rs != nil && !rs.status.Load().Synced {
			waiting = append(waiting, name)
		}
	}
	if len(waiting) > 0 {
		sort.Strings(waiting)
		return fmt.Errorf("waiting for the first server list of: %s", strings.Join(waiting, ", "))
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (and more)"
	}
	return s
}

// ---- HTTP listeners ----

func (d *Daemon) startHTTP(cfg *config.Config) (servers []*http.Server, err error) {
	defer func() {
		if err != nil { // do not leak the listeners already started
			for _, s := range servers {
				_ = s.Close()
			}
		}
	}()
	g := cfg.Global
	if g.Instrumentation {
		h := api.NewInstrumentation(d, d.reg, d.log.With("system", "instrumentation"))
		ss, err := d.listenAll(g.InstrumentationIPs, g.InstrumentationPort, h, nil)
		servers = append(servers, ss...)
		if err != nil {
			return servers, fmt.Errorf("instrumentation: %w", err)
		}
	}
	admin, tlsOn, err := d.adminHandler(g)
	if err != nil {
		return servers, err
	}
	if admin != nil {
		ss, err := d.listenAll(g.AdminIPs, g.AdminPort, admin, tlsOn)
		servers = append(servers, ss...)
		if err != nil {
			return servers, fmt.Errorf("admin: %w", err)
		}
	}
	return servers, nil
}

// listenAll listens on port at every address. An address the host does not have
// (e.g. ::1 of the default list on a host without IPv6) is skipped with a warning;
// any other error, or no listener at all, fails.
func (d *Daemon) listenAll(ips []string, port int, h http.Handler, tlsOn *tlsFiles) ([]*http.Server, error) {
	var out []*http.Server
	for _, ip := range ips {
		s, err := d.listen(net.JoinHostPort(ip, strconv.Itoa(port)), h, tlsOn)
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			d.log.Warn("address not available on this host; not listening on it", "addr", ip, "port", port)
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("none of %v is available for port %d", ips, port)
	}
	return out, nil
}

func (d *Daemon) listen(addr string, h http.Handler, tlsOn *tlsFiles) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}
	go func() {
		var err error
		if tlsOn != nil {
			srv.TLSConfig = tlsOn.cfg
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("HTTP listener stopped", "addr", addr, "err", err)
		}
	}()
	d.log.Info("listening", "addr", ln.Addr().String(), "tls", tlsOn != nil)
	return srv, nil
}
