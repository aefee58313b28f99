package ipvs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clocktesting "k8s.io/utils/clock/testing"
)

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func newTestReconciler(t *testing.T, b Backend) (*Reconciler, *prometheus.Registry, *clocktesting.FakeClock) {
	reg := prometheus.NewRegistry()
	r := NewReconciler(b, testLog(t), reg)
	c := clocktesting.NewFakeClock(time.Unix(1000, 0))
	r.Clock = c
	return r, reg, c
}

func mustPass(t *testing.T, r *Reconciler, full bool) {
	t.Helper()
	if err := r.Reconcile(context.Background(), full); err != nil {
		t.Fatalf("pass: %v", err)
	}
}

// table renders the fake's table as ipvsadm -a lines, sorted, for comparisons.
func table(f *Fake) []string {
	var out []string
	for k, p := range f.Table() {
		out = append(out, AddServiceCommand(p.Service))
		for _, d := range p.Destinations {
			out = append(out, AddDestinationCommand(k, d))
		}
	}
	slices.Sort(out)
	return out
}

// destOf returns the destination addr of service k in the fake (the list is newest
// first, as the kernel's).
func destOf(t *testing.T, f *Fake, k ServiceKey, addr string) Destination {
	t.Helper()
	a := netip.MustParseAddr(addr)
	for _, d := range f.Table()[k].Destinations {
		if d.Addr == a {
			return d
		}
	}
	t.Fatalf("no destination %s in %s", addr, k)
	return Destination{}
}

func lines(s ...string) []string { slices.Sort(s); return s }

var (
	web  = key(TCP, "10.0.0.1", 80)
	dns  = key(UDP, "10.0.0.2", 53)
	othr = key(TCP, "10.9.9.9", 443)
)

func TestReconcileProgramsAndConverges(t *testing.T) {
	f := NewFake()
	r, reg, _ := newTestReconciler(t, f)
	r.Set([]Pool{
		{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 0)}},
		{Service: Service{ServiceKey: dns, Scheduler: "sh", Flags: []string{"sh-port", "sh-fallback"}, OPS: true},
			Destinations: []Destination{{Addr: dest("10.0.1.1", 0, 1).Addr, Weight: 1, Forwarding: Tunnel}}},
	})
	mustPass(t, r, false)
	want := lines(
		"-A -t 10.0.0.1:80 -s wrr",
		"-a -t 10.0.0.1:80 -r 10.0.1.1 -w 10",
		"-a -t 10.0.0.1:80 -r 10.0.1.2 -w 0", // weight 0 is a real 0
		"-A -u 10.0.0.2:53 -s sh -b sh-fallback,sh-port -o",
		"-a -u 10.0.0.2:53 -r 10.0.1.1 -w 1 -i",
	)
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("table:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Converged: another pass (even a full one) changes nothing.
	f.ResetCalls()
	mustPass(t, r, true)
	c := f.Calls()
	for _, op := range []string{OpAddService, OpUpdateService, OpDeleteService, OpAddDestination, OpUpdateDestination, OpDeleteDestination} {
		if c[op] != 0 {
			t.Errorf("converged pass issued %d %s", c[op], op)
		}
	}
	if got := metricValue(t, r.m.ops.WithLabelValues(OpAddDestination)); got != 3 {
		t.Errorf("add_destination ops = %v, want 3", got)
	}
	if n := histogramCount(t, reg, "kubal_ipvs_reconcile_duration_seconds"); n != 2 {
		t.Errorf("duration histogram has %d observations, want 2 (one per pass)", n)
	}
}

func TestIncrementalChangeNeedsNoDump(t *testing.T) {
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	pools := []Pool{{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 10)}}}
	r.Set(pools)
	mustPass(t, r, false)
	f.ResetCalls()
	pools[0].Destinations = []Destination{dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 5)}
	r.Set(pools)
	mustPass(t, r, false)
	if c := f.Calls(); c[OpDumpServices] != 0 || c[OpDumpDestinations] != 0 || c[OpUpdateDestination] != 1 || len(c) != 1 {
		t.Errorf("a single weight change issued %v, want exactly one update_destination", c)
	}
	if got := destOf(t, f, web, "10.0.1.2").Weight; got != 5 {
		t.Errorf("weight = %d, want 5", got)
	}
}

