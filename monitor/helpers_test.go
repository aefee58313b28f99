package monitor

import (
	"context"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/kubal/kubal/config"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/internal/testutil"
)

// testService builds a service whose options are given as key/value pairs, each on
// its own line of "test.conf" (line = 10 + index) so positions can be asserted.
func testService(name string, monitors []string, kv ...string) *config.Service {
	opts := config.Options{"monitors": {Raw: "[...]", Pos: config.Pos{File: "test.conf", Line: 2}}}
	for i := 0; i+1 < len(kv); i += 2 {
		opts[kv[i]] = config.Value{Raw: kv[i+1], Pos: config.Pos{File: "test.conf", Line: 10 + i/2}}
	}
	return &config.Service{Name: name, Pos: config.Pos{File: "test.conf", Line: 1}, Port: 80,
		Monitors: monitors, Options: opts}
}

// newTestManager returns a Manager on a fresh registry with no start-up spread.
func newTestManager(t *testing.T) (*Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewManager(reg, slog.New(slog.DiscardHandler))
	m.offset = func(time.Duration) time.Duration { return 0 }
	m.fwdDelay = 0
	t.Cleanup(m.Close)
	return m, reg
}

// testEnv is the env a probe would get, with the given labels as sole watcher.
func testEnv(m *Manager, log *slog.Logger) *env {
	if log == nil {
		log = m.log
	}
	return &env{m: m, log: log, clk: m.clk, metrics: m.metrics, offset: m.offset,
		each: func(f func(service, host string)) { f("svc", "host1") }}
}

// checkerFor parses a looping monitor for target t and returns its Checker.
func checkerFor(t *testing.T, m *Manager, svc *config.Service, name string, tg Target, log *slog.Logger) Checker {
	t.Helper()
	v := newValidator(svc, name)
	sp := parsers[name](v, tg)
	if len(v.ds) > 0 {
		t.Fatalf("parse %s: %v", name, v.ds)
	}
	e := testEnv(m, log)
	e.name = name
	l, ok := sp.newRunner(e).(*loop)
	if !ok {
		t.Fatalf("%s is not a looping monitor", name)
	}
	return l.check
}

func loopback(port uint16) Target {
	return Target{Host: "host1", Addr: netip.MustParseAddr("127.0.0.1"), Port: port}
}

// reports collects what a watcher is told.
type reports struct {
	ch chan Result
}

func newReports() *reports { return &reports{ch: make(chan Result, 1000)} }

func (r *reports) report(res Result) { r.ch <- res }

// next waits for the next report.
func (r *reports) next(t *testing.T, within time.Duration) Result {
	t.Helper()
	select {
	case res := <-r.ch:
		return res
	case <-time.After(within):
		t.Fatalf("no report within %v", within)
		return Result{}
	}
}

// none asserts no report arrives for d.
func (r *reports) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case res := <-r.ch:
		t.Fatalf("unexpected report %+v", res)
	case <-time.After(d):
	}
}

// fakeClock is a manual clock; timers fire when Advance passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	added  chan struct{}
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_000_000, 0), added: make(chan struct{}, 1000)}
}

type fakeTimer struct {
	c    *fakeClock
	when time.Time
	ch   chan time.Time
	done bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, when: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.done = true
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	c.added <- struct{}{}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }
func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// pending returns the number of armed timers.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.done {
			n++
		}
	}
	return n
}

// waitTimer blocks until at least one timer is armed (a goroutine is sleeping).
func (c *fakeClock) waitTimer(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.pending() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no timer armed within 5s")
		}
		select {
		case <-c.added:
		case <-time.After(time.Millisecond):
		}
	}
}

// Advance moves time forward, firing due timers in order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	sort.Slice(c.timers, func(i, j int) bool { return c.timers[i].when.Before(c.timers[j].when) })
	keep := c.timers[:0]
	for _, t := range c.timers {
		if t.done {
			continue
		}
		if !t.when.After(c.now) {
			t.done = true
			t.ch <- t.when
			continue
		}
		keep = append(keep, t)
	}
	c.timers = keep
}

// nextTimer returns how far the earliest armed timer is.
func (c *fakeClock) nextTimer() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best time.Duration = -1
	for _, t := range c.timers {
		if !t.done && (best < 0 || t.when.Sub(c.now) < best) {
			best = t.when.Sub(c.now)
		}
	}
	return best
}

func debugLogger() (*slog.Logger, *testutil.SyncBuffer) {
	buf := &testutil.SyncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// metricValue returns the value of the series of metric name whose labels include
// want, and whether it exists.
func metricValue(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			}
		}
	}
	return 0, false
}

// seriesCount returns how many series metric name has.
func seriesCount(t *testing.T, g prometheus.Gatherer, name string) int {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}
