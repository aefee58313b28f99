package vm

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fwdPort is the forwarded-probe test's virtual service (TestDR owns :80, the restart
// test :8080).
const fwdPort = 8081

// fwdInterval is the ProxyFetch interval (and timeout) of the test's service, seconds.
const fwdInterval = 1

// forwardedReason is monitor.ForwardedReason (not imported: the VM tests only use the
// kubal binary and the public packages they test).
const forwardedReason = "answers on its own address but not on the VIP (forwarded path)"

// fwmarkServices is the director's firewall-mark services: "FWM <mark> ..." header ->
// its destinations ("-> addr:port Route w").
func fwmarkServices(t *testing.T) map[string][]string {
	out := map[string][]string{}
	cur := ""
	for _, l := range ipvsadmTable(t, director.name) {
		switch {
		case strings.HasPrefix(l, "FWM "):
			cur = strings.Fields(l)[1]
			out[cur] = []string{}
		case strings.HasPrefix(l, "->") && cur != "":
			out[cur] = append(out[cur], l)
		default:
			cur = ""
		}
	}
	return out
}

// fwdDests is the director's destinations of the test's VIP service.
func fwdDests(t *testing.T) []string { return fwdDestsOf(t, fwdPort) }

func fwdDestsOf(t *testing.T, port int) []string {
	var out []string
	in := false
	for _, l := range ipvsadmTable(t, director.name) {
		if !strings.HasPrefix(l, "->") {
			in = strings.HasPrefix(l, fmt.Sprintf("TCP %s:%d ", vip, port))
			continue
		}
		if in {
			out = append(out, strings.Fields(l)[1])
		}
	}
	slices.Sort(out)
	return out
}

type v1Server struct {
	Host     string `json:"host"`
	Pooled   bool   `json:"pooled"`
	Up       bool   `json:"up"`
	Monitors map[string]struct {
		Up     bool   `json:"up"`
		Reason string `json:"reason"`
	} `json:"monitors"`
}

func fwdServer(host string) (v1Server, error) { return fwdServerOf(fwdPort, host) }

func fwdServerOf(port int, host string) (v1Server, error) {
	var out struct {
		Servers []v1Server `json:"servers"`
	}
	code, body, err := apiGet(fmt.Sprintf("/v1/pools/fwd_%d", port))
	if err != nil || code != http.StatusOK {
		return v1Server{}, fmt.Errorf("/v1/pools: %d %v %s", code, err, body)
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return v1Server{}, err
	}
	for _, s := range out.Servers {
		if s.Host == host {
			return s, nil
		}
	}
	return v1Server{}, fmt.Errorf("no server %s in %s", host, body)
}

// clientLoop sends one request at a time to VIP:fwdPort from the client namespace and
// records when each failure happened.
type clientLoop struct {
	mu       sync.Mutex
	ok       int
	failures []time.Time
	errs     []string
	stop     chan struct{}
	done     chan struct{}
}

func startClientLoop(port int) *clientLoop {
	l := &clientLoop{stop: make(chan struct{}), done: make(chan struct{})}
	c := httpClient(false)
	c.Timeout = 2 * time.Second
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			resp, err := c.Get(fmt.Sprintf("http://%s:%d/", vip, port))
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			l.mu.Lock()
			if err != nil {
				l.failures = append(l.failures, time.Now())
				l.errs = append(l.errs, err.Error())
			} else {
				l.ok++
			}
			l.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return l
}

func (l *clientLoop) end() { close(l.stop); <-l.done }

// failedAfter counts the failed requests that started after t (a request takes up to
// its 2 s timeout to fail).
func (l *clientLoop) failedAfter(t time.Time) (n int, errs []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, f := range l.failures {
		if f.After(t.Add(2 * time.Second)) {
			n++
			errs = append(errs, l.errs[i])
		}
	}
	return n, errs
}