func TestOwnershipAndAdoption(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	// The kernel before kubal starts: a foreign service and one of the config with a
	// different scheduler, a desired destination at another weight and an extra one.
	must(t, f.AddService(ctx, Service{ServiceKey: othr, Scheduler: "rr"}))
	must(t, f.AddDestination(ctx, othr, dest("10.9.0.1", 0, 1)))
	must(t, f.AddService(ctx, Service{ServiceKey: web, Scheduler: "rr"}))
	must(t, f.AddDestination(ctx, web, dest("10.0.1.1", 0, 1)))
	must(t, f.AddDestination(ctx, web, dest("10.0.1.9", 0, 7)))
	f.ResetCalls()

	r, _, _ := newTestReconciler(t, f)
	desired := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 10)}, KeepExtra: true}
	r.Set([]Pool{desired})
	mustPass(t, r, false)
	c := f.Calls()
	if c[OpDeleteService] != 0 || c[OpAddService] != 0 || c[OpUpdateService] != 1 {
		t.Errorf("adoption must update in place, never flush or re-add: %v", c)
	}
	if c[OpDumpDestinations] != 1 {
		t.Errorf("dumped destinations of %d services; a foreign service must not be read", c[OpDumpDestinations])
	}
	want := lines(
		"-A -t 10.0.0.1:80 -s wrr",
		"-a -t 10.0.0.1:80 -r 10.0.1.1 -w 10",
		"-a -t 10.0.0.1:80 -r 10.0.1.9 -w 7", // kept: KeepExtra (monitors have not spoken)
		"-A -t 10.9.9.9:443 -s rr",
		"-a -t 10.9.9.9:443 -r 10.9.0.1 -w 1",
	)
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("after adoption:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Monitors have spoken: the extra destination goes.
	desired.KeepExtra = false
	r.Set([]Pool{desired})
	mustPass(t, r, false)
	if _, ok := f.Table()[web]; !ok || len(f.Table()[web].Destinations) != 1 {
		t.Fatalf("extra destination not removed: %v", table(f))
	}
	// The adopted service leaves the config: deleted. The foreign one stays.
	r.Set(nil)
	mustPass(t, r, false)
	want = lines("-A -t 10.9.9.9:443 -s rr", "-a -t 10.9.9.9:443 -r 10.9.0.1 -w 1")
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("after removal from config:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Keep (servers awaiting their first check, pool-unchecked = no): a kept server's
// kernel destination stays as it is through adoption and later passes, one that is
// absent is not added, and once it is no longer kept the usual diff applies.
func TestKeepAwaitingServers(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	must(t, f.AddService(ctx, Service{ServiceKey: web, Scheduler: "wrr"}))
	must(t, f.AddDestination(ctx, web, dest("10.0.1.1", 0, 10)))
	must(t, f.AddDestination(ctx, web, dest("10.0.1.2", 0, 7)))
	must(t, f.AddDestination(ctx, web, dest("10.0.1.9", 0, 5)))
	r, _, _ := newTestReconciler(t, f)
	kept := []netip.Addr{netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.1.3")}
	desired := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 10)}, Keep: kept}
	r.Set([]Pool{desired})
	mustPass(t, r, false)
	want := lines(
		"-A -t 10.0.0.1:80 -s wrr",
		"-a -t 10.0.0.1:80 -r 10.0.1.1 -w 10",
		"-a -t 10.0.0.1:80 -r 10.0.1.2 -w 7", // kept as it is: awaiting its first check
	)
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("with Keep:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// An incremental pass with a weight change of a desired destination keeps it too.
	desired.Destinations = []Destination{dest("10.0.1.1", 0, 20)}
	r.Update(desired)
	mustPass(t, r, false)
	want[1] = "-a -t 10.0.0.1:80 -r 10.0.1.1 -w 20"
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("after an update with Keep:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The check decided: 10.0.1.2 down (not kept, not desired) goes; 10.0.1.3 up comes.
	desired = Pool{Service: desired.Service, Destinations: []Destination{dest("10.0.1.1", 0, 20), dest("10.0.1.3", 0, 10)}}
	r.Update(desired)
	mustPass(t, r, false)
	want = lines("-A -t 10.0.0.1:80 -s wrr", "-a -t 10.0.0.1:80 -r 10.0.1.1 -w 20", "-a -t 10.0.0.1:80 -r 10.0.1.3 -w 10")
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("after the checks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A service of the config that was never in the kernel while this process ran, then
// removed from the config, is not kubal's to delete if someone else created it later.
func TestNeverOwnedServiceIsLeftAlone(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	r.Set([]Pool{{Service: Service{ServiceKey: web, Scheduler: "rr"}}})
	mustPass(t, r, false)
	r.Set(nil)
	mustPass(t, r, false)
	must(t, f.AddService(ctx, Service{ServiceKey: web, Scheduler: "rr"})) // by hand, after
	mustPass(t, r, true)
	if _, ok := f.Table()[web]; !ok {
		t.Fatal("kubal deleted a service it no longer owns")
	}
}

func TestDrain(t *testing.T) {
	tests := []struct {
		name       string
		k          ServiceKey
		timeout    time.Duration
		conns      int
		advance    time.Duration
		wantGone1  bool // after the first pass (weight 0 for TCP)
		wantGone2  bool // after connections were polled / time advanced
		wantWeight int
	}{
		{name: "tcp busy stays at weight 0", k: web, conns: 3, advance: time.Minute, wantWeight: 0},
		{name: "tcp idle is removed", k: web, conns: 0, wantGone2: true},
		{name: "tcp busy removed after drain-timeout", k: web, timeout: 30 * time.Second, conns: 3, advance: 31 * time.Second, wantGone2: true},
		{name: "tcp busy kept before drain-timeout", k: web, timeout: 30 * time.Second, conns: 3, advance: 29 * time.Second, wantWeight: 0},
		{name: "udp removed at once", k: dns, conns: 3, wantGone1: true, wantGone2: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFake()
			r, reg, c := newTestReconciler(t, f)
			a, b := dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 10)
			p := Pool{Service: Service{ServiceKey: tt.k, Scheduler: "wrr"}, Destinations: []Destination{a, b}, Drain: true, DrainTimeout: tt.timeout}
			r.Set([]Pool{p})
			mustPass(t, r, false)
			must(t, f.SetConns(tt.k, b.Addr, 0, tt.conns, 0))
			p.Destinations = []Destination{a}
			r.Set([]Pool{p})
			mustPass(t, r, false)
			find := func() (Destination, bool) {
				for _, d := range f.Table()[tt.k].Destinations {
					if d.Addr == b.Addr {
						return d, true
					}
				}
				return Destination{}, false
			}
			d, ok := find()
			if ok == tt.wantGone1 {
				t.Fatalf("after depool: present=%v, want gone=%v", ok, tt.wantGone1)
			}
			if ok && d.Weight != 0 {
				t.Fatalf("draining destination has weight %d, want 0", d.Weight)
			}
			if ok {
				if n := metricValue(t, r.m.draining); n != 1 {
					t.Errorf("draining gauge = %v", n)
				}
			}
			c.Step(tt.advance)
			mustPass(t, r, false) // polls the counters of the draining service
			d, ok = find()
			if ok == tt.wantGone2 {
				t.Fatalf("after drain poll: present=%v, want gone=%v", ok, tt.wantGone2)
			}
			if ok && d.Weight != tt.wantWeight {
				t.Errorf("weight %d, want %d", d.Weight, tt.wantWeight)
			}
			_ = reg
		})
	}
}

func TestDrainCancelledWhenRepooled(t *testing.T) {
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	a, b := dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 10)
	p := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{a, b}, Drain: true}
	r.Set([]Pool{p})
	mustPass(t, r, false)
	must(t, f.SetConns(web, b.Addr, 0, 1, 0))
	p.Destinations = []Destination{a}
	r.Set([]Pool{p})
	mustPass(t, r, false)
	p.Destinations = []Destination{a, b}
	r.Set([]Pool{p})
	mustPass(t, r, false)
	if got := destOf(t, f, web, "10.0.1.2").Weight; got != 10 {
		t.Errorf("repooled weight %d, want 10", got)
	}
	if len(r.draining) != 0 {
		t.Errorf("still draining: %v", r.draining)
	}
}

