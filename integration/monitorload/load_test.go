package monitorload

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv("MONITORLOAD_ROLE") == "backend" {
		backend()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestMonitorLoad is the load harness. It re-runs itself in a private network
// namespace (unshare -n, as root) so 12,000 loopback targets, listeners on
// 0.0.0.0 and ~2,000 connections/s touch nothing on the host.
func TestMonitorLoad(t *testing.T) {
	if os.Getenv("KUBAL_MONITOR_LOAD") != "1" {
		t.Skip("load harness: run with KUBAL_MONITOR_LOAD=1 (docs/perf/monitor.md)")
	}
	if os.Getenv("MONITORLOAD_IN_NETNS") != "1" {
		unshare, err := exec.LookPath("unshare")
		if err != nil || os.Geteuid() != 0 {
			t.Fatalf("the harness needs root and unshare(1) for a private network namespace (uid %d, %v)", os.Geteuid(), err)
		}
		cmd := exec.Command(unshare, "-n", os.Args[0], "-test.run=^TestMonitorLoad$", "-test.v", "-test.timeout=20m")
		cmd.Env = append(os.Environ(), "MONITORLOAD_IN_NETNS=1")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("harness in netns: %v", err)
		}
		return
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v %s", err, out)
	}
	raiseNofile()
	runLoad(t)
}

type child struct {
	cmd   *exec.Cmd
	in    io.Writer
	lines chan string
}

func startBackend(t *testing.T) (*child, uint16, uint16) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MONITORLOAD_ROLE=backend")
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, lines: make(chan string, 100_000)}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	f := strings.Fields(c.expect(t, "ready"))
	p1, _ := strconv.Atoi(f[1])
	p2, _ := strconv.Atoi(f[2])
	return c, uint16(p1), uint16(p2)
}

func (c *child) send(format string, args ...any) { fmt.Fprintf(c.in, format+"\n", args...) }

// expect returns the next line starting with prefix.
func (c *child) expect(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatal("backend exited")
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("backend: no %q line", prefix)
		}
	}
}

func (c *child) query(t *testing.T, cmd string) int {
	c.send("%s", cmd)
	f := strings.Fields(c.expect(t, cmd))
	n, _ := strconv.Atoi(f[1])
	return n
}

// target is one monitored server and what its watcher saw.
type target struct {
	addr   netip.Addr
	up     atomic.Bool
	downAt atomic.Int64 // unix nanos of the last down report
}

func (tg *target) report(r monitor.Result) {
	if !r.Up {
		tg.downAt.Store(time.Now().UnixNano())
	}
	tg.up.Store(r.Up)
}

func service(name string, kv ...string) *config.Service {
	opts := config.Options{}
	for i := 0; i+1 < len(kv); i += 2 {
		opts[kv[i]] = config.Value{Raw: kv[i+1], Pos: config.Pos{File: "load.conf", Line: i/2 + 1}}
	}
	return &config.Service{Name: name, Port: 80, Options: opts}
}

// addrN is the n-th address of a /16 on the loopback /8.
func addrN(second byte, n int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, second, byte(n >> 8), byte(n)})
}

type mem struct{ heap, stack, rss uint64 }

func measureMem() mem {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{heap: ms.HeapInuse + ms.StackInuse + ms.MSpanInuse + ms.MCacheInuse, stack: ms.StackInuse, rss: rss()}
}

