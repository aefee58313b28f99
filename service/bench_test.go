package service_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/plan"
	"github.com/kubal/kubal/service"
	"github.com/kubal/kubal/source"

	"github.com/kubal/kubal/internal/testutil"
)

// BenchmarkOneFlap is issue 12's "cost of one change is independent of table size": one
// server of one service flaps (its monitor reports down, then up), through the stages
// the daemon runs - the service actor (coordinator, publish), plan.Planner.Update and
// ipvs.Reconciler.Update with its Run goroutine - until the destination write reaches
// the IPVS backend. 1,000 services x 100 servers against 10 x 10, side by side.
//
// The chain is built here as daemon.converge builds it (markDirty -> State ->
// Planner.Update -> Planner.Pool -> Reconciler.Update), because the daemon takes its
// monitors from monitor.Manager and offers no way to inject results.
//
// Each op is one monitor result (down and up alternate: a depool, then a repool), and
// waits for its netlink write. Reported:
//   - ns/op: wall time per change, one change at a time (= the latency below);
//   - cpu-ns/op: CPU time of the whole process per change (getrusage: every goroutine);
//   - p50-us, p99-us: time from the result entering the service actor (the monitor's
//     report callback) to the backend's write call.
//
// The backend is ipvs.Fake for the start (adoption dump, 100,000 adds) and then only
// records destination writes: the benchmark measures kubal's share, not the kernel's nor
// the Fake's linear search. The reconciler's MinInterval (a deliberate rate limit of
// 100 ms) is 0 here and its periodic resync is off: both are timers, not per-change
// cost. The benchmark fails if a change causes a dump or not exactly one write.
//
//	go test -run '^$' -bench 'BenchmarkOneFlap' -benchmem -count 6 ./service
func BenchmarkOneFlap(b *testing.B) {
	for _, size := range []struct{ services, servers int }{{10, 10}, {1000, 100}} {
		// Built once per size, outside b.Run: the benchmark function runs several times
		// (growing b.N), and building 100,000 servers takes seconds.
		r := newFlapRig(b, size.services, size.servers)
		b.Run(fmt.Sprintf("%dx%d", size.services, size.servers), r.run)
		r.stop()
	}
}

const benchMonitor = "ProxyFetch"

// fakeSource delivers one set and then nothing.
type fakeSource struct{ set source.Set }

func (f fakeSource) Run(ctx context.Context, ev source.Events) error {
	ev.Update(f.set)
	<-ctx.Done()
	return nil
}

// fakeStore is an admin store with no overrides.
type fakeStore struct{}

func (fakeStore) Watch(ctx context.Context, out func(admin.Intent)) {
	out(admin.Intent{Revision: 1, Loaded: true, Overrides: map[string]admin.Override{}})
	<-ctx.Done()
}

func (fakeStore) Apply(context.Context, admin.Change, admin.Check) (admin.Receipt, error) {
	return admin.Receipt{}, fmt.Errorf("read-only")
}
func (fakeStore) String() string { return "bench store" }

// captureWatcher starts no probe: it keeps each watch's report callback, so the
// benchmark plays the monitor.
type captureWatcher struct {
	mu      sync.Mutex
	reports map[string]func(monitor.Result) // service/host -> report
}

func (w *captureWatcher) Watch(svc *config.Service, name string, t monitor.Target, report func(monitor.Result)) (func(), error) {
	key := t.Service + "/" + t.Host
	w.mu.Lock()
	w.reports[key] = report
	w.mu.Unlock()
	return func() {}, nil
}

func (w *captureWatcher) report(key string) func(monitor.Result) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reports[key]
}

// writeBackend is the Fake until writes are switched to recording: then destination
// writes only count and signal, and dumps are counted (there must be none).
type writeBackend struct {
	*ipvs.Fake
	record atomic.Bool
	writes atomic.Int64
	dumps  atomic.Int64
	wrote  chan time.Time
}