func TestDriftRepair(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	r := NewReconciler(f, slog.New(slog.NewTextHandler(&logs, nil)), reg)
	r.Set([]Pool{{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 10)}}})
	mustPass(t, r, false)
	// By hand: ipvsadm -d one destination, -e the other's weight, -a a stranger.
	must(t, f.DeleteDestination(ctx, web, dest("10.0.1.1", 0, 0)))
	must(t, f.UpdateDestination(ctx, web, dest("10.0.1.2", 0, 1)))
	must(t, f.AddDestination(ctx, web, dest("10.0.1.3", 0, 1)))
	mustPass(t, r, false) // incremental: the kernel is not read
	if len(f.Table()[web].Destinations) != 2 {
		t.Fatal("the test expects no repair without a resync")
	}
	mustPass(t, r, true) // periodic resync
	want := lines("-A -t 10.0.0.1:80 -s wrr", "-a -t 10.0.0.1:80 -r 10.0.1.1 -w 10", "-a -t 10.0.0.1:80 -r 10.0.1.2 -w 10")
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("after resync:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := metricValue(t, r.m.drift); n != 3 {
		t.Errorf("drift repairs = %v, want 3", n)
	}
	for _, s := range []string{"destination removed outside kubal", "destination changed outside kubal", "destination added outside kubal"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, logs.String())
		}
	}
	// Service deleted by hand: restored with its destinations.
	must(t, f.DeleteService(ctx, web))
	mustPass(t, r, true)
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("after service deletion and resync:\n%s", strings.Join(got, "\n"))
	}
}

