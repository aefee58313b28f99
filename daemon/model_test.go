package daemon

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/plan"
	"github.com/kubal/kubal/service"
)

// The model test drives a whole daemon (fake kernel, real file:// source, real
// ProxyFetch monitors against real HTTP backends, the real state file) through random
// sequences of list changes, source outages, admin actions (some cut off by their
// client), backend health flaps, reloads (threshold changes, source replacements,
// pool-unchecked yes/no: odd seeds start check-first) and restarts, and checks the invariants of issue 12 after every step:
//   - the daemon answers within 1 s;
//   - every acknowledged admin action is in force, also after a restart, and nothing
//     refused is (the model holds exactly the acknowledged intent);
//   - health never takes a pool below its threshold;
//   - a source that has not synced since a restart removes no kernel destination;
//   - the kernel equals plan.Build(config, the services' states).
//
// KUBAL_MODEL_SEQUENCES sets how many sequences run (default 2 in `go test`), each
// from its own seed (KUBAL_MODEL_SEED, default 1). FuzzModel runs it from fuzzed seeds.
func TestModel(t *testing.T) {
	n, seed := 2, uint64(1)
	if v, err := strconv.Atoi(os.Getenv("KUBAL_MODEL_SEQUENCES")); err == nil {
		n = v
	}
	if v, err := strconv.ParseUint(os.Getenv("KUBAL_MODEL_SEED"), 10, 64); err == nil {
		seed = v
	}
	for i := range n {
		t.Run(fmt.Sprintf("seed=%d", seed+uint64(i)), func(t *testing.T) {
			// Side by side: each sequence has its own daemon, rig, ports and fake
			// kernel, and mostly waits in settle.
			t.Parallel()
			runModel(t, seed+uint64(i), 25)
		})
	}
}

func FuzzModel(f *testing.F) {
	f.Add(uint64(7))
	f.Fuzz(func(t *testing.T, seed uint64) { runModel(t, seed, 5) }) // short: the fuzzer drops inputs slower than 10 s
}

var modelHosts = []string{"127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"}

type model struct {
	t    *testing.T
	rnd  *rand.Rand
	r    *rig
	d    *Daemon
	stop func()
	// The source's list and the acknowledged admin intent.
	list      map[string]int // host -> weight
	listBad   bool           // the list file is garbage (a failing read)
	depooled  map[string]bool
	weight    map[string]int
	threshold string
	unchecked string // pool-unchecked: yes (PyBal) or no (check-first)
	viaHTTP   bool   // the service reads its list over http:// instead of file://
	httpURL   string // the same list, served over HTTP
	log       []string
}

func runModel(t *testing.T, seed uint64, steps int) {
	r := newRig(t)
	m := &model{t: t, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), r: r,
		list: map[string]int{}, depooled: map[string]bool{}, weight: map[string]int{}, threshold: "0.5",
		unchecked: []string{"yes", "no"}[seed%2]}
	for _, h := range modelHosts {
		m.list[h] = 10
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b, _ := os.ReadFile(r.list) // the same list as file://
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	m.httpURL = srv.URL + "/servers.json"
	m.writeConf()
	m.writeList()
	m.d, m.stop = startDaemon(t, r)
	m.settle()
	m.check(false)
	defer func() {
		if t.Failed() {
			t.Logf("seed %d, steps:\n  %s", seed, strings.Join(m.log, "\n  "))
		}
	}()
	for i := 0; i < steps && !t.Failed(); i++ {
		m.step()
	}
}

func (m *model) writeConf() {
	m.r.writeConf(m.t, m.threshold, "pool-unchecked = "+m.unchecked)
	b, err := os.ReadFile(m.r.conf)
	if err != nil {
		m.t.Fatal(err)
	}
	s := strings.NewReplacer("proxyfetch.interval = 1", "proxyfetch.interval = 0.2",
		"proxyfetch.timeout = 1", "proxyfetch.timeout = 0.2").Replace(string(b))
	if m.viaHTTP { // a source-scheme change: the daemon replaces the service's actor
		s = strings.Replace(s, "config = file://"+m.r.list, "config = "+m.httpURL, 1)
	}
	// writeConf picks a fresh admin port each time: keep the first one (restart-only).
	if err := os.WriteFile(m.r.conf, []byte(s), 0o644); err != nil {
		m.t.Fatal(err)
	}
}

