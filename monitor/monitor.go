// Package monitor health-checks real servers the way PyBal does (SPEC §3):
// ProxyFetch, IdleConnection, RunCommand, DNSQuery and UDP, plus a TCP connect
// check. A Manager runs one probe per distinct (monitor, options, address, port)
// and fans its results out to every service watching it, applying rise/fall
// hysteresis and keeping PyBal's Prometheus metrics.
package monitor

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kubal/kubal/config"
	"github.com/prometheus/client_golang/prometheus"
)

// Target is the server a monitor probes.
type Target struct {
	Service string // informational; the service label comes from config.Service.Name
	Host    string // configured hostname: the host label, and server.host in RunCommand
	Addr    netip.Addr
	Port    uint16 // the service port
	// Prompt: the first check within PromptWindow (or the interval, if shorter), not
	// one interval after start. A server of a pool-unchecked = no service takes no
	// traffic until its first check, so that check must not wait up to a whole
	// interval (ProxyFetch's default is 10 s). A probe already running for another
	// service is shared as it is.
	Prompt bool
}

// PromptWindow spreads the prompt first checks (Target.Prompt): a restart of many
// such services starts their probes over this window, not all at once.
const PromptWindow = time.Second

// Result is one verdict: up, or down and why.
type Result struct {
	Up     bool
	Reason string
}

// Names lists the known monitor names, PyBal's five then kubal's TCP.
func Names() []string {
	return []string{"ProxyFetch", "IdleConnection", "RunCommand", "DNSQuery", "UDP", "TCP"}
}

// spec is one monitor's parsed configuration bound to a target.
type spec interface {
	// key identifies identical probes: everything that changes what is probed or
	// how results are judged.
	key() string
	hyst() (rise, fall int)
	newRunner(e *env) runner
}

// env is what a running probe may use.
type env struct {
	name    string // the monitor label: "ProxyFetch", or "ProxyFetch/forwarded"
	m       *Manager
	log     *slog.Logger
	clk     clock
	metrics *metrics
	// each calls f with the labels of every service watching the probe, for the
	// per-monitor metrics (a shared probe counts for each service).
	each func(f func(service, host string))
	// offset spreads start-up over the interval.
	offset func(interval time.Duration) time.Duration
	// hurry fires when a check-first watcher (Target.Prompt) joins the probe before
	// its first verdict; the first check then comes within promptDelay(interval).
	hurry       <-chan struct{}
	promptDelay func(interval time.Duration) time.Duration
}

// Manager runs monitors and shares identical probes between services.
type Manager struct {
	log       *slog.Logger
	metrics   *metrics
	clk       clock
	offset    func(interval time.Duration) time.Duration
	transport *http.Transport
	fwdDelay  time.Duration // forwarded probes start this long after their watch

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	probes map[string]*probe
	closed bool
}

// NewManager returns a Manager registering PyBal's monitor metrics on reg (nil: no
// registration) and logging to log.
func NewManager(reg prometheus.Registerer, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		log:       log,
		metrics:   newMetrics(reg),
		clk:       realClock{},
		offset:    randomOffset,
		transport: newTransport(),
		fwdDelay:  ForwardedStartDelay,
		ctx:       ctx,
		cancel:    cancel,
		probes:    map[string]*probe{},
	}
}

func randomOffset(interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	return rand.N(interval)
}

// Probes returns the number of distinct probes running (shared probes count once).
func (m *Manager) Probes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.probes)
}