func TestErrorsAreRetriedFromAFreshDump(t *testing.T) {
	f := NewFake()
	r, _, clk := newTestReconciler(t, f)
	boom := errors.New("netlink: no buffer space")
	f.SetFailure(func(op string, k ServiceKey, d Destination) error {
		if op == OpAddDestination && d.Addr == dest("10.0.1.2", 0, 0).Addr {
			return boom
		}
		return nil
	})
	r.Set([]Pool{{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 10)}}})
	if err := r.Reconcile(context.Background(), false); !errors.Is(err, boom) || !strings.Contains(err.Error(), "-a -t 10.0.0.1:80 -r 10.0.1.2 -w 10") {
		t.Fatalf("pass error = %v; want the failing op named", err)
	}
	if len(f.Table()[web].Destinations) != 1 {
		t.Fatal("the other destination must still be programmed")
	}
	f.SetFailure(nil)
	f.ResetCalls()
	mustPass(t, r, false)
	if c := f.Calls(); len(c) != 0 {
		t.Errorf("retried before the pool's backoff: %v", c)
	}
	clk.Step(r.MinInterval)
	mustPass(t, r, false)
	if c := f.Calls(); c[OpDumpServices] != 1 || c[OpAddDestination] != 1 || c[OpAddService] != 0 {
		t.Errorf("retry after an error: %v; want a fresh dump and only the missing add", c)
	}
	if n := metricValue(t, r.m.errors.WithLabelValues(OpAddDestination)); n != 1 {
		t.Errorf("errors{add_destination} = %v", n)
	}
}

func TestBackoff(t *testing.T) {
	base, limit := 100*time.Millisecond, 2*time.Second
	for _, tt := range []struct {
		n    int
		want time.Duration
	}{{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond}, {5, 1600 * time.Millisecond}, {6, 2 * time.Second}, {60, 2 * time.Second}} {
		if got := backoff(tt.n, base, limit); got != tt.want {
			t.Errorf("backoff(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

// countingBackend counts dumps (one per pass) and can fail everything.
type countingBackend struct {
	*Fake
	mu     sync.Mutex
	passes int
}

func (c *countingBackend) Services(ctx context.Context) ([]Service, error) {
	c.mu.Lock()
	c.passes++
	c.mu.Unlock()
	return c.Fake.Services(ctx)
}

// runHarness runs a Reconciler's Run loop on a fake clock. The loop reports each time
// it is about to wait (loop.idle), so a test knows when its action was processed and
// when the next pass is due, without sleeping.
type runHarness struct {
	t      *testing.T
	clk    *clocktesting.FakeClock
	kick   chan struct{}
	idle   chan time.Time
	ack    chan struct{}
	cancel context.CancelFunc
	done   chan error
}

func startRun(t *testing.T, r *Reconciler, clk *clocktesting.FakeClock) *runHarness {
	t.Helper()
	return startLoop(t, clk, r.kick, &r.idle, r.Run)
}

// startLoop runs a loop (Reconciler.Run, Addresses.Run) whose kick channel and idle
// hook are given.
func startLoop(t *testing.T, clk *clocktesting.FakeClock, kick chan struct{}, idle *func(time.Time), run func(context.Context) error) *runHarness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &runHarness{t: t, clk: clk, kick: kick, idle: make(chan time.Time), ack: make(chan struct{}), cancel: cancel, done: make(chan error, 1)}
	// A handshake: the loop stays in idle until settle has looked at the kicks.
	*idle = func(due time.Time) {
		select {
		case h.idle <- due:
		case <-ctx.Done():
			return
		}
		select {
		case <-h.ack:
		case <-ctx.Done():
		}
	}
	go func() { h.done <- run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

// settle waits until the loop has taken every kick and waits; it returns the time of
// the next pass (zero: none scheduled).
func (h *runHarness) settle() time.Time {
	h.t.Helper()
	for {
		select {
		case due := <-h.idle:
			pending := len(h.kick) > 0 // the loop waits for the ack: no kick is taken meanwhile
			h.ack <- struct{}{}
			if !pending {
				return due
			}
		case <-time.After(10 * time.Second): // a failsafe, not a wait for time to pass
			h.t.Fatal("reconciler loop did not settle")
		}
	}
}

// advance moves the fake clock to the next pass and waits for it; it returns when
// the pass after that is due.
func (h *runHarness) advance(due time.Time) time.Time {
	h.t.Helper()
	if due.IsZero() {
		h.t.Fatal("no pass scheduled")
	}
	h.clk.SetTime(later(due, h.clk.Now()))
	return h.settle()
}

func (h *runHarness) stop() {
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run returned %v", err)
		}
	case <-time.After(5 * time.Second):
		h.t.Fatal("Run did not return after cancel")
	}
}

func TestRunCoalescesAndSurvivesErrors(t *testing.T) {
	f := NewFake()
	cb := &countingBackend{Fake: f}
	r, _, clk := newTestReconciler(t, cb)
	r.ResyncPeriod = 0 // every pass is a full dump: passes == dumps
	h := startRun(t, r, clk)
	h.settle() // the first pass, at once
	// A burst of 200 changes at one instant: one pass, MinInterval after the last.
	start := clk.Now()
	for w := 1; w <= 200; w++ {
		r.Set([]Pool{{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, w)}}})
	}
	due := h.settle()
	if want := start.Add(r.MinInterval); !due.Equal(want) {
		t.Errorf("next pass at %v, want %v (MinInterval after the last)", due.Sub(start), r.MinInterval)
	}
	cb.mu.Lock()
	cb.passes = 0
	cb.mu.Unlock()
	h.advance(due)
	cb.mu.Lock()
	passes := cb.passes
	cb.mu.Unlock()
	if p, ok := f.Table()[web]; passes != 1 || !ok || len(p.Destinations) != 1 || p.Destinations[0].Weight != 200 {
		t.Fatalf("%d passes for a burst of 200, table %v; want 1 pass and weight 200", passes, table(f))
	}
	// Backend failing: Run keeps going and converges once it recovers.
	f.SetFailure(func(string, ServiceKey, Destination) error { return errors.New("EBUSY") })
	r.Set([]Pool{{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 3)}}})
	due = h.advance(h.settle())
	if f.Table()[web].Destinations[0].Weight == 3 {
		t.Fatal("the test expects the failing backend to refuse the change")
	}
	f.SetFailure(nil)
	h.advance(due)
	if w := f.Table()[web].Destinations[0].Weight; w != 3 {
		t.Errorf("weight %d after the backend recovered, want 3", w)
	}
}