func rss() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseUint(strings.Fields(l)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func counterSum(t *testing.T, g prometheus.Gatherer, name, monitorName string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "monitor" && lp.GetValue() == monitorName {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

func runLoad(t *testing.T) {
	nIdle := envInt("KUBAL_MONITOR_LOAD_IDLE", 10_000)
	nFetch := envInt("KUBAL_MONITOR_LOAD_FETCH", 2_000)
	fetchInterval := time.Duration(envInt("KUBAL_MONITOR_LOAD_FETCH_INTERVAL_MS", 1000)) * time.Millisecond
	window := time.Duration(envInt("KUBAL_MONITOR_LOAD_WINDOW_S", 30)) * time.Second
	nRST := envInt("KUBAL_MONITOR_LOAD_RST", 500)

	load0 := loadavg()
	c, idlePort, webPort := startBackend(t)
	reg := prometheus.NewRegistry()
	m := monitor.NewManager(reg, slog.New(slog.DiscardHandler))
	defer m.Close()

	base := measureMem()
	cpu0, wall0 := cpuTime(), time.Now()

	// Phase 1: 10,000 IdleConnection monitors, one per server address.
	idleSvc := service("idle_80", "idleconnection.max-delay", "300", "idleconnection.timeout-clean-reconnect", "3")
	idle := make([]*target, nIdle)
	byAddr := map[netip.Addr]*target{}
	for i := range idle {
		tg := &target{addr: addrN(1, i+1)}
		idle[i], byAddr[tg.addr] = tg, tg
		if _, err := m.Watch(idleSvc, "IdleConnection", monitor.Target{Host: tg.addr.String(), Addr: tg.addr, Port: idlePort}, tg.report); err != nil {
			t.Fatal(err)
		}
	}
	upAll := func(ts []*target) func() bool {
		return func() bool {
			for _, tg := range ts {
				if !tg.up.Load() {
					return false
				}
			}
			return true
		}
	}
	took := testutil.Eventually(t, 60*time.Second, "all idle monitors up", upAll(idle))
	if n := c.query(t, "conns"); n != nIdle {
		t.Fatalf("backend holds %d connections, want %d", n, nIdle)
	}
	t.Logf("phase 1: %d IdleConnection monitors up in %v (start-up spread 1s)", nIdle, took.Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	cpuIdle0, wallIdle0 := cpuTime(), time.Now()
	time.Sleep(10 * time.Second)
	idleCPU := float64(cpuTime()-cpuIdle0) / float64(time.Since(wallIdle0))
	memIdle := measureMem()

	// Phase 1b: RST nRST idle connections over 5s, no other load; time from
	// close() in the backend to the down report here.
	rstEvents1, rstMissed1, rstLat1 := rstPhase(t, c, idle, byAddr, nRST)
	// Let the RST monitors reconnect (backoff ~2.7s) before phase 2.
	testutil.Eventually(t, 30*time.Second, "RST monitors reconnected", upAll(idle))

	// Phase 2: ProxyFetch monitors, one per server address, nFetch/interval checks/s.
	fetchSvc := service("web_80", "proxyfetch.url", "['http://health.example.org/healthz/ready']",
		"proxyfetch.interval", strconv.FormatFloat(fetchInterval.Seconds(), 'f', -1, 64),
		"proxyfetch.port", strconv.Itoa(int(webPort)))
	fetch := make([]*target, nFetch)
	for i := range fetch {
		tg := &target{addr: addrN(2, i+1)}
		fetch[i] = tg
		if _, err := m.Watch(fetchSvc, "ProxyFetch", monitor.Target{Host: tg.addr.String(), Addr: tg.addr, Port: 80}, tg.report); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 3*fetchInterval+10*time.Second, "all ProxyFetch monitors up", upAll(fetch))
	if m.Probes() != nIdle+nFetch {
		t.Fatalf("%d probes, want %d", m.Probes(), nIdle+nFetch)
	}
	time.Sleep(2 * time.Second)
	results0 := counterSum(t, reg, "pybal_monitor_up_results_total", "ProxyFetch") + counterSum(t, reg, "pybal_monitor_down_results_total", "ProxyFetch")
	hits0 := c.query(t, "hits")
	if f := os.Getenv("KUBAL_MONITOR_LOAD_CPUPROFILE"); f != "" {
		pf, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		pprof.StartCPUProfile(pf)
	}
	cpuA, wallA := cpuTime(), time.Now()
	time.Sleep(window)
	cpuB, wallB := cpuTime(), time.Now()
	pprof.StopCPUProfile()
	hits1 := c.query(t, "hits")
	results1 := counterSum(t, reg, "pybal_monitor_up_results_total", "ProxyFetch") + counterSum(t, reg, "pybal_monitor_down_results_total", "ProxyFetch")
	steadyCPU := float64(cpuB-cpuA) / float64(wallB.Sub(wallA))
	checksPerSec := (results1 - results0) / wallB.Sub(wallA).Seconds()
	hitsPerSec := float64(hits1-hits0) / wallB.Sub(wallA).Seconds()
	memAll := measureMem()
	if f := os.Getenv("KUBAL_MONITOR_LOAD_HEAPPROFILE"); f != "" {
		pf, err := os.Create(f)
		if err != nil {
			t.Fatal(err)
		}
		pprof.WriteHeapProfile(pf)
		pf.Close()
	}
	for _, tg := range fetch {
		if !tg.up.Load() {
			t.Errorf("ProxyFetch %s went down in steady state", tg.addr)
		}
	}

	// Phase 3: the same RST measurement with the ProxyFetch load running.
	sched0 := schedLatencies()
	rstEvents2, rstMissed2, rstLat2 := rstPhase(t, c, idle, byAddr, nRST)
	schedP50, schedP99 := sched0.since(schedLatencies())

	// Phase 4: flip every HTTP answer to 503; time from the flip to each down.
	for _, tg := range fetch {
		tg.downAt.Store(0)
	}
	c.send("status 503")
	flip, _ := strconv.ParseInt(strings.Fields(c.expect(t, "status"))[1], 10, 64)
	testutil.Eventually(t, 2*fetchInterval+5*time.Second, "all ProxyFetch monitors down", func() bool {
		for _, tg := range fetch {
			if tg.downAt.Load() == 0 {
				return false
			}
		}
		return true
	})
	var fetchLat []time.Duration
	for _, tg := range fetch {
		fetchLat = append(fetchLat, time.Duration(tg.downAt.Load()-flip))
	}
	slices.Sort(fetchLat)
	totalCPU := float64(cpuTime()-cpu0) / float64(time.Since(wall0))

	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	kib := func(b uint64, n int) float64 { return float64(b) / 1024 / float64(n) }
	t.Logf("GOMAXPROCS=%d NumCPU=%d go=%s", runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.Version())
	t.Logf("memory: base heap %.1f MiB rss %.1f MiB", mib(base.heap), mib(base.rss))
	t.Logf("memory per IdleConnection monitor (%d): heap %.2f KiB, rss %.2f KiB (target < 16 KiB)",
		nIdle, kib(memIdle.heap-base.heap, nIdle), kib(memIdle.rss-base.rss, nIdle))
	t.Logf("memory per monitor, all %d: heap %.2f KiB, rss %.2f KiB; per ProxyFetch monitor: heap %.2f KiB",
		nIdle+nFetch, kib(memAll.heap-base.heap, nIdle+nFetch), kib(memAll.rss-base.rss, nIdle+nFetch),
		float64(int64(memAll.heap)-int64(memIdle.heap))/1024/float64(nFetch))
	t.Logf("memory: goroutine stacks %.2f KiB per IdleConnection monitor, %.2f KiB per ProxyFetch monitor",
		kib(memIdle.stack-base.stack, nIdle), float64(int64(memAll.stack)-int64(memIdle.stack))/1024/float64(nFetch))
	t.Logf("cpu: %d idle monitors alone %.4f cores", nIdle, idleCPU)
	t.Logf("cpu: steady state %d idle + %d ProxyFetch: %.3f cores over %v; %.0f checks/s (backend saw %.0f req/s) (target < 0.5 core)",
		nIdle, nFetch, steadyCPU, window, checksPerSec, hitsPerSec)
	t.Logf("cpu: whole run incl. start-up and phases 3-4: %.3f cores", totalCPU)
	t.Logf("RST -> down, idle monitors only (%d RSTs, %d missed): p50 %v p99 %v max %v (target p99 < 5ms)",
		rstEvents1, rstMissed1, percentile(rstLat1, .5), percentile(rstLat1, .99), percentile(rstLat1, 1))
	t.Logf("RST -> down, with the ProxyFetch load (%d RSTs, %d missed): p50 %v p99 %v max %v (target p99 < 5ms)",
		rstEvents2, rstMissed2, percentile(rstLat2, .5), percentile(rstLat2, .99), percentile(rstLat2, 1))
	t.Logf("Go scheduler latency (runnable -> running) during that phase: p50 %v p99 %v", schedP50, schedP99)
	t.Logf("load average at start: %s; at end: %s", load0, loadavg())
	t.Logf("503 -> down (%d monitors, interval %v): p50 %v p99 %v max %v (target max < interval + 10ms = %v)",
		nFetch, fetchInterval, percentile(fetchLat, .5), percentile(fetchLat, .99), percentile(fetchLat, 1), fetchInterval+10*time.Millisecond)
}

// rstPhase RSTs n idle connections over 5s and returns how many, how many were
// not seen as down, and the sorted RST-to-down latencies.
func rstPhase(t *testing.T, c *child, idle []*target, byAddr map[netip.Addr]*target, n int) (int, int, []time.Duration) {
	for _, tg := range idle {
		tg.downAt.Store(0)
	}
	c.send("rst %d %d", n, 5000)
	type rstEvent struct {
		addr      netip.Addr
		at, after int64
	}
	var events []rstEvent
	for {
		l := c.expect(t, "rst")
		if l == "rstdone" {
			break
		}
		f := strings.Fields(l)
		at, _ := strconv.ParseInt(f[2], 10, 64)
		after, _ := strconv.ParseInt(f[3], 10, 64)
		events = append(events, rstEvent{netip.MustParseAddr(f[1]), at, after})
	}
	time.Sleep(200 * time.Millisecond)
	var lat, fromAfter []time.Duration
	missed := 0
	for _, e := range events {
		d := byAddr[e.addr].downAt.Load()
		if d == 0 || d < e.at {
			missed++
			continue
		}
		lat = append(lat, time.Duration(d-e.at))
		// From close() returning in the backend: a lower bound that leaves out
		// the backend being descheduled around the syscall (may be negative).
		fromAfter = append(fromAfter, time.Duration(d-e.after))
	}
	slices.Sort(lat)
	slices.Sort(fromAfter)
	t.Logf("  (same RSTs timed from after close() returned: p50 %v p99 %v max %v)",
		percentile(fromAfter, .5), percentile(fromAfter, .99), percentile(fromAfter, 1))
	return len(events), missed, lat
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// schedHist is a snapshot of the Go runtime's scheduling-latency histogram: how
// long goroutines wait runnable before they run (CPU starvation shows here).
type schedHist struct {
	counts  []uint64
	buckets []float64
}

func schedLatencies() schedHist {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	h := s[0].Value.Float64Histogram()
	return schedHist{counts: slices.Clone(h.Counts), buckets: h.Buckets}
}

// since returns p50 and p99 of the latencies recorded between h and later.
func (h schedHist) since(later schedHist) (time.Duration, time.Duration) {
	var total uint64
	diff := make([]uint64, len(later.counts))
	for i := range diff {
		diff[i] = later.counts[i] - h.counts[i]
		total += diff[i]
	}
	q := func(p float64) time.Duration {
		want := uint64(float64(total) * p)
		var acc uint64
		for i, c := range diff {
			acc += c
			if acc >= want && c > 0 {
				return time.Duration(later.buckets[i+1] * float64(time.Second))
			}
		}
		return 0
	}
	return q(.5), q(.99)
}
