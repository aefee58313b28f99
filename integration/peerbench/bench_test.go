package peerbench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// scale is how much work each measure does. TCG runs the guest 5-20x slower than the
// host, so the full run is scaled to what finishes in a few minutes per daemon; the
// docs (docs/perf/peers.md) say what was scaled.
type scale struct {
	mode       string
	costSvc    int           // health-check cost and detection: services ...
	costPer    int           // ... of this many real servers each, all distinct
	interval   int           // seconds between checks of one server
	window     time.Duration // CPU measuring window
	settle     time.Duration // flows kept open after a reload or restart is in force
	failures   int           // detection: failures to time (and as many recoveries)
	batch      int           // failures at once, each in its own service
	bigSvc     int           // start, reload, restart: services x 10 real servers
	bigIntvl   int           // their check interval (seconds)
	bigTimeout int           // and timeout (seconds; 0: 1 s, HTTP checks)
	flows      int           // established connections through other services
}

func scaleFromEnv(t testing.TB) scale {
	t.Helper()
	// The smoke run asserts what the full one does (checks reach the backends, every
	// failure and recovery within its bound, reload and restart in force) with 2 s
	// windows: at 20 checks/s that is ~40 checks per measure, and a flow sends 4
	// requests after the change (a request in flight when the flows close still ends
	// within its 3 s deadline and counts, so the shorter settle misses no break).
	s := scale{mode: "smoke", costSvc: 4, costPer: 5, interval: 1, window: 2 * time.Second,
		settle: 2 * time.Second, failures: 20, batch: 4, bigSvc: 20, bigIntvl: 10, flows: 10}
	if os.Getenv("KUBAL_VM_PERF_PEER") == "full" {
		// Measured: under TCG on the shared machine kubal's HTTP checks time out (1 s)
		// above a few dozen checks/s (30 x 10 servers at 1 s never settled), so the
		// cost runs at ~20 checks/s with an idle baseline to split the fixed cost from
		// the cost per check, and start/reload/restart use TCP checks at 60 s with a
		// 30 s timeout so that the first round of checks cannot fail a server.
		s = scale{mode: "full", costSvc: 4, costPer: 10, interval: 2, window: 30 * time.Second,
			settle: 5 * time.Second, failures: 200, batch: 4, bigSvc: 200, bigIntvl: 60, bigTimeout: 30, flows: 50}
	}
	for _, o := range []struct {
		env string
		dst *int
	}{{"KUBAL_VM_PERF_PEER_COST_SERVICES", &s.costSvc}, {"KUBAL_VM_PERF_PEER_SERVICES", &s.bigSvc}, {"KUBAL_VM_PERF_PEER_FAILURES", &s.failures}} {
		if v := os.Getenv(o.env); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive integer", o.env, v)
			}
			*o.dst = n
		}
	}
	s.batch = min(s.batch, s.costSvc)
	return s
}

// cost is the health-check cost of one daemon at one load.
type cost struct {
	checksPerS float64 // measured at the backends
	cores      float64 // CPU seconds per second over the window
	cpuPer1k   float64 // CPU seconds per 1,000 checks = cores at 1,000 checks/s
	marginal   float64 // the same without the idle baseline's cores
	rss, pss   int64
	anon       int64
}

type result struct {
	idle, http, tcp    cost
	detect, recovery   []time.Duration
	start              time.Duration
	reload             time.Duration
	reloadBroken       int
	restart            time.Duration
	stopTook           time.Duration
	incomplete         time.Duration // during the stop + start, the table lacked a destination
	restartBroken      int
	flowsReload, flows int
}