// Issue 12: a destination the backend refuses in pool A must not delay pool B's
// change. (Before, one global backoff held every pool: 29.5 s once A had failed a
// few times.)
func TestOnePoolsErrorNeverDelaysAnother(t *testing.T) {
	f := NewFake()
	r, _, clk := newTestReconciler(t, f)
	r.ResyncPeriod = time.Hour
	bad := dest("10.0.9.9", 0, 1)
	refused := errors.New("invalid argument")
	f.SetFailure(func(op string, k ServiceKey, d Destination) error {
		if op == OpAddDestination && d.Addr == bad.Addr {
			return refused
		}
		return nil
	})
	a := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 1), bad}}
	b := Pool{Service: Service{ServiceKey: dns, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.2.1", 0, 1)}}
	r.Set([]Pool{a, b})
	h := startRun(t, r, clk)
	due := h.settle()
	// Let A fail until its backoff is long.
	for range 6 {
		due = h.advance(due)
	}
	stA, _ := r.Status(web)
	if stA.Failures < 6 || !errors.Is(stA.Err, refused) || stA.RetryAt.Sub(clk.Now()) < 3*time.Second {
		t.Fatalf("pool A status %+v; want >= 6 failures, the refusal, a retry >= 3s away", stA)
	}
	// B changes: it reaches the backend MinInterval later, not at A's retry.
	changedAt := clk.Now()
	b.Destinations = []Destination{dest("10.0.2.1", 0, 7)}
	v := r.Update(b)
	due = h.settle()
	if due.Sub(changedAt) > r.MinInterval {
		t.Fatalf("B's change scheduled %v after it was made; want within MinInterval (%v)", due.Sub(changedAt), r.MinInterval)
	}
	h.advance(due)
	if w := f.Table()[dns].Destinations[0].Weight; w != 7 {
		t.Fatalf("B's weight %d at +%v, want 7", w, clk.Now().Sub(changedAt))
	}
	stB, ok := r.Status(dns)
	if !ok || stB.Applied < v || stB.Err != nil {
		t.Errorf("pool B status %+v (ok %v); want applied >= %d, no error", stB, ok, v)
	}
	if errs := r.Errors(); len(errs) != 1 || !errors.Is(errs[web], refused) {
		t.Errorf("Errors() = %v; want only pool A's refusal", errs)
	}
	// A's good destination is programmed; its retry keeps its own schedule.
	if got := len(f.Table()[web].Destinations); got != 1 {
		t.Errorf("pool A has %d destinations in the backend, want the good one", got)
	}
	if st, _ := r.Status(web); st.Failures != stA.Failures {
		t.Errorf("A was retried early by B's pass: failures %d -> %d", stA.Failures, st.Failures)
	}
}

// A failure of the backend as a whole (the service dump) backs off every pool.
func TestWholeBackendFailureBacksOff(t *testing.T) {
	f := NewFake()
	r, _, clk := newTestReconciler(t, f)
	f.SetFailure(func(op string, _ ServiceKey, _ Destination) error {
		if op == OpDumpServices {
			return errors.New("netlink: connection refused")
		}
		return nil
	})
	r.Set([]Pool{{Service: Service{ServiceKey: web, Scheduler: "wrr"}}})
	h := startRun(t, r, clk)
	due := h.settle()
	var gaps []time.Duration
	for range 4 {
		at := due
		due = h.advance(due)
		gaps = append(gaps, due.Sub(at))
	}
	if !slices.Equal(gaps, []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond}) {
		t.Errorf("retry gaps %v; want exponential", gaps)
	}
	f.SetFailure(nil)
	h.advance(due)
	if _, ok := f.Table()[web]; !ok {
		t.Error("not converged after the backend recovered")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// metricValue reads a counter or gauge (testutil would need a module outside go.mod).
func metricValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatal("not a counter or gauge")
	return 0
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// When every operation fails (the backend is gone), the pass error stays short and
// still wraps the cause.
func TestManyErrorsStayReadable(t *testing.T) {
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	gone := errors.New("netns gone")
	f.SetFailure(func(op string, _ ServiceKey, _ Destination) error {
		if op == OpAddDestination {
			return gone
		}
		return nil
	})
	r.Set(benchTable(3, 100))
	err := r.Reconcile(context.Background(), false)
	if !errors.Is(err, gone) {
		t.Fatalf("err = %v", err)
	}
	if n := strings.Count(err.Error(), "netns gone"); n != 5 || !strings.Contains(err.Error(), "(and 295 more errors)") {
		t.Errorf("error lists %d causes:\n%s", n, err)
	}
}

// A service added to the config later is looked up in the kernel first (adopted if
// there), and a pass after a change to one pool touches only that pool.
func TestConfigGrowsAndIncrementalScope(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	a := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 1)}}
	r.Set([]Pool{a})
	mustPass(t, r, false)
	// Someone (an older kubal) already has the DNS service in the kernel.
	must(t, f.AddService(ctx, Service{ServiceKey: dns, Scheduler: "rr"}))
	must(t, f.AddDestination(ctx, dns, dest("10.0.1.9", 0, 1)))
	f.ResetCalls()
	b := Pool{Service: Service{ServiceKey: dns, Scheduler: "rr"}, Destinations: []Destination{dest("10.0.1.9", 0, 1)}}
	r.Set([]Pool{a, b})
	mustPass(t, r, false)
	if c := f.Calls(); c[OpAddService] != 0 || c[OpDumpServices] != 1 || c[OpAddDestination] != 0 {
		t.Errorf("new config service already in the kernel: %v; want one dump, adoption, no add", c)
	}
	f.ResetCalls()
	b.Destinations = []Destination{dest("10.0.1.9", 0, 4)}
	r.Set([]Pool{a, b})
	mustPass(t, r, false)
	if c := f.Calls(); len(c) != 1 || c[OpUpdateDestination] != 1 {
		t.Errorf("one weight change: %v", c)
	}
	if got := f.Table()[dns].Destinations[0].Weight; got != 4 {
		t.Errorf("weight %d, want 4", got)
	}
}