func (m *model) writeList() {
	if m.listBad {
		m.r.writeList(m.t, "\x00\x01garbage{")
		return
	}
	var parts []string
	keys := mapsKeys(m.list)
	slices.Sort(keys)
	for _, h := range keys {
		parts = append(parts, fmt.Sprintf("%q: {\"weight\": %d}", h, m.list[h]))
	}
	m.r.writeList(m.t, "{"+strings.Join(parts, ", ")+"}")
}

func mapsKeys[V any](mp map[string]V) []string {
	out := make([]string, 0, len(mp))
	for k := range mp {
		out = append(out, k)
	}
	return out
}

func (m *model) logf(format string, args ...any) { m.log = append(m.log, fmt.Sprintf(format, args...)) }

// settle waits until the monitors have run twice and the kernel caught up.
func (m *model) settle() { time.Sleep(700 * time.Millisecond) }

func (m *model) step() {
	host := modelHosts[m.rnd.IntN(len(modelHosts))]
	switch k := m.rnd.IntN(10); k {
	case 0: // the list drops or adds a server (never below two: the deletion guard)
		if _, ok := m.list[host]; ok && len(m.list) > 3 {
			delete(m.list, host)
		} else {
			m.list[host] = 10
		}
		m.logf("list %v", m.list)
		m.writeList()
	case 1: // a weight in the list
		if _, ok := m.list[host]; ok {
			m.list[host] = m.rnd.IntN(20)
			m.logf("list weight %s=%d", host, m.list[host])
			m.writeList()
		}
	case 2: // the source breaks or recovers
		m.listBad = !m.listBad
		m.logf("list bad=%v", m.listBad)
		m.writeList()
	case 3, 4, 5: // an admin action, sometimes cut off by its client
		m.admin(host)
	case 6: // a backend's health flaps
		b := m.r.backends[slices.Index(modelHosts, host)]
		st := int32(200)
		if b.status.Load() == 200 {
			st = 503
		}
		b.status.Store(st)
		m.logf("backend %s -> %d", host, st)
	case 7: // reload with another threshold, or another source scheme
		switch m.rnd.IntN(5) {
		case 0, 1:
			m.viaHTTP = !m.viaHTTP
		case 2, 3:
			m.threshold = []string{"0", "0.5", "0.75"}[m.rnd.IntN(3)]
		default:
			m.unchecked = map[string]string{"yes": "no", "no": "yes"}[m.unchecked]
		}
		m.logf("reload threshold %s, http %v, pool-unchecked %s", m.threshold, m.viaHTTP, m.unchecked)
		before := m.kernel()
		port := m.r.port
		m.writeConf()
		m.r.port = port
		if err := m.d.Reload(context.Background()); err != nil {
			m.t.Fatalf("reload: %v", err)
		}
		// A replaced source that has not synced yet removes no kernel destination.
		if s := m.d.service("web_80"); s != nil && !s.State().Settled {
			after := m.kernel()
			for _, dst := range before {
				if !slices.Contains(after, dst) && !strings.HasSuffix(dst, " w0") {
					m.t.Errorf("a reload removed %s before the new source synced: %v -> %v", dst, before, after)
				}
			}
		}
		if m.listBad && m.d.service("web_80") != nil && !m.d.service("web_80").State().Synced {
			// A source replaced while the list is broken cannot sync (as across a
			// restart with the source down): check what it kept, then mend the list.
			m.settle()
			if after := m.kernel(); !slices.Equal(before, after) {
				m.t.Errorf("a replaced source that never synced changed the kernel: %v -> %v", before, after)
			}
			m.listBad = false
			m.logf("list bad=false (the replaced source must sync)")
			m.writeList()
		}
	case 8, 9: // restart, sometimes with the source down across it
		down := m.rnd.IntN(2) == 0
		m.logf("restart (source down: %v)", down)
		m.restart(down)
		return
	}
	m.settle()
	m.check(false)
}