// Watch starts (or joins, when an identical probe already runs) the monitor name of
// service svc against t. report is called from a monitor goroutine with the first
// result and then on every transition after rise/fall hysteresis; calls for one
// watcher never overlap, and the first may come before Watch returns. stop detaches
// this watcher (idempotent); the shared probe stops when its last watcher goes.
// report may call stop. A probe that cannot be set up (bad options, no address)
// is an error; a probe that fails is a down result.
func (m *Manager) Watch(svc *config.Service, name string, t Target, report func(Result)) (stop func(), err error) {
	base, forwarded := splitForwarded(name)
	v := newValidator(svc, base)
	v.forwarded = forwarded
	parse, ok := parsers[base]
	if !ok {
		return nil, fmt.Errorf("service %s: unknown monitor %q (known: %v)", svc.Name, name, Names())
	}
	if !t.Addr.IsValid() {
		return nil, fmt.Errorf("service %s monitor %s: server %q has no address", svc.Name, name, t.Host)
	}
	sp := parse(v, t)
	if len(v.ds) > 0 {
		return nil, fmt.Errorf("service %s monitor %s: %w", svc.Name, name, v.ds)
	}
	w := &watcher{service: svc.Name, host: t.Host, report: report}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("monitor manager closed")
	}
	k := sp.key()
	p := m.probes[k]
	if p == nil {
		p = m.startProbe(name, k, sp, t.Prompt)
	}
	p.mu.Lock()
	p.watchers = append(p.watchers, w)
	known := p.h.known
	p.mu.Unlock()
	if t.Prompt && !p.prompt && !known {
		// A check-first server waits for this probe's first verdict, which a probe
		// started for an optimistic one schedules up to an interval away.
		p.prompt = true
		select {
		case p.hurry <- struct{}{}:
		default:
		}
	}
	if known {
		// Joining a running probe: hand over its current verdict without waiting
		// for the next transition.
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			p.catchUp(w)
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { m.detach(p, w) }) }, nil
}

func (m *Manager) startProbe(name, key string, sp spec, prompt bool) *probe {
	ctx, cancel := context.WithCancel(m.ctx)
	rise, fall := sp.hyst()
	p := &probe{m: m, name: name, key: key, cancel: cancel, h: hysteresis{rise: rise, fall: fall},
		prompt: prompt, hurry: make(chan struct{}, 1)}
	m.probes[key] = p
	e := &env{
		name:    name,
		m:       m,
		log:     m.log.With("monitor", name),
		clk:     m.clk,
		metrics: m.metrics,
		each:    p.each,
		offset:  m.offset,
		hurry:   p.hurry,
		promptDelay: func(interval time.Duration) time.Duration {
			return m.offset(min(interval, PromptWindow))
		},
	}
	if prompt {
		// Runners start at interval - offset: make that [0, min(interval, PromptWindow)).
		e.offset = func(interval time.Duration) time.Duration {
			return interval - m.offset(min(interval, PromptWindow))
		}
	}
	r := sp.newRunner(e)
	emit := p.emit
	var delay time.Duration
	if f, ok := sp.(interface{ forwarded() *forward }); ok && f.forwarded() != nil {
		emit = f.forwarded().explain(p.emit) // a host that cannot forward says so
		delay = m.fwdDelay
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		// A forwarded probe starts once its helper service is likely in the kernel:
		// without it the marked connection would go through the VIP's own service to
		// any server (and an IdleConnection would stay on that one).
		if delay > 0 && !sleep(ctx, m.clk, delay) {
			return
		}
		for ctx.Err() == nil {
			if !m.runSafely(ctx, name, r, emit) || !sleep(ctx, m.clk, time.Second) {
				return
			}
		}
	}()
	return p
}

// runSafely runs r; it reports true when r panicked, after turning the panic into a
// down result, so the caller restarts it (PyBal restarted a failed loop).
func (m *Manager) runSafely(ctx context.Context, name string, r runner, emit func(Result)) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			m.log.Error("monitor panicked; restarting it", "monitor", name, "panic", v)
			emit(Result{Reason: fmt.Sprintf("monitor %s panicked: %v", name, v)})
			panicked = true
		}
	}()
	r.Run(ctx, emit)
	return false
}