// batchFake is a batching backend (as Netlink is) over the Fake.
type batchFake struct {
	*Fake
	batches []int
}

func (b *batchFake) applyBatch(ctx context.Context, cs []change) []error {
	b.batches = append(b.batches, len(cs))
	errs := make([]error, len(cs))
	for i, c := range cs {
		errs[i] = c.do(ctx, b.Fake)
	}
	return errs
}

func TestBatchingBackend(t *testing.T) {
	f := NewFake()
	bf := &batchFake{Fake: f}
	r, _, c := newTestReconciler(t, bf)
	boom := errors.New("EBUSY")
	f.SetFailure(func(op string, _ ServiceKey, d Destination) error {
		if op == OpAddDestination && d.Addr == netip.MustParseAddr("10.0.1.3") {
			return boom
		}
		return nil
	})
	a, b, x := dest("10.0.1.1", 0, 10), dest("10.0.1.2", 0, 10), dest("10.0.1.3", 0, 10)
	p := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{a, b, x}, Drain: true, DrainTimeout: time.Second}
	r.Set([]Pool{p})
	if err := r.Reconcile(context.Background(), false); !errors.Is(err, boom) {
		t.Fatalf("pass: %v", err)
	}
	if !slices.Equal(bf.batches, []int{3}) {
		t.Errorf("batches %v, want one of 3 destinations", bf.batches)
	}
	f.SetFailure(nil)
	c.Step(r.MinInterval) // the pool's backoff
	mustPass(t, r, false) // fresh read, adds the missing one
	if len(f.Table()[web].Destinations) != 3 {
		t.Fatalf("table %v", table(f))
	}
	// Drain through batches: weight 0, then removal after the timeout.
	must(t, f.SetConns(web, b.Addr, 0, 2, 0))
	p.Destinations = []Destination{a, x}
	r.Set([]Pool{p})
	mustPass(t, r, false)
	if d := destOf(t, f, web, "10.0.1.2"); d.Weight != 0 {
		t.Fatalf("draining destination %+v", d)
	}
	c.Step(2 * time.Second)
	mustPass(t, r, false)
	if len(f.Table()[web].Destinations) != 2 || len(r.draining) != 0 {
		t.Errorf("after drain timeout: %v, draining %v", table(f), r.draining)
	}
}