func (w *writeBackend) wrote1(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination, op func(context.Context, ipvs.ServiceKey, ipvs.Destination) error) error {
	if !w.record.Load() {
		return op(ctx, k, d)
	}
	w.writes.Add(1)
	select {
	case w.wrote <- time.Now():
	default:
	}
	return nil
}

func (w *writeBackend) AddDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	return w.wrote1(ctx, k, d, w.Fake.AddDestination)
}

func (w *writeBackend) UpdateDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	return w.wrote1(ctx, k, d, w.Fake.UpdateDestination)
}

func (w *writeBackend) DeleteDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	return w.wrote1(ctx, k, d, w.Fake.DeleteDestination)
}

func (w *writeBackend) Services(ctx context.Context) ([]ipvs.Service, error) {
	if w.record.Load() {
		w.dumps.Add(1)
	}
	return w.Fake.Services(ctx)
}

func (w *writeBackend) Destinations(ctx context.Context, k ipvs.ServiceKey) ([]ipvs.Destination, error) {
	if w.record.Load() {
		w.dumps.Add(1)
	}
	return w.Fake.Destinations(ctx, k)
}

// chain is the daemon's centre for the benchmark: service actors, the planner and the
// IPVS reconciler, joined as daemon.converge joins them.
type chain struct {
	cfg      *config.Config
	services map[string]*service.Service
	planner  *plan.Planner
	rec      *ipvs.Reconciler
	healthy  *prometheus.GaugeVec // daemon.converge sets kubal_source_healthy per change

	dirtyMu sync.Mutex
	dirty   map[string]bool
	changed chan struct{}
}