func (m *Manager) detach(p *probe, w *watcher) {
	w.stopped.Store(true)
	m.mu.Lock()
	defer m.mu.Unlock()
	p.mu.Lock()
	for i, x := range p.watchers {
		if x == w {
			p.watchers = append(p.watchers[:i:i], p.watchers[i+1:]...)
			break
		}
	}
	last := len(p.watchers) == 0
	p.mu.Unlock()
	m.metrics.status.DeleteLabelValues(w.service, w.host, p.name)
	if last && m.probes[p.key] == p {
		delete(m.probes, p.key)
		p.cancel()
	}
}

// Close stops every probe and waits for their goroutines.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.probes = map[string]*probe{}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.transport.CloseIdleConnections()
}

type watcher struct {
	service, host string
	report        func(Result)
	stopped       atomic.Bool
	delivered     bool // guarded by probe.dmu

	upResults, downResults prometheus.Counter // guarded by probe.dmu
}

// probe is one running monitor instance shared by its watchers.
type probe struct {
	m         *Manager
	name, key string
	cancel    context.CancelFunc
	// prompt: the first check is (or has been asked to be) within PromptWindow;
	// guarded by Manager.mu. hurry asks the runner for that (env.hurry).
	prompt bool
	hurry  chan struct{}

	dmu sync.Mutex // serialises deliveries, so each watcher sees results in order

	mu       sync.Mutex
	watchers []*watcher
	h        hysteresis
	cur      Result // the reported state with the latest reason
}

// each calls f for every watcher; f must not call back into the probe.
func (p *probe) each(f func(service, host string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.watchers {
		f(w.service, w.host)
	}
}

// emit takes one raw result from the runner.
func (p *probe) emit(r Result) {
	p.dmu.Lock()
	defer p.dmu.Unlock()
	p.mu.Lock()
	changed := p.h.feed(r)
	if r.Up == p.h.up {
		p.cur = r
	}
	cur := p.cur
	ws := append([]*watcher(nil), p.watchers...)
	p.mu.Unlock()

	met := p.m.metrics
	debug := p.m.log.Enabled(context.Background(), slog.LevelDebug)
	for _, w := range ws {
		// The result counters are cached per watcher: 2,000 checks/s should not
		// hash label values each time.
		if r.Up {
			if w.upResults == nil {
				w.upResults = met.upResults.WithLabelValues(w.service, w.host, p.name)
			}
			w.upResults.Inc()
		} else {
			if w.downResults == nil {
				w.downResults = met.downResults.WithLabelValues(w.service, w.host, p.name)
			}
			w.downResults.Inc()
		}
		if debug {
			p.m.log.Debug("monitor result", "service", w.service, "monitor", p.name, "host", w.host,
				"up", r.Up, "reason", r.Reason)
		}
		if changed || !w.delivered {
			p.deliver(w, cur)
		}
	}
}

func (p *probe) catchUp(w *watcher) {
	p.dmu.Lock()
	defer p.dmu.Unlock()
	p.mu.Lock()
	known, cur := p.h.known, p.cur
	p.mu.Unlock()
	if known && !w.delivered {
		p.deliver(w, cur)
	}
}

// deliver reports a state to one watcher; called with dmu held.
func (p *probe) deliver(w *watcher, r Result) {
	if w.stopped.Load() {
		return
	}
	w.delivered = true
	met := p.m.metrics
	if r.Up {
		met.status.WithLabelValues(w.service, w.host, p.name).Set(1)
		met.upTransitions.WithLabelValues(w.service, w.host, p.name).Inc()
		p.m.log.Info("monitor up", "service", w.service, "monitor", p.name, "host", w.host)
	} else {
		met.status.WithLabelValues(w.service, w.host, p.name).Set(0)
		met.downTransitions.WithLabelValues(w.service, w.host, p.name).Inc()
		p.m.log.Warn("monitor down", "service", w.service, "monitor", p.name, "host", w.host,
			"reason", r.Reason)
	}
	w.report(r)
}