// Update and Remove change one pool; Status says which version is in the backend.
func TestUpdateRemoveStatus(t *testing.T) {
	f := NewFake()
	r, _, clk := newTestReconciler(t, f)
	a := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 1), dest("10.0.1.2", 0, 1)}}
	b := Pool{Service: Service{ServiceKey: dns, Scheduler: "rr"}, Destinations: []Destination{dest("10.0.2.1", 0, 1)}}
	va := r.Update(a)
	vb := r.Update(b)
	if st, ok := r.Status(web); !ok || st.Version != va || st.Applied != 0 {
		t.Fatalf("before a pass: %+v %v; want version %d, nothing applied", st, ok, va)
	}
	mustPass(t, r, false)
	for k, v := range map[ServiceKey]uint64{web: va, dns: vb} {
		if st, _ := r.Status(k); st.Applied != v || st.Version != v || st.Err != nil {
			t.Errorf("%s: %+v, want version %d applied", k, st, v)
		}
	}
	if v := r.Update(a); v != va {
		t.Errorf("an unchanged pool got version %d, want %d", v, va)
	}
	a.Destinations = []Destination{dest("10.0.1.1", 0, 1), dest("10.0.1.2", 0, 5)}
	v2 := r.Update(a)
	if st, _ := r.Status(web); v2 <= va || st.Version != v2 || st.Applied != va {
		t.Fatalf("after Update: %+v, want version %d > applied %d", st, v2, va)
	}
	f.ResetCalls()
	mustPass(t, r, false)
	if c := f.Calls(); len(c) != 1 || c[OpUpdateDestination] != 1 {
		t.Errorf("one weight change through Update: %v", c)
	}
	if st, _ := r.Status(web); st.Applied != v2 {
		t.Errorf("applied %d, want %d", st.Applied, v2)
	}
	// Removing a pool whose deletion fails: an error of that pool, retried.
	f.SetFailure(func(op string, _ ServiceKey, _ Destination) error {
		if op == OpDeleteService {
			return errors.New("EBUSY")
		}
		return nil
	})
	vr := r.Remove(web)
	if err := r.Reconcile(context.Background(), false); err == nil {
		t.Fatal("the test expects the deletion to fail")
	}
	if st, ok := r.Status(web); !ok || !st.Removing || st.Version != vr || st.Err == nil || st.Failures != 1 {
		t.Errorf("failed removal: %+v %v", st, ok)
	}
	f.SetFailure(nil)
	clk.Step(r.MinInterval)
	mustPass(t, r, false)
	if _, ok := f.Table()[web]; ok {
		t.Error("removed pool still in the backend")
	}
	if st, ok := r.Status(web); ok {
		t.Errorf("status of a removed pool: %+v", st)
	}
	if _, ok := f.Table()[dns]; !ok {
		t.Error("the other pool was touched")
	}
	// Removing a key never desired is a no-op.
	r.Remove(othr)
	if _, ok := r.Status(othr); ok {
		t.Error("status for a key never desired")
	}
}

// A random walk of single-pool changes (weights, additions, removals, reordering,
// duplicates, KeepExtra) through Update with incremental passes, and an occasional
// full resync: the backend always equals the desired pools, and a full resync after
// an incremental pass finds nothing to repair (the cheap diff and the full one agree).
func TestRandomUpdatesConverge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	f := NewFake()
	r, _, _ := newTestReconciler(t, f)
	keys := []ServiceKey{web, dns, othr}
	pools := map[ServiceKey]Pool{}
	for _, k := range keys {
		pools[k] = Pool{Service: Service{ServiceKey: k, Scheduler: "wrr"}}
	}
	addrs := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 3, byte(i + 1)}) }
	for step := range 2000 {
		k := keys[rng.IntN(len(keys))]
		p := pools[k]
		ds := slices.Clone(p.Destinations)
		switch op := rng.IntN(10); {
		case op < 5 && len(ds) > 0: // weight
			ds[rng.IntN(len(ds))].Weight = rng.IntN(4)
		case op < 7 && len(ds) < 10: // add
			a := addrs(rng.IntN(12))
			if !slices.ContainsFunc(ds, func(d Destination) bool { return d.Addr == a }) {
				ds = append(ds, Destination{Addr: a, Weight: rng.IntN(4)})
			}
		case op < 8 && len(ds) > 0: // remove
			i := rng.IntN(len(ds))
			ds = slices.Delete(ds, i, i+1)
		case op < 9: // reorder
			rng.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
		case rng.IntN(3) == 0 && len(ds) > 0: // listed twice, another weight: the first wins
			d := ds[rng.IntN(len(ds))]
			d.Weight = 9
			ds = append(ds, d)
		default:
			p.KeepExtra = !p.KeepExtra
		}
		p.Destinations = ds
		pools[k] = p
		r.Update(p)
		mustPass(t, r, step%17 == 0)
		for _, k := range keys {
			got := map[netip.Addr]int{}
			for _, d := range f.Table()[k].Destinations {
				got[d.Addr] = d.Weight
			}
			want := map[netip.Addr]int{}
			for _, d := range pools[k].Destinations {
				if _, dup := want[d.Addr]; !dup {
					want[d.Addr] = d.Weight
				}
			}
			if pools[k].KeepExtra {
				for a := range got {
					if _, ok := want[a]; !ok {
						want[a] = got[a]
					}
				}
			}
			if !maps.Equal(got, want) {
				t.Fatalf("step %d, %s: backend %v, want %v", step, k, got, want)
			}
		}
	}
	f.ResetCalls()
	mustPass(t, r, true)
	if c := f.Calls(); c[OpAddDestination]+c[OpUpdateDestination]+c[OpDeleteDestination] != 0 {
		t.Errorf("a full resync after incremental passes repaired %v", c)
	}
}