func (m *model) admin(host string) {
	ctx, cancel := context.WithCancel(context.Background())
	cut := m.rnd.IntN(4) == 0
	if cut {
		cancel()
	}
	defer cancel()
	a := api.Action{Pool: "web_80", Host: host, Actor: "model"}
	switch m.rnd.IntN(3) {
	case 0:
		a.Op = api.OpDepool
	case 1:
		a.Op = api.OpPool
	default:
		a.Op, a.Weight = api.OpWeight, m.rnd.IntN(3)*5
	}
	a.Force = m.rnd.IntN(8) == 0
	_, err := m.d.Apply(ctx, a)
	m.logf("admin %s %s w=%d force=%v cut=%v: %v", a.Op, host, a.Weight, a.Force, cut, err)
	// Stored: acknowledged, or stored but not confirmed (cut off). Anything else
	// stored nothing.
	if err != nil && !errors.Is(err, service.ErrNotInForce) {
		return
	}
	switch a.Op {
	case api.OpDepool:
		m.depooled[host] = true
	case api.OpPool:
		delete(m.depooled, host)
	case api.OpWeight:
		m.weight[host] = a.Weight
	}
}

func (m *model) restart(sourceDown bool) {
	sourceDown = sourceDown || m.listBad
	before := m.kernel()
	m.stop()
	if sourceDown {
		m.listBad = true
		m.writeList()
	}
	m.d, m.stop = startDaemon(m.t, m.r)
	m.settle()
	if sourceDown {
		// Unsynced since the start: every kernel destination stays.
		after := m.kernel()
		for _, dst := range before {
			if !slices.Contains(after, dst) && !strings.HasSuffix(dst, " w0") {
				m.t.Errorf("unsynced source removed %s from the kernel: before %v, after %v", dst, before, after)
			}
		}
		m.listBad = false
		m.writeList()
		m.settle()
	}
	m.check(true)
}

func (m *model) kernel() []string {
	var out []string
	for _, p := range m.r.fake.Table() {
		for _, d := range p.Destinations {
			out = append(out, fmt.Sprintf("%s w%d", d.Addr, d.Weight))
		}
	}
	slices.Sort(out)
	return out
}

func (m *model) check(restarted bool) {
	t := m.t
	t.Helper()
	done := make(chan struct{})
	go func() { m.d.Pools(); m.d.Alerts(); _, _ = m.d.Snapshot("web_80"); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the daemon did not answer within 1 s")
	}
	s := m.d.service("web_80")
	if s == nil {
		t.Fatal("no web_80 service")
	}
	st := s.State()
	if !st.Synced {
		t.Fatalf("not synced after settling: %v", st.Alerts())
	}
	snap := st.Snapshot
	// Acknowledged intent in force (restart included); nothing else.
	for _, sv := range snap.Servers {
		srcWeight, inList := st.Source[sv.Host]
		if !inList {
			continue
		}
		if want := srcWeight.Enabled && !m.depooled[sv.Host]; sv.Enabled != want {
			t.Errorf("%s enabled=%v, want %v (depooled by admin: %v; restarted: %v)", sv.Host, sv.Enabled, want, m.depooled[sv.Host], restarted)
		}
		want := srcWeight.Weight
		if w, ok := m.weight[sv.Host]; ok {
			want = w
		}
		if sv.Weight != want {
			t.Errorf("%s weight %d, want %d", sv.Host, sv.Weight, want)
		}
	}
	// Health never takes the pool below its threshold.
	th, _ := strconv.ParseFloat(m.threshold, 64)
	need := float64(len(snap.Servers)) * th
	pooled, eligible := 0, 0
	for _, sv := range snap.Servers {
		if sv.Pooled {
			pooled++
		}
		if sv.Enabled && sv.Ready {
			eligible++
		}
	}
	if float64(pooled) < min(need, float64(eligible)) {
		t.Errorf("%d pooled of %d (%d eligible), below threshold %s", pooled, len(snap.Servers), eligible, m.threshold)
	}
	// The kernel equals the plan.
	want := plan.Build(m.d.Config(), map[string]plan.Service{"web_80": {Snapshot: snap, Settled: st.Settled}})
	var wantK []string
	for _, d := range want.Pools[0].Destinations {
		wantK = append(wantK, fmt.Sprintf("%s w%d", d.Addr, d.Weight))
	}
	slices.Sort(wantK)
	deadline := time.Now().Add(2 * time.Second)
	for !slices.Equal(m.kernel(), wantK) {
		if time.Now().After(deadline) {
			t.Errorf("kernel %v, plan %v", m.kernel(), wantK)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}
