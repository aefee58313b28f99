package service

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"
)

// chanSource delivers the sets sent on its channel.
type chanSource struct{ sets chan source.Set }

func (c chanSource) Run(ctx context.Context, ev source.Events) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-c.sets:
			ev.Update(s)
		}
	}
}

// memStore is an in-memory admin.Store.
type memStore struct {
	mu   sync.Mutex
	in   admin.Intent
	subs []func(admin.Intent)
}

func (m *memStore) String() string { return "memory" }

func (m *memStore) Watch(ctx context.Context, out func(admin.Intent)) {
	m.mu.Lock()
	m.subs = append(m.subs, out)
	out(m.in)
	m.mu.Unlock()
	<-ctx.Done()
}

func (m *memStore) Apply(_ context.Context, ch admin.Change, check admin.Check) (admin.Receipt, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	after := m.in.With(ch)
	if check != nil {
		if err := check(m.in, after); err != nil {
			return admin.Receipt{}, err
		}
	}
	after.Revision++
	m.in = after
	for _, f := range m.subs {
		f(m.in)
	}
	return admin.Receipt{Revision: after.Revision}, nil
}

func start(t *testing.T, threshold float64, health bool) (*Service, chanSource, *memStore) {
	t.Helper()
	src := chanSource{sets: make(chan source.Set, 8)}
	st := &memStore{in: admin.Intent{Revision: 1, Loaded: true}}
	cfg := &config.Service{Name: "web_80", DepoolThreshold: threshold}
	s := New(cfg, Deps{Source: src, Store: st, Log: slog.New(slog.DiscardHandler), Health: health,
		Resolve: func(context.Context, string, bool) (netip.Addr, error) { return netip.Addr{}, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, src, st
}

func nodes(down string) source.Set {
	set := source.Set{}
	for i, h := range []string{"n1", "n2", "n3", "n4"} {
		set[h] = source.Server{Host: h, Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), Weight: 1, Enabled: true, Down: down}
	}
	return set
}

// waitState waits for a published State that satisfies ok.
func waitState(t *testing.T, s *Service, what string, ok func(*State) bool) *State {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		st := s.State()
		if ok(st) {
			return st
		}
		select {
		case <-st.Next():
		case <-deadline:
			t.Fatalf("%s: not reached; last state %+v", what, st.Snapshot)
		}
	}
}

func pooled(st *State) int {
	n := 0
	for _, sv := range st.Snapshot.Servers {
		if sv.Pooled {
			n++
		}
	}
	return n
}

// Issue 12 defect 6: every node NotReady (kubelets cut from the API server) must not
// empty the pool: Kubernetes health is held to the depool threshold.
func TestKubernetesHealthHeldToThreshold(t *testing.T) {
	s, src, _ := start(t, 0.5, true)
	src.sets <- nodes("")
	waitState(t, s, "4 pooled", func(st *State) bool { return st.Synced && pooled(st) == 4 })
	src.sets <- nodes("not Ready (Ready=Unknown)")
	st := waitState(t, s, "health applied", func(st *State) bool {
		for _, sv := range st.Snapshot.Servers {
			if sv.Monitors[HealthMonitor].Up {
				return false
			}
		}
		return len(st.Snapshot.Servers) == 4
	})
	if n := pooled(st); n != 2 {
		t.Errorf("%d pooled with every node NotReady, want 2 (threshold 0.5 x 4)", n)
	}
	for _, sv := range st.Snapshot.Servers {
		if !sv.Enabled {
			t.Errorf("%s disabled by a health signal", sv.Host)
		}
	}
	src.sets <- nodes("")
	waitState(t, s, "all back", func(st *State) bool { return pooled(st) == 4 })
}

// An admin change returns once a State with it is published, and gates the servers.
func TestApplyReturnsWhenInForce(t *testing.T) {
	s, src, _ := start(t, 0.5, false)
	src.sets <- nodes("")
	waitState(t, s, "synced", func(st *State) bool { return st.Synced && pooled(st) == 4 })
	old, cur, err := s.Apply(context.Background(), admin.Change{Host: "n2", Op: admin.OpDepool, Actor: "sre", Reason: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	if !old.Enabled || cur.Enabled || cur.Pooled || cur.Why != "depooled by admin (sre): disk" {
		t.Errorf("old %+v new %+v", old, cur)
	}
	if _, _, err := s.Apply(context.Background(), admin.Change{Host: "n1", Op: admin.OpDepool}); err != nil {
		t.Fatal(err)
	}
	// 4 x 0.5 = 2: a third depool is refused and nothing changes.
	if _, _, err := s.Apply(context.Background(), admin.Change{Host: "n3", Op: admin.OpDepool}); err == nil {
		t.Fatal("a depool below the threshold was accepted")
	}
	if sv, _ := s.State().Snapshot.Server("n3"); !sv.Enabled {
		t.Error("a refused depool changed n3")
	}
	// A source that disables a server: pool stores, the answer shows it still disabled.
	set := nodes("")
	set["n4"] = source.Server{Host: "n4", Addr: set["n4"].Addr, Weight: 1, Reason: "cordoned"}
	src.sets <- set
	waitState(t, s, "n4 disabled", func(st *State) bool { sv, _ := st.Snapshot.Server("n4"); return !sv.Enabled })
	_, cur, err = s.Apply(context.Background(), admin.Change{Host: "n4", Op: admin.OpPool})
	if err != nil || cur.Enabled || cur.Why != "cordoned" {
		t.Errorf("pool of a source-disabled server: %+v, %v", cur, err)
	}
}

// A reload's Reconfigure returns once State() shows the new config: the daemon replans
// from State() straight after, and a caller of Reload reads /pools. (CI run 22 saw the
// old threshold after a successful Reload: the ack came before the publish.)
func TestReconfigureReturnsWhenPublished(t *testing.T) {
	s, src, _ := start(t, 0.5, false)
	src.sets <- nodes("")
	waitState(t, s, "synced", func(st *State) bool { return st.Synced && pooled(st) == 4 })
	for i := range 300 {
		cfg := &config.Service{Name: "web_80", DepoolThreshold: float64(i%10+1) / 10}
		if err := s.Reconfigure(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		if st := s.State(); st.Config != cfg || st.Snapshot.Threshold != cfg.DepoolThreshold {
			t.Fatalf("reconfigure %d returned before its publish: threshold %v, want %v", i, st.Snapshot.Threshold, cfg.DepoolThreshold)
		}
	}
}

// A Reconfigure sent to a service that has stopped returns at once (its input queue
// is buffered, so the send succeeds), rather than waiting out its ctx.
func TestReconfigureOfStoppedService(t *testing.T) {
	src := chanSource{sets: make(chan source.Set, 8)}
	s := New(&config.Service{Name: "web_80"}, Deps{Source: src, Store: &memStore{}, Log: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Run(ctx)
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	err := s.Reconfigure(rctx, &config.Service{Name: "web_80"})
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("reconfigure of a stopped service: %v, want ErrStopped", err)
	}
}

// Issue 13: a host of the other address family (a v6 host in a v4 pool) is an alert,
// not only a log line.
func TestWrongFamilyHostIsAnAlert(t *testing.T) {
	src := chanSource{sets: make(chan source.Set, 1)}
	s := New(&config.Service{Name: "web_80", IP: netip.MustParseAddr("192.0.2.10"), DepoolThreshold: 0.5},
		Deps{Source: src, Store: &memStore{in: admin.Intent{Revision: 1, Loaded: true}}, Log: slog.New(slog.DiscardHandler),
			Resolve: LookupHost})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	src.sets <- source.Set{"2001:db8::1": {Host: "2001:db8::1", Weight: 10, Enabled: true}}
	st := waitState(t, s, "resolve failed", func(st *State) bool { return st.Synced && len(st.Alerts()) > 0 })
	if a := st.Alerts(); len(a) != 1 || !strings.Contains(a[0], "2001:db8::1 is not pooled: resolve failed: 2001:db8::1 is not of the VIP's address family") {
		t.Errorf("alerts %q", a)
	}
}

// At most n lookups run at once, whatever the number of names.
func TestBoundedResolver(t *testing.T) {
	var mu sync.Mutex
	running, most := 0, 0
	slow := func(ctx context.Context, host string, v6 bool) (netip.Addr, error) {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		mu.Lock()
		running--
		mu.Unlock()
		return netip.Addr{}, nil
	}
	r := Bounded(slow, 4)
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() { _, _ = r(context.Background(), "x", false) })
	}
	wg.Wait()
	if most != 4 {
		t.Errorf("%d lookups at once, want at most (and, with 100 waiting, exactly) 4", most)
	}
}

// Issue 18 (found by the ECMP rig): a host name added to a settled pool resolves
// while the service stays settled, so an active-active director keeps its VIP
// announced (plan.Announcing) and the plan does not fall back to keeping the kernel.
func TestSettledStaysSettledWhileANewHostResolves(t *testing.T) {
	src := chanSource{sets: make(chan source.Set, 2)}
	release := make(chan struct{})
	resolve := func(ctx context.Context, host string, v6 bool) (netip.Addr, error) {
		select {
		case <-release:
			return netip.MustParseAddr("10.0.0.9"), nil
		case <-ctx.Done():
			return netip.Addr{}, ctx.Err()
		}
	}
	s := New(&config.Service{Name: "web_80", DepoolThreshold: 0.5},
		Deps{Source: src, Store: &memStore{in: admin.Intent{Revision: 1, Loaded: true}}, Log: slog.New(slog.DiscardHandler), Resolve: resolve})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { close(release); cancel(); <-done }()

	set := nodes("")
	src.sets <- set
	waitState(t, s, "settled", func(st *State) bool { return st.Settled })
	set = nodes("")
	set["new.example.org"] = source.Server{Host: "new.example.org", Weight: 1, Enabled: true}
	src.sets <- set
	st := waitState(t, s, "the new host resolving", func(st *State) bool {
		sv, ok := st.Snapshot.Server("new.example.org")
		return ok && sv.Why == "resolving"
	})
	if !st.Settled {
		t.Error("a host added to a settled pool unsettled the service while it resolves")
	}
}