func (c *chain) markDirty(name string) {
	c.dirtyMu.Lock()
	c.dirty[name] = true
	c.dirtyMu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// converge is daemon.converge(false): replan the changed services, hand their pools to
// the reconciler.
func (c *chain) converge() {
	c.dirtyMu.Lock()
	dirty := c.dirty
	c.dirty = map[string]bool{}
	c.dirtyMu.Unlock()
	for name := range dirty {
		s := c.services[name]
		st := s.State()
		c.healthy.WithLabelValues(name).Set(1)
		c.planner.Update(name, plan.Service{Snapshot: st.Snapshot, Settled: st.Settled})
		if p, ok := c.planner.Pool(name); ok {
			c.rec.Update(p)
		}
	}
}

func benchConfig(services, servers int) (*config.Config, map[string]source.Set) {
	cfg := &config.Config{}
	sets := map[string]source.Set{}
	for i := range services {
		svc := &config.Service{
			Name:            fmt.Sprintf("svc%04d_80", i),
			Protocol:        "tcp",
			IP:              netip.AddrFrom4([4]byte{10, 10, byte(i / 250), byte(i%250 + 1)}),
			Port:            80,
			Scheduler:       "wrr",
			ConfigURL:       "file:///dev/null",
			DepoolThreshold: 0.5,
			Monitors:        []string{benchMonitor},
			Forwarding:      config.ForwardDR,
			DepoolMode:      config.DepoolDelete,
			VIPInterface:    "lo",
		}
		cfg.Services = append(cfg.Services, svc)
		set := source.Set{}
		for j := range servers {
			h := fmt.Sprintf("mw%04d.eqiad.wmnet", j)
			set[h] = source.Server{Host: h, Addr: netip.AddrFrom4([4]byte{10, 20, byte(j / 250), byte(j%250 + 1)}), Weight: 10, Enabled: true}
		}
		sets[svc.Name] = set
	}
	return cfg, sets
}

// flapRig is the chain in steady state with the flapping server's report callback.
type flapRig struct {
	backend *writeBackend
	report  func(monitor.Result)
	flips   int // results sent: even = the next one is down
	stop    func()
}

func newFlapRig(b *testing.B, services, servers int) *flapRig {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	log := slog.New(slog.DiscardHandler)

	cfg, sets := benchConfig(services, servers)
	backend := &writeBackend{Fake: ipvs.NewFake(), wrote: make(chan time.Time, 16)}
	c := &chain{
		cfg:      cfg,
		services: map[string]*service.Service{},
		planner:  plan.NewPlanner(cfg),
		rec:      ipvs.NewReconciler(backend, log, nil),
		healthy:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kubal_source_healthy"}, []string{"service"}),
		dirty:    map[string]bool{},
		changed:  make(chan struct{}, 1),
	}
	c.rec.MinInterval = 0
	c.rec.ResyncPeriod = 24 * time.Hour
	watcher := &captureWatcher{reports: map[string]func(monitor.Result){}}
	for _, svc := range cfg.Services {
		name := svc.Name
		c.services[name] = service.New(svc, service.Deps{
			Source:   fakeSource{sets[name]},
			Store:    fakeStore{},
			Monitors: watcher,
			Resolve: func(context.Context, string, bool) (netip.Addr, error) {
				return netip.Addr{}, fmt.Errorf("no DNS in the benchmark")
			},
			Log:     log,
			Changed: func() { c.markDirty(name) },
		})
	}
	// The daemon's start: one whole plan, then only changed services.
	c.rec.Set(c.planner.Desired().Pools)
	wg.Go(func() { _ = c.rec.Run(ctx) })
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.changed:
				c.converge()
			}
		}
	})
	for _, s := range c.services {
		wg.Go(func() { s.Run(ctx) })
	}

	// Steady state: every server up with a monitor result, every pool in the backend.
	testutil.Eventually(b, 5*time.Minute, "every service synced and watched", func() bool {
		for _, s := range c.services {
			if !s.State().Settled {
				return false
			}
		}
		watcher.mu.Lock()
		defer watcher.mu.Unlock()
		return len(watcher.reports) == services*servers
	})
	for _, svc := range cfg.Services {
		for h := range sets[svc.Name] {
			watcher.report(svc.Name + "/" + h)(monitor.Result{Up: true})
		}
	}
	testutil.Eventually(b, 5*time.Minute, "every result applied and every pool in the backend", func() bool {
		for _, svc := range cfg.Services {
			st := c.services[svc.Name].State()
			for _, sv := range st.Snapshot.Servers {
				if _, ok := sv.Monitors[benchMonitor]; !ok || !sv.Pooled {
					return false
				}
			}
			ps, ok := c.rec.Status(plan.Key(svc))
			if !ok || ps.Applied < ps.Version {
				return false
			}
		}
		t := backend.Table()
		if len(t) != services {
			return false
		}
		for _, p := range t {
			if len(p.Destinations) != servers {
				return false
			}
		}
		return true
	})
	backend.record.Store(true)

	// The flapping server: in the middle of the table.
	svc := cfg.Services[services/2]
	host := fmt.Sprintf("mw%04d.eqiad.wmnet", servers/2)
	return &flapRig{
		backend: backend,
		report:  watcher.report(svc.Name + "/" + host),
		stop:    func() { cancel(); wg.Wait() },
	}
}

func (f *flapRig) run(b *testing.B) {
	backend := f.backend
	down := monitor.Result{Up: false, Reason: "503 Service Unavailable"}
	up := monitor.Result{Up: true}
	writes0 := backend.writes.Load()
	lat := make([]time.Duration, 0, max(b.N, 1))
	cpu0 := cpuTime()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r := down
		if f.flips%2 == 1 {
			r = up
		}
		f.flips++
		t0 := time.Now()
		f.report(r)
		select {
		case tw := <-backend.wrote:
			lat = append(lat, tw.Sub(t0))
		case <-time.After(10 * time.Second):
			b.Fatalf("change %d: no write reached the backend in 10 s", i)
		}
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if d := backend.dumps.Load(); d != 0 {
		b.Fatalf("%d dumps during %d changes, want 0", d, b.N)
	}
	// Every change is exactly one write: no late second write may be pending.
	time.Sleep(50 * time.Millisecond)
	if w := backend.writes.Load() - writes0; w != int64(b.N) {
		b.Fatalf("%d writes for %d changes", w, b.N)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