// WaitApplied answers "is my change in the kernel yet?" without polling: it returns
// when the pass applied the version, or with the error of a failed attempt.
func TestWaitApplied(t *testing.T) {
	f := NewFake()
	r, _, clk := newTestReconciler(t, f)
	ctx := context.Background()
	wait := func(v uint64) chan error {
		ch := make(chan error, 1)
		go func() { _, err := r.WaitApplied(ctx, web, v); ch <- err }()
		return ch
	}
	result := func(ch chan error) error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(5 * time.Second): // a failsafe
			t.Fatal("WaitApplied did not return")
			return nil
		}
	}
	p := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 1)}}
	v := r.Update(p)
	ch := wait(v)
	select {
	case err := <-ch:
		t.Fatalf("returned before any pass: %v", err)
	default:
	}
	mustPass(t, r, false)
	if err := result(ch); err != nil {
		t.Fatalf("applied version: %v", err)
	}
	// A failed attempt returns its error.
	boom := errors.New("EINVAL")
	f.SetFailure(func(op string, _ ServiceKey, _ Destination) error {
		if op == OpUpdateDestination {
			return boom
		}
		return nil
	})
	p.Destinations = []Destination{dest("10.0.1.1", 0, 2)}
	v = r.Update(p)
	ch = wait(v)
	if err := r.Reconcile(ctx, false); !errors.Is(err, boom) {
		t.Fatalf("pass: %v", err)
	}
	if err := result(ch); !errors.Is(err, boom) {
		t.Fatalf("WaitApplied after a failed attempt: %v, want %v", err, boom)
	}
	// The retry succeeds: applied.
	f.SetFailure(nil)
	clk.Step(r.MinInterval)
	mustPass(t, r, false)
	if st, err := r.WaitApplied(ctx, web, v); err != nil || st.Applied < v {
		t.Errorf("after the retry: %+v, %v", st, err)
	}
	// Context ends first.
	p.Destinations = []Destination{dest("10.0.1.1", 0, 3)}
	v = r.Update(p)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.WaitApplied(cctx, web, v); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}

// Set is the whole world: keys it leaves out are removed; a key listed twice is
// logged and the last one wins.
func TestSetWholeWorld(t *testing.T) {
	f := NewFake()
	var logs bytes.Buffer
	r := NewReconciler(f, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	a := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 1)}}
	a2 := Pool{Service: Service{ServiceKey: web, Scheduler: "wrr"}, Destinations: []Destination{dest("10.0.1.1", 0, 2)}}
	b := Pool{Service: Service{ServiceKey: dns, Scheduler: "rr"}, Destinations: []Destination{dest("10.0.2.1", 0, 1)}}
	c := Pool{Service: Service{ServiceKey: othr, Scheduler: "rr"}}
	r.Set([]Pool{a, b, c, a2})
	mustPass(t, r, false)
	if !strings.Contains(logs.String(), "configured twice") {
		t.Errorf("duplicate not logged:\n%s", logs.String())
	}
	if w := destOf(t, f, web, "10.0.1.1").Weight; w != 2 {
		t.Errorf("duplicate key: weight %d, want the last one's 2", w)
	}
	r.Set([]Pool{b})
	mustPass(t, r, false)
	if got := len(f.Table()); got != 1 {
		t.Errorf("after a Set of one pool the backend has %d services: %v", got, table(f))
	}
	if _, ok := r.Status(web); ok {
		t.Error("a pool left out of Set still has a status")
	}
}