func TestPeerBench(t *testing.T) {
	requireVM(t)
	sc := scaleFromEnv(t)
	for _, bin := range []string{"/usr/sbin/kubal", "/usr/sbin/keepalived", "/sbin/ipvsadm"} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s missing in the VM (integration/peerbench/run.sh packs it): %v", bin, err)
		}
	}
	for _, p := range peers {
		if err := os.MkdirAll(filepath.Join(os.TempDir(), "peerbench-"+p.name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	nServers := max(sc.costSvc*sc.costPer, 10)
	be := topology(t, nServers)
	syslogToFile(t, filepath.Join(os.TempDir(), "peerbench-keepalived", "syslog.log"))
	logf("peerbench %s: %d real server addresses; cost/detection %d services x %d servers, %d s interval; start/reload/restart %d services x 10 servers, %d s interval",
		sc.mode, nServers, sc.costSvc, sc.costPer, sc.interval, sc.bigSvc, sc.bigIntvl)
	res := map[string]*result{}
	for _, p := range peers {
		dir := filepath.Join(os.TempDir(), "peerbench-"+p.name)
		r := &result{}
		res[p.name] = r
		t0 := time.Now()
		measureCost(t, p, dir, sc, be, "idle", r)
		measureCost(t, p, dir, sc, be, "http", r)
		measureCost(t, p, dir, sc, be, "tcp", r)
		measureBig(t, p, dir, sc, r)
		logf("%s: done in %s", p.name, time.Since(t0).Round(time.Second))
	}
	report(sc, res["kubal"], res["keepalived"])
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05.000")}, args...)...)
}

// clearIPVS empties the director's table between daemons and measures.
func clearIPVS(t testing.TB) { sh(t, "ipvsadm", "-C") }

// launch renders d for p and starts it.
func launch(t testing.TB, p peer, dir string, d desc) (*proc, string) {
	t.Helper()
	conf, err := p.render(d, dir)
	if err != nil {
		t.Fatal(err)
	}
	return start(t, p.args(conf, dir), filepath.Join(dir, p.name+".out")), conf
}

// waitTable polls the IPVS table until cond holds, the daemon dies, or limit passes.
func waitTable(t testing.TB, p *proc, limit time.Duration, what string, cond func(table) bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		tb, err := readTable()
		if err != nil {
			t.Fatal(err)
		}
		if cond(tb) {
			return time.Since(t0)
		}
		if !p.alive() {
			t.Fatalf("%s exited while waiting for %s: %v\n%s", p.cmd.Path, what, p.err, p.tail())
		}
		if time.Since(t0) > limit {
			t.Fatalf("%s: timed out after %s waiting for %s\n%s", p.cmd.Path, limit, what, p.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// measureCost runs p on costSvc x costPer servers with check kind, measures CPU, memory
// and the check rate the backends see over the window; with HTTP it then times
// detections and recoveries on the same running daemon.
func measureCost(t *testing.T, p peer, dir string, sc scale, be *backends, check string, r *result) {
	clearIPVS(t)
	d := layout(sc.costSvc, sc.costPer, true, check, sc.interval)
	if check == "idle" {
		// The same services with HTTP checks an hour apart: what the daemon costs
		// when it is not checking (the first round of checks is over before the
		// window starts).
		d = layout(sc.costSvc, sc.costPer, true, "http", 3600)
	}
	pr, _ := launch(t, p, dir, d)
	defer clearIPVS(t)
	defer pr.stop()
	waitTable(t, pr, 3*time.Minute, "all services programmed", func(tb table) bool { return tb.complete(d) })
	time.Sleep(time.Duration(2*sc.interval) * time.Second) // every checker has run
	counter := &be.requests
	if check == "tcp" {
		counter = &be.conns
	}
	u0, c0, t0 := treeUsage(pr.cmd.Process.Pid), counter.Load(), time.Now()
	time.Sleep(sc.window)
	u1, c1, el := treeUsage(pr.cmd.Process.Pid), counter.Load(), time.Since(t0)
	checks := float64(c1 - c0)
	c := cost{checksPerS: checks / el.Seconds(), cores: (u1.cpu - u0.cpu).Seconds() / el.Seconds(), rss: u1.rss, pss: u1.pss, anon: u1.anon}
	if check == "idle" {
		logf("%s idle (%d servers, no check due): %.4f cores, %.0f checks/s, RSS %.1f MiB, PSS %.1f MiB, RssAnon %.1f MiB",
			p.name, sc.costSvc*sc.costPer, c.cores, c.checksPerS, mib(c.rss), mib(c.pss), mib(c.anon))
		r.idle = c
		return
	}
	if checks == 0 {
		t.Fatalf("%s %s: no health check reached the backends in %s\n%s", p.name, check, el, pr.tail())
	}
	c.cpuPer1k = c.cores / c.checksPerS * 1000
	c.marginal = max(0, c.cores-r.idle.cores) / c.checksPerS * 1000
	logf("%s %s checks: %.1f checks/s, %.4f cores, %.3f CPU s per 1,000 checks (%.3f above idle), RSS %.1f MiB, PSS %.1f MiB",
		p.name, check, c.checksPerS, c.cores, c.cpuPer1k, c.marginal, mib(c.rss), mib(c.pss))
	if check == "tcp" {
		r.tcp = c
		return
	}
	r.http = c
	r.detect, r.recovery = detection(t, pr, d, sc, be)
	logf("%s detection p50 %s p99 %s; recovery p50 %s p99 %s (%d each)", p.name,
		pct(r.detect, 50), pct(r.detect, 99), pct(r.recovery, 50), pct(r.recovery, 99), len(r.detect))
}

// detection fails batch real servers at once (each in its own service, so no
// depool threshold is in the way), times each one's removal (gone or weight 0) from
// IPVS, turns them healthy again and times each return, until sc.failures are timed.
func detection(t *testing.T, pr *proc, d desc, sc scale, be *backends) (det, rec []time.Duration) {
	limit := time.Duration(10*sc.interval)*time.Second + 10*time.Second
	be.trace(true)
	defer be.trace(false)
	type slow struct {
		took  time.Duration
		ip    string
		t0    time.Time
		trace []probe
	}
	var worst []slow
	defer func() {
		slices.SortFunc(worst, func(a, b slow) int { return int(b.took - a.took) })
		for _, w := range worst[:min(3, len(worst))] {
			var ev []string
			for _, p := range w.trace {
				if p.at.After(w.t0.Add(-time.Duration(sc.interval)*time.Second)) && p.at.Before(w.t0.Add(w.took)) {
					ev = append(ev, fmt.Sprintf("%+.3fs:%d", p.at.Sub(w.t0).Seconds(), p.status))
				}
			}
			logf("slow detection %s: %s; health requests relative to the failure: %s", w.ip, w.took.Round(time.Millisecond), strings.Join(ev, " "))
		}
	}()
	for round := 0; len(det) < sc.failures; round++ {
		type victim struct{ key, ip string }
		var vs []victim
		for i := range min(sc.batch, sc.failures-len(det)) {
			s := d.services[(round*sc.batch+i)%len(d.services)]
			vs = append(vs, victim{fmt.Sprintf("%s:%d", s.vip, s.port), s.servers[round%len(s.servers)]})
		}
		for _, down := range []bool{true, false} {
			t0 := time.Now()
			for _, v := range vs {
				be.setFailing(v.ip, down)
			}
			seen := make([]time.Duration, len(vs))
			for left := len(vs); left > 0; {
				tb, err := readTable()
				if err != nil {
					t.Fatal(err)
				}
				el := time.Since(t0)
				for i, v := range vs {
					if seen[i] == 0 && tb.in(v.key, v.ip) != down {
						seen[i] = el
						left--
					}
				}
				if left > 0 && el > limit {
					t.Fatalf("%s: %d of %d real servers not %s within %s\n%s", pr.cmd.Path, left, len(vs),
						map[bool]string{true: "removed", false: "back"}[down], limit, pr.tail())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if down {
				det = append(det, seen...)
				for i, v := range vs {
					worst = append(worst, slow{seen[i], v.ip, t0, be.probes(v.ip)})
				}
				slices.SortFunc(worst, func(a, b slow) int { return int(b.took - a.took) })
				worst = worst[:min(3, len(worst))]
			} else {
				rec = append(rec, seen...)
			}
		}
	}
	return det, rec
}

// measureBig times the start of bigSvc x 10 servers, then a reload that changes one
// service and a stop + start, counting the established connections through other
// services that break meanwhile.
func measureBig(t *testing.T, p peer, dir string, sc scale, r *result) {
	clearIPVS(t)
	defer clearIPVS(t)
	d := layout(sc.bigSvc, 10, false, "http", sc.bigIntvl)
	if sc.bigTimeout > 0 {
		d = layout(sc.bigSvc, 10, false, "tcp", sc.bigIntvl)
		d.timeout = sc.bigTimeout
	}
	pr, _ := launch(t, p, dir, d)
	defer func() { pr.stop() }()
	limit := 10 * time.Minute
	r.start = waitTable(t, pr, limit, "all services programmed", func(tb table) bool { return tb.complete(d) })
	logf("%s start: %d services x 10 servers programmed in %s", p.name, sc.bigSvc, r.start.Round(time.Millisecond))

	// Reload: service 0's scheduler wrr -> wlc; flows go through services 1..flows.
	fl := openFlows(t, d, sc.flows)
	d.services[0].sched = "wlc"
	if _, err := p.render(d, dir); err != nil {
		t.Fatal(err)
	}
	key0 := fmt.Sprintf("%s:%d", d.services[0].vip, d.services[0].port)
	if err := pr.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	r.reload = waitTable(t, pr, limit, "the reloaded service in force", func(tb table) bool {
		return tb[key0] != nil && tb[key0].sched == "wlc" && tb.complete(d)
	})
	time.Sleep(sc.settle) // anything the reload does after the change
	r.reloadBroken, r.flowsReload = fl.close(), sc.flows
	logf("%s reload: in force after %s; %d of %d established connections through other services broken",
		p.name, r.reload.Round(time.Millisecond), r.reloadBroken, sc.flows)

	// Restart: SIGTERM, wait for the exit, start again.
	fl = openFlows(t, d, sc.flows)
	// Meanwhile, a poller adds up the time the table is not complete.
	pollStop, pollDone := make(chan struct{}), make(chan time.Duration)
	go func() {
		var gone time.Duration
		last := time.Now()
		for {
			tb, err := readTable()
			now := time.Now()
			if err == nil && !tb.complete(d) {
				gone += now.Sub(last)
			}
			last = now
			select {
			case <-pollStop:
				pollDone <- gone
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	pr.stop()
	r.stopTook = time.Since(t0)
	pr, _ = launch(t, p, dir, d)
	waitTable(t, pr, limit, "all services programmed after the restart", func(tb table) bool { return tb.complete(d) })
	r.restart = time.Since(t0)
	close(pollStop)
	r.incomplete = <-pollDone
	time.Sleep(sc.settle)
	r.restartBroken, r.flows = fl.close(), sc.flows
	logf("%s restart: stopped in %s, all programmed %s after SIGTERM, table incomplete for %s; %d of %d established connections broken",
		p.name, r.stopTook.Round(time.Millisecond), r.restart.Round(time.Millisecond), r.incomplete.Round(time.Millisecond), r.restartBroken, sc.flows)
}

// flows are established keep-alive HTTP connections from the client namespace
// through the VIPs of services 1..n (not service 0, the one reloaded), each sending a
// request every 500 ms. A flow is broken when a request fails or is not answered
// within 3 s.
type flows struct {
	wg     sync.WaitGroup
	stop   chan struct{}
	mu     sync.Mutex
	broken int
	why    map[string]int
}

func openFlows(t testing.TB, d desc, n int) *flows {
	t.Helper()
	if n >= len(d.services) {
		n = len(d.services) - 1
	}
	f := &flows{stop: make(chan struct{}), why: map[string]int{}}
	for i := 1; i <= n; i++ {
		addr := net.JoinHostPort(d.services[i].vip, strconv.Itoa(d.services[i].port))
		var c net.Conn
		if err := inNS(clientNS, func() (err error) { c, err = net.DialTimeout("tcp4", addr, 5*time.Second); return err }); err != nil {
			t.Fatalf("connection through %s: %v", addr, err)
		}
		br := bufio.NewReader(c)
		if err := request(c, br, addr); err != nil {
			t.Fatalf("first request through %s: %v", addr, err)
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-f.stop:
					return
				case <-tick.C:
				}
				if err := request(c, br, addr); err != nil {
					f.mu.Lock()
					f.broken++
					f.why[errClass(err)]++
					f.mu.Unlock()
					return
				}
			}
		}()
	}
	return f
}

// close stops the flows and returns how many broke.
func (f *flows) close() int {
	close(f.stop)
	f.wg.Wait()
	if f.broken > 0 {
		logf("broken connections by cause: %v", f.why)
	}
	return f.broken
}

func errClass(err error) string {
	var ne net.Error
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return "closed"
	case strings.Contains(err.Error(), "reset"):
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return err.Error()
}

func request(c net.Conn, br *bufio.Reader, host string) error {
	if err := c.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func pct(v []time.Duration, p int) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(math.Ceil(float64(len(s))*float64(p)/100)) - 1
	return s[max(0, min(i, len(s)-1))].Round(time.Millisecond)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// report prints the table of docs/perf/peers.md: each measure, both absolute
// figures and the kubal/keepalived ratio (below 1: kubal is ahead, for every row).
func report(sc scale, k, ka *result) {
	var b strings.Builder
	row := func(name string, kv, kav float64, unit string) {
		ratio := "n/a"
		switch {
		case kav > 0:
			ratio = fmt.Sprintf("%.2f", kv/kav)
		case kv == 0:
			ratio = "equal (0)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, fmtv(kv, unit), fmtv(kav, unit), ratio)
	}
	bigCheck := "HTTP"
	if sc.bigTimeout > 0 {
		bigCheck = "TCP"
	}
	fmt.Fprintf(&b, "\nPEERBENCH %s (%d x %d servers, HTTP/TCP checks every %d s for cost/detection; %d x 10, %s checks every %d s for start/reload/restart)\n",
		sc.mode, sc.costSvc, sc.costPer, sc.interval, sc.bigSvc, bigCheck, sc.bigIntvl)
	b.WriteString("| measure | kubal | keepalived | kubal/keepalived |\n|---|---|---|---|\n")
	row(fmt.Sprintf("idle: cores with %d servers, no check due", sc.costSvc*sc.costPer), k.idle.cores, ka.idle.cores, "cores")
	row("idle RSS", mib(k.idle.rss), mib(ka.idle.rss), "MiB")
	row("idle RssAnon (without file pages)", mib(k.idle.anon), mib(ka.idle.anon), "MiB")
	row("HTTP checks/s achieved", k.http.checksPerS, ka.http.checksPerS, "/s")
	row("HTTP check CPU s per 1,000 checks (all)", k.http.cpuPer1k, ka.http.cpuPer1k, "s")
	row("HTTP check CPU s per 1,000 checks above idle", k.http.marginal, ka.http.marginal, "s")
	row("HTTP check RSS", mib(k.http.rss), mib(ka.http.rss), "MiB")
	row("HTTP check PSS", mib(k.http.pss), mib(ka.http.pss), "MiB")
	row("HTTP check RssAnon", mib(k.http.anon), mib(ka.http.anon), "MiB")
	row("TCP checks/s achieved", k.tcp.checksPerS, ka.tcp.checksPerS, "/s")
	row("TCP check CPU s per 1,000 checks (all)", k.tcp.cpuPer1k, ka.tcp.cpuPer1k, "s")
	row("TCP check CPU s per 1,000 checks above idle", k.tcp.marginal, ka.tcp.marginal, "s")
	row("TCP check RSS", mib(k.tcp.rss), mib(ka.tcp.rss), "MiB")
	row("TCP check PSS", mib(k.tcp.pss), mib(ka.tcp.pss), "MiB")
	row("TCP check RssAnon", mib(k.tcp.anon), mib(ka.tcp.anon), "MiB")
	sec := func(d time.Duration) float64 { return d.Seconds() }
	row(fmt.Sprintf("detection p50 (%d failures)", len(k.detect)), sec(pct(k.detect, 50)), sec(pct(ka.detect, 50)), "sec")
	row("detection p99", sec(pct(k.detect, 99)), sec(pct(ka.detect, 99)), "sec")
	row("recovery p50", sec(pct(k.recovery, 50)), sec(pct(ka.recovery, 50)), "sec")
	row("recovery p99", sec(pct(k.recovery, 99)), sec(pct(ka.recovery, 99)), "sec")
	row(fmt.Sprintf("start %d x 10 to all programmed", sc.bigSvc), sec(k.start), sec(ka.start), "sec")
	row("reload of 1 service to in force", sec(k.reload), sec(ka.reload), "sec")
	row(fmt.Sprintf("reload: connections broken (of %d)", k.flowsReload), float64(k.reloadBroken), float64(ka.reloadBroken), "")
	row("stop: SIGTERM to exit", sec(k.stopTook), sec(ka.stopTook), "sec")
	row("stop + start: SIGTERM to table complete again", sec(k.restart), sec(ka.restart), "sec")
	row("stop + start: time the table lacked destinations", sec(k.incomplete), sec(ka.incomplete), "sec")
	row(fmt.Sprintf("restart: connections broken (of %d)", k.flows), float64(k.restartBroken), float64(ka.restartBroken), "")
	fmt.Print(b.String())
}

func fmtv(v float64, unit string) string {
	switch unit {
	case "":
		return strconv.Itoa(int(v))
	case "sec":
		return fmt.Sprintf("%.3f s", v)
	case "s":
		return fmt.Sprintf("%.3f s", v)
	case "/s":
		return fmt.Sprintf("%.1f/s", v)
	case "cores":
		return fmt.Sprintf("%.4f", v)
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}