func setAcceptLocal(t *testing.T, on bool) {
	t.Helper()
	v := "0"
	if on {
		v = "1"
	}
	run(t, "ip", "netns", "exec", director.name, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.accept_local="+v, "net.ipv4.conf.all.accept_local=0")
}

// forwardedRig readies the director (the VIP on lo, accept_local), HTTP servers on
// port in every real server, a server list and a config writer for the service
// fwd_<port> with the forwarding method; write(extra) appends extra config lines.
func forwardedRig(t *testing.T, port int, forwarding string) (bin, conf string, write func(extra string)) {
	t.Helper()
	topology(t)
	bin = os.Getenv("KUBAL_VM_KUBAL")
	if bin == "" {
		t.Fatal("KUBAL_VM_KUBAL is not set: run through integration/vm/run-tests.sh, which builds kubal and ships it into the VM")
	}
	// The director holds the VIP on lo, as in production (TestDR's Addresses put it
	// there too): the forwarded probe must not take it as its source address.
	run(t, "ip", "-n", director.name, "addr", "replace", vip+"/32", "dev", "lo")
	// The real servers answer forwarded probes from the VIP, an address the director
	// holds: without accept_local it drops them as martians (docs/config.md). Each
	// test sets it (TestForwardedProbe first shows what happens without it).
	setAcceptLocal(t, forwarding == "tunnel")
	// The real servers serve fwdPort too, on any local address (the VIP included).
	for _, h := range realSrv {
		var ln net.Listener
		if err := inNS(h.name, func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port)); return err }); err != nil {
			t.Fatalf("listener in %s: %v", h.name, err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, h.name) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}

	dir := t.TempDir()
	list := filepath.Join(dir, "servers")
	var lines strings.Builder
	for _, h := range realSrv {
		fmt.Fprintf(&lines, "{ 'host': '%s', 'weight': 10, 'enabled': True }\n", h.addr)
	}
	if err := os.WriteFile(list, []byte(lines.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	conf = filepath.Join(dir, "pybal.conf")
	writeConf := func(path string) {
		cfg := fmt.Sprintf(`[global]
bgp = no
instrumentation = yes
instrumentation_port = 9090
instrumentation_ips = ['%s']
state-file = %s

[fwd_%d]
protocol = tcp
ip = %s
port = %d
scheduler = rr
config = file://%s
forwarding = %s
depool-threshold = .5
monitors = ["ProxyFetch"]
ProxyFetch.url = ["http://fwd.test/"]
ProxyFetch.interval = %d
ProxyFetch.timeout = %d
%s`, director.addr, filepath.Join(dir, "state.json"), port, vip, port, list, forwarding, fwdInterval, fwdInterval, path)
		if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return bin, conf, writeConf
}

// TestForwardedProbe is issue 15 for DR with real IPVS and the real kubal binary: a
// service with `ProxyFetch.path = forwarded` gets one firewall-mark helper service
// per real server; removing the VIP from one real server's loopback depools it within
// an interval with the forwarded reason while its direct ProxyFetch still passes, and
// the client loop sees no failed request after the depool; restoring the VIP brings it
// back; a restart adopts the helpers (same marks, no duplicates); removing the option
// (reload, or while kubal is down) removes them.
func TestForwardedProbe(t *testing.T) {
	bin, conf, writeConf := forwardedRig(t, fwdPort, "dr")
	writeConf("ProxyFetch.path = forwarded\n")

	all := []string{}
	for _, h := range realSrv {
		all = append(all, fmt.Sprintf("%s:%d", h.addr, fwdPort))
	}
	k := startKubalProcess(t, bin, conf)
	defer func() { k.stop(t) }()
	waitForLong(t, k, "the service and one helper per real server", 60*time.Second, func() bool {
		return len(fwmarkServices(t)) == len(realSrv)
	})
	// 0. accept_local is off on the director: every forwarded probe fails, and says why.
	waitForLong(t, k, "the forwarded probes to fail with the accept_local hint", 60*time.Second, func() bool {
		s, err := fwdServer(realSrv[0].addr)
		return err == nil && strings.Contains(s.Monitors["ProxyFetch/forwarded"].Reason, "net.ipv4.conf.eth0.accept_local = 0")
	})
	s0, _ := fwdServer(realSrv[0].addr)
	t.Logf("without accept_local: %s", s0.Monitors["ProxyFetch/forwarded"].Reason)
	setAcceptLocal(t, true)
	waitForLong(t, k, "the service with every server", 60*time.Second, func() bool { return slices.Equal(fwdDests(t), all) })
	helpers := fwmarkServices(t)
	t.Logf("helper services: %v", helpers)
	for mark, ds := range helpers {
		if len(ds) != 1 || !strings.Contains(ds[0], " Route ") {
			t.Errorf("helper FWM %s: destinations %v, want one DR (Route) destination", mark, ds)
		}
	}
	// Every server passes both probes.
	waitForLong(t, k, "every server up on both paths", 60*time.Second, func() bool {
		for _, h := range realSrv {
			s, err := fwdServer(h.addr)
			if err != nil || !s.Monitors["ProxyFetch"].Up || !s.Monitors["ProxyFetch/forwarded"].Up {
				return false
			}
		}
		return true
	})

	// 1. rs2 loses the VIP on its loopback: depooled within an interval (plus the
	// probe's timeout: a blackholed probe fails by timing out), with the reason, while
	// its direct ProxyFetch passes; no failed request after the depool.
	loop := startClientLoop(fwdPort)
	time.Sleep(2 * time.Second)
	broken := realSrv[1]
	run(t, "ip", "-n", broken.name, "addr", "del", vip+"/32", "dev", "lo")
	removed := time.Now()
	var without []string
	for _, d := range all {
		if !strings.HasPrefix(d, broken.addr+":") {
			without = append(without, d)
		}
	}
	waitForLong(t, k, "the broken server to be depooled", 30*time.Second, func() bool { return slices.Equal(fwdDests(t), without) })
	depooled := time.Now()
	took := depooled.Sub(removed)
	t.Logf("depooled %v after the VIP left %s's loopback (interval %ds + timeout %ds)", took.Round(10*time.Millisecond), broken.name, fwdInterval, fwdInterval)
	// TCG: allow one more interval of slack for the emulated kernel and the poll.
	if limit := time.Duration(3*fwdInterval) * time.Second; took > limit {
		t.Errorf("depool took %v, want within one interval plus the timeout (%v with slack)", took, limit)
	}
	s, err := fwdServer(broken.addr)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pooled || !s.Monitors["ProxyFetch"].Up || s.Monitors["ProxyFetch/forwarded"].Up ||
		!strings.HasPrefix(s.Monitors["ProxyFetch/forwarded"].Reason, forwardedReason) ||
		strings.Contains(s.Monitors["ProxyFetch/forwarded"].Reason, "accept_local") {
		t.Errorf("broken server in /v1/pools: %+v; want depooled, ProxyFetch up, ProxyFetch/forwarded down with %q (and no stale accept_local hint)", s, forwardedReason)
	}
	t.Logf("broken server: %+v", s)
	time.Sleep(5 * time.Second)
	if n, errs := loop.failedAfter(depooled); n > 0 {
		t.Errorf("%d requests failed after the depool: %v", n, errs)
	}

	// 2. The VIP comes back: the server returns.
	run(t, "ip", "-n", broken.name, "addr", "add", vip+"/32", "dev", "lo")
	waitForLong(t, k, "the repaired server to return", 30*time.Second, func() bool { return slices.Equal(fwdDests(t), all) })
	loop.end()
	loop.mu.Lock()
	t.Logf("client loop: %d ok, %d failed (all before the depool)", loop.ok, len(loop.failures))
	loop.mu.Unlock()

	// 3. Restart: the same helpers, adopted (not duplicated).
	k.stop(t)
	k = startKubalProcess(t, bin, conf)
	waitForLong(t, k, "kubal back with every server up on both paths", 60*time.Second, func() bool {
		for _, h := range realSrv {
			s, err := fwdServer(h.addr)
			if err != nil || !s.Monitors["ProxyFetch/forwarded"].Up {
				return false
			}
		}
		return true
	})
	if got := fwmarkServices(t); fmt.Sprint(got) != fmt.Sprint(helpers) {
		t.Errorf("after the restart the helpers are %v, want the same as before: %v", got, helpers)
	}
	for mark := range helpers {
		if !strings.Contains(k.out.String(), "adopted existing service") || !strings.Contains(k.out.String(), "-f "+mark) {
			t.Errorf("kubal did not log the adoption of helper -f %s:\n%s", mark, k.logTail())
		}
	}

	// 4. The option goes (reload): the helpers go, the service stays.
	writeConf("")
	if err := k.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitForLong(t, k, "the helpers to be removed", 30*time.Second, func() bool { return len(fwmarkServices(t)) == 0 })
	if got := fwdDests(t); !slices.Equal(got, all) {
		t.Errorf("after removing the option the service has %v, want %v", got, all)
	}

	// 5. The option goes while kubal is down: the restarted kubal sweeps the leftover
	// helpers once its plan is complete (and leaves a foreign firewall-mark service).
	writeConf("ProxyFetch.path = forwarded\n")
	if err := k.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitForLong(t, k, "the helpers to come back", 30*time.Second, func() bool { return len(fwmarkServices(t)) == len(realSrv) })
	k.stop(t)
	writeConf("")
	run(t, "ip", "netns", "exec", director.name, "ipvsadm", "-A", "-f", "42", "-s", "rr")
	defer run(t, "ip", "netns", "exec", director.name, "ipvsadm", "-D", "-f", "42")
	k = startKubalProcess(t, bin, conf)
	waitForLong(t, k, "the leftover helpers to be swept", 60*time.Second, func() bool {
		got := fwmarkServices(t)
		_, foreign := got["42"]
		return len(got) == 1 && foreign
	})
	if got := fwdDests(t); !slices.Equal(got, all) {
		t.Errorf("after the sweep the service has %v, want %v", got, all)
	}
}

// fwdTunPort is the tunnel-mode forwarded-probe service.
const fwdTunPort = 8082

// TestForwardedProbeTunnel is issue 15 for a tunnel-mode (IPIP) service: the helpers
// tunnel too, and a real server whose tunnel interface is down (IPIP packets
// dropped) is depooled within an interval with the forwarded reason while its direct
// ProxyFetch passes; the client loop sees no failure after the depool; the interface
// back up, the server returns.
func TestForwardedProbeTunnel(t *testing.T) {
	bin, conf, writeConf := forwardedRig(t, fwdTunPort, "tunnel")
	// LVS-TUN real servers: the IPIP device up (the VIP is on their lo already), and
	// no reverse-path filter on it.
	for _, h := range realSrv {
		run(t, "ip", "-n", h.name, "link", "set", "tunl0", "up")
		run(t, "ip", "netns", "exec", h.name, "sysctl", "-q", "-w", "net.ipv4.conf.tunl0.rp_filter=0")
	}
	writeConf("ProxyFetch.path = forwarded\n")
	var all []string
	for _, h := range realSrv {
		all = append(all, fmt.Sprintf("%s:%d", h.addr, fwdTunPort))
	}
	tunnelHelpers := func() int {
		n := 0
		for _, ds := range fwmarkServices(t) {
			if len(ds) == 1 && strings.Contains(ds[0], " Tunnel ") {
				n++
			}
		}
		return n
	}
	k := startKubalProcess(t, bin, conf)
	defer func() { k.stop(t) }()
	waitForLong(t, k, "the tunnel service and its tunnel helpers", 60*time.Second, func() bool {
		return slices.Equal(fwdDestsOf(t, fwdTunPort), all) && tunnelHelpers() == len(realSrv)
	})
	waitForLong(t, k, "every server up on both paths", 60*time.Second, func() bool {
		for _, h := range realSrv {
			s, err := fwdServerOf(fwdTunPort, h.addr)
			if err != nil || !s.Monitors["ProxyFetch"].Up || !s.Monitors["ProxyFetch/forwarded"].Up {
				return false
			}
		}
		return true
	})

	loop := startClientLoop(fwdTunPort)
	time.Sleep(2 * time.Second)
	broken := realSrv[2]
	run(t, "ip", "-n", broken.name, "link", "set", "tunl0", "down")
	removed := time.Now()
	without := slices.DeleteFunc(slices.Clone(all), func(d string) bool { return strings.HasPrefix(d, broken.addr+":") })
	waitForLong(t, k, "the server without its tunnel to be depooled", 30*time.Second, func() bool {
		return slices.Equal(fwdDestsOf(t, fwdTunPort), without)
	})
	depooled := time.Now()
	took := depooled.Sub(removed)
	t.Logf("depooled %v after %s's tunnel interface went down (interval %ds + timeout %ds)", took.Round(10*time.Millisecond), broken.name, fwdInterval, fwdInterval)
	if limit := time.Duration(3*fwdInterval) * time.Second; took > limit {
		t.Errorf("depool took %v, want within one interval plus the timeout (%v with slack)", took, limit)
	}
	s, err := fwdServerOf(fwdTunPort, broken.addr)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pooled || !s.Monitors["ProxyFetch"].Up || !strings.HasPrefix(s.Monitors["ProxyFetch/forwarded"].Reason, forwardedReason) {
		t.Errorf("server without its tunnel in /v1/pools: %+v; want depooled, ProxyFetch up, ProxyFetch/forwarded down with %q", s, forwardedReason)
	}
	t.Logf("server without its tunnel: %+v", s)
	time.Sleep(5 * time.Second)
	if n, errs := loop.failedAfter(depooled); n > 0 {
		t.Errorf("%d requests failed after the depool: %v", n, errs)
	}
	run(t, "ip", "-n", broken.name, "link", "set", "tunl0", "up")
	waitForLong(t, k, "the server to return with its tunnel", 30*time.Second, func() bool {
		return slices.Equal(fwdDestsOf(t, fwdTunPort), all)
	})
	loop.end()
	loop.mu.Lock()
	t.Logf("client loop: %d ok, %d failed (all before the depool)", loop.ok, len(loop.failures))
	loop.mu.Unlock()
}
