package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	k8srig "github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/integration/vmrig"
	"github.com/kubal/kubal/internal/testutil"
)

// Scenario parameters (the bounds are asserted against these).
const (
	checkInterval = 2 * time.Second // proxyfetch.interval
	pool          = "ingress_30080"
	conftoolKey   = "/conftool/v1/pools/eqiad/ingress/ingressgateway/"
	adminToken    = "e2e-admin-token-0123456789abcdef"
	birdAddr      = "10.0.0.254"
	primaryAPI    = "http://127.0.0.1:9090"
	backupAPI     = "http://127.0.0.1:9190"
)

const kubalConf = `# kubal e2e: the ingress service of docs/operations.md
[global]
bgp = yes
vip-addresses = yes
bgp-local-asn = 64600
bgp-peer-address = 10.0.0.254
bgp-nexthop-ipv4 = 10.0.0.1
bgp-hold-time = 30
bgp-bfd = yes
bgp-bfd-min-rx = 300
bgp-bfd-min-tx = 300
bgp-bfd-multiplier = 3
instrumentation = yes
instrumentation_port = 9090
instrumentation_ips = ['127.0.0.1']
admin_port = 9091
admin_ips = ['127.0.0.1']
admin-token-file = /tmp/e2e/admin-tokens
state-file = /tmp/e2e/state.json
etcd-endpoints = @ETCD@
kubeconfig = /payload/kubal.kubeconfig

[ingress_30080]
protocol = tcp
ip = 192.0.2.80
port = 30080
scheduler = wrr
config = k8s://?nodes=kubal-e2e/ingress=true&endpoints=istio-system/istio-ingressgateway
conftool = eqiad/ingress/ingressgateway
depool-threshold = .3
depool-mode = drain
drain-timeout = 30
monitors = ['ProxyFetch', 'IdleConnection']
proxyfetch.url = ['http://localhost/healthz/ready']
proxyfetch.port = 15021
proxyfetch.interval = 2
proxyfetch.timeout = 1
idleconnection.timeout-clean-reconnect = 3
idleconnection.max-delay = 30
`

// The backup LVS: same services, dry-run, no BGP, no admin API, its own ports.
func backupConf(primary string) string {
	c := strings.Replace(primary, "bgp = yes", "bgp = no", 1)
	c = strings.Replace(c, "instrumentation_port = 9090", "instrumentation_port = 9190", 1)
	c = strings.Replace(c, "admin-token-file = /tmp/e2e/admin-tokens\n", "", 1)
	c = strings.Replace(c, "admin_port = 9091", "admin_port = 9191", 1)
	return strings.Replace(c, "state-file = /tmp/e2e/state.json", "state-file = /tmp/e2e/backup-state.json", 1)
}

const birdConf = `router id 10.0.0.254;
log "/tmp/e2e/bird.log" all;
protocol device { scan time 10; }
protocol bfd {
	interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };
}
protocol bgp kubal {
	local 10.0.0.254 as 64512;
	neighbor 10.0.0.1 as 64600;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 2;
	hold time 30;
	bfd on;
	graceful restart off;
	ipv4 { import all; export none; };
}
`

// scenario is the guest's state.
type scenario struct {
	t      *testing.T
	procs  []*vmrig.Proc
	kubal  *vmrig.Proc
	backup *vmrig.Proc
	bird   *vmrig.Bird
	loop   *loopStats
	kc     kubernetes.Interface
	etcd   *clientv3.Client
	ctl    string
	conf   string
	runs   int
	steps  *vmrig.Steps
}

func guest(t *testing.T) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Fatalf("no IPVS in the guest kernel: %v", err)
	}
	s := &scenario{t: t, ctl: os.Getenv("KUBAL_E2E_CTL"), loop: &loopStats{perNode: map[string]int{}}, steps: vmrig.NewSteps("E2E-STEP")}
	must(t, os.MkdirAll(workDir, 0o755))
	t.Cleanup(s.stopAll)
	s.conf = strings.Replace(kubalConf, "@ETCD@", os.Getenv("KUBAL_E2E_ETCD"), 1)
	must(t, os.WriteFile(filepath.Join(workDir, "pybal.conf"), []byte(s.conf), 0o644))
	must(t, os.WriteFile(filepath.Join(workDir, "backup.conf"), []byte(backupConf(s.conf)), 0o644))
	must(t, os.WriteFile(filepath.Join(workDir, "admin-tokens"), []byte("sre-e2e:"+adminToken+"\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(workDir, "bird.conf"), []byte(birdConf), 0o644))

	s.network()
	cfg, err := clientcmd.BuildConfigFromFlags("", "/payload/admin.kubeconfig")
	must(t, err)
	s.kc, err = kubernetes.NewForConfig(cfg)
	must(t, err)
	s.etcd, err = clientv3.New(clientv3.Config{Endpoints: []string{os.Getenv("KUBAL_E2E_ETCD")}, DialTimeout: 10 * time.Second})
	must(t, err)
	t.Cleanup(func() { s.etcd.Close() })

	for _, n := range nodes {
		s.start("backend-"+n.name, []string{envRole + "=backend", envName + "=" + n.name}, "/sbin/ip", "netns", "exec", n.name, "/payload/e2e.test")
	}
	s.startBird()
	// Both backends must answer before kubal's monitors look at them.
	for _, n := range nodes {
		if _, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool { return httpOK("http://" + n.addr + ":15021/healthz/ready") }); !ok {
			t.Fatalf("backend %s never answered", n.name)
		}
	}

	s.step1()
	s.step2()
	s.step3()
	s.step4()
	s.step5()
	s.step6()
	s.step7()
	ok, fail, per := s.loop.snapshot()
	s.result("total", "client loop: %d requests OK, %d failed, per node %v", ok, fail, per)
	if fail != 0 {
		t.Errorf("client loop saw %d failed requests through the VIP: %v", fail, s.loop.failLines())
	}
}

// network builds the topology in the VM: the director is the root namespace (it also
// reaches the host through eth0), the nodes, the client and the router hang off br0.
func (s *scenario) network() {
	must(s.t, vmrig.Bridge(`for n in 1 2 3; do
	add node$n 10.0.0.1$n
	# DR real server: the VIP on lo, never answering ARP for it.
	ip -n node$n addr add 192.0.2.80/32 dev lo
	ip netns exec node$n sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
done
add client 10.0.0.10
ip -n client route add 192.0.2.80/32 via 10.0.0.1
add bird 10.0.0.254
`))
}

func (s *scenario) start(name string, env []string, args ...string) *vmrig.Proc {
	p, err := vmrig.Start(name, filepath.Join(workDir, name+".log"), env, args...)
	must(s.t, err)
	s.procs = append(s.procs, p)
	return p
}

func (s *scenario) stopAll() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop(10 * time.Second)
	}
	if s.t.Failed() {
		for _, name := range []string{"kubal-1", "kubal-2", "kubal-3", "kubal-4", "backup", "bird"} {
			vmrig.DumpLog(filepath.Join(workDir, name+".log"), 6000)
		}
	}
}

func (s *scenario) startBird() {
	p, b, err := vmrig.StartBird("bird", workDir)
	if p != nil {
		s.procs = append(s.procs, p)
	}
	must(s.t, err)
	s.bird = b
}

func (s *scenario) startKubal() time.Time {
	s.runs++
	t0 := time.Now()
	s.kubal = s.start(fmt.Sprintf("kubal-%d", s.runs), nil, "/payload/kubal", "-c", filepath.Join(workDir, "pybal.conf"))
	return t0
}

func (s *scenario) result(step, format string, args ...any) { s.steps.Add(step, format, args...) }

// ---- steps ----

// 1. Start: BIRD learns the VIP; IPVS holds the three nodes; the client loop succeeds.
func (s *scenario) step1() {
	t := s.t
	s.backup = s.start("backup", nil, "/payload/kubal", "-n", "-c", filepath.Join(workDir, "backup.conf"))
	t0 := s.startKubal()
	_, ok := testutil.Poll(90*time.Second, 50*time.Millisecond, func() bool { return len(s.ipvs()) == 3 || !s.kubal.Alive() })
	dIPVS := time.Since(t0)
	if !s.kubal.Alive() {
		t.Fatalf("step 1: kubal exited at start")
	}
	if !ok {
		t.Fatalf("step 1: IPVS never held the three nodes: %v", s.ipvs())
	}
	_, ok = testutil.Poll(60*time.Second, 50*time.Millisecond, s.routeAtBird)
	dBGP := time.Since(t0)
	if !ok {
		t.Fatalf("step 1: BIRD never learned %s/32\n%s", vip, s.birdDebug())
	}
	// What an operator sees on the router (docs/operations.md shows this output).
	s.birdc("show route for " + vip + "/32 all")
	s.birdc("show bfd sessions")
	// The announcement as PyBal makes it: our AS path, our next hop.
	route := s.birdCmd("show route for " + vip + "/32 all")
	if !strings.Contains(route, "BGP.as_path: 64600") || !strings.Contains(route, "BGP.next_hop: 10.0.0.1") {
		t.Errorf("step 1: BIRD's route lacks AS path 64600 / next hop 10.0.0.1:\n%s", route)
	}
	if !s.bfdUp() {
		if _, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, s.bfdUp); !ok {
			t.Fatalf("step 1: BFD session not up at BIRD\n%s", s.birdDebug())
		}
	}
	// The client loop starts once the VIP is served.
	p := s.startPiped("client", []string{envRole + "=client"}, "/sbin/ip", "netns", "exec", "client", "/payload/e2e.test")
	_ = p
	dLoop, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		_, _, per := s.loop.snapshot()
		return len(per) == 3
	})
	okN, fail, per := s.loop.snapshot()
	if !ok || fail != 0 {
		t.Fatalf("step 1: client loop: %d OK, %d failed, per node %v (want all three nodes, no failure): %v", okN, fail, per, s.loop.failLines())
	}
	s.result("1", "kubal start -> IPVS holds 3 nodes after %s; BIRD has %s/32 (AS path 64600, next hop 10.0.0.1) after %s; BFD up; client loop reached all 3 nodes in %s (%d OK, 0 failed)",
		ms(dIPVS), vip, ms(dBGP), ms(dLoop), okN)
}

// 2. node2's gateway fails its health endpoint (traffic port still open): depooled
// within one check interval; the client loop sees no failed request.
func (s *scenario) step2() {
	t := s.t
	_, fail0, _ := s.loop.snapshot()
	must(t, os.WriteFile(filepath.Join(workDir, "down-node2"), nil, 0o644))
	d, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool { _, in := s.ipvs()["10.0.0.12"]; return !in })
	if !ok {
		t.Fatalf("step 2: node2 never depooled: %v", s.ipvs())
	}
	if !httpOK("http://10.0.0.12:30080/") {
		t.Fatalf("step 2: node2's traffic port should still serve")
	}
	time.Sleep(time.Second)
	_, fail, _ := s.loop.snapshot()
	bound := checkInterval + time.Second // one interval, plus the check itself under TCG
	s.result("2", "node2 health 503 -> gone from IPVS in %s (bound: interval %s + 1 s); client failures during the step: %d", ms(d), checkInterval, fail-fail0)
	if d > bound {
		t.Errorf("step 2: depool took %s, want within one check interval (%s)", d, bound)
	}
	if fail != fail0 {
		t.Errorf("step 2: client loop saw %d failed requests: %v", fail-fail0, s.loop.failLines())
	}
	s.wantPool(primaryAPI, "node2", false, "")
}

// 3. node3 NotReady in the API: depooled within the watch latency.
func (s *scenario) step3() {
	t := s.t
	_, fail0, _ := s.loop.snapshot()
	t0 := time.Now()
	s.setReady("node3", false)
	apiDone := time.Since(t0)
	d, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool { _, in := s.ipvs()["10.0.0.13"]; return !in })
	if !ok {
		t.Fatalf("step 3: node3 never depooled after NotReady: %v", s.ipvs())
	}
	_, fail, _ := s.loop.snapshot()
	s.result("3", "node3 NotReady (API write %s) -> gone from IPVS %s after the write was acknowledged; client failures: %d", ms(apiDone), ms(d), fail-fail0)
	if d > 3*time.Second {
		t.Errorf("step 3: depool after NotReady took %s, want within the watch latency (< 3 s under TCG)", d)
	}
	if fail != fail0 {
		t.Errorf("step 3: client loop saw %d failed requests: %v", fail-fail0, s.loop.failLines())
	}
	if got := s.ipvs(); len(got) != 1 {
		t.Errorf("step 3: IPVS holds %v, want node1 only", got)
	}
	// What the SRE sees: each server's state and why (docs/operations.md shows this).
	out, code := s.kubalctl("status", pool)
	fmt.Printf("$ kubalctl status %s\n%s", pool, out)
	if code != 0 || !strings.Contains(out, "not Ready (Ready=False") || !strings.Contains(out, "ProxyFetch") {
		t.Errorf("step 3: kubalctl status (exit %d) does not give node3's NotReady and node2's ProxyFetch reasons:\n%s", code, out)
	}
}

// 4. kubalctl depool of node1: refused by the threshold with the reason; allowed after
// node2 recovers; the etcd key shows pooled: no; the backup kubal sees it.
func (s *scenario) step4() {
	t := s.t
	out, code := s.kubalctl("depool", pool, "node1", "--reason", "e2e maintenance")
	if code != 1 || !strings.Contains(out, "threshold") {
		t.Fatalf("step 4: depool of the last server: exit %d, output %q; want exit 1 and the threshold reason", code, out)
	}
	s.result("4a", "kubalctl depool node1 refused (exit %d): %s", code, strings.TrimSpace(out))
	if _, in := s.ipvs()["10.0.0.11"]; !in {
		t.Fatalf("step 4: node1 left IPVS after a refused depool")
	}
	must(t, os.Remove(filepath.Join(workDir, "down-node2")))
	dRec, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool { _, in := s.ipvs()["10.0.0.12"]; return in })
	if !ok {
		t.Fatalf("step 4: node2 never repooled: %v", s.ipvs())
	}
	t0 := time.Now()
	out, code = s.kubalctl("depool", pool, "node1", "--reason", "e2e maintenance")
	if code != 0 {
		t.Fatalf("step 4: depool after node2 recovered: exit %d: %s", code, out)
	}
	dIPVS, ok := testutil.Poll(10*time.Second, 50*time.Millisecond, func() bool { _, in := s.ipvs()["10.0.0.11"]; return !in })
	if !ok {
		t.Fatalf("step 4: node1 still in IPVS after the depool: %v", s.ipvs())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := s.etcd.Get(ctx, conftoolKey+"node1")
	cancel()
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("step 4: etcd key %snode1: %v %v", conftoolKey, err, resp)
	}
	var v struct {
		Pooled string `json:"pooled"`
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil || v.Pooled != "no" {
		t.Fatalf("step 4: etcd %snode1 = %s, want pooled: no", conftoolKey, resp.Kvs[0].Value)
	}
	_, ok = testutil.Poll(20*time.Second, 50*time.Millisecond, func() bool { st := s.poolState(backupAPI, "node1"); return st.Enabled != nil && !*st.Enabled })
	dBackup := time.Since(t0)
	if !ok {
		t.Fatalf("step 4: the backup kubal never saw node1 disabled: %+v", s.poolState(backupAPI, "node1"))
	}
	s.result("4b", "node2 recovered -> back in IPVS in %s; kubalctl depool node1 accepted: %s; node1 out of IPVS %s after the command; etcd %snode1 = %s; backup kubal shows it disabled %s after the command",
		ms(dRec), firstLineOf(out), ms(dIPVS), conftoolKey, resp.Kvs[0].Value, ms(dBackup))
	// Back to a full pool for the next steps.
	if out, code := s.kubalctl("pool", pool, "node1", "--reason", "e2e done"); code != 0 {
		t.Fatalf("step 4: pool node1: exit %d: %s", code, out)
	}
	s.setReady("node3", true)
	if _, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool { return len(s.ipvs()) == 3 }); !ok {
		t.Fatalf("step 4: pool never back to 3 nodes: %v", s.ipvs())
	}
}

// 5. SIGTERM then start of kubal: zero failed requests through the VIP, IPVS left in
// place, BGP re-established.
func (s *scenario) step5() {
	t := s.t
	_, fail0, _ := s.loop.snapshot()
	before := s.ipvs()
	t0 := time.Now()
	if !s.kubal.Signal(syscall.SIGTERM, 30*time.Second) {
		t.Fatalf("step 5: kubal did not exit within 30 s of SIGTERM")
	}
	dStop := time.Since(t0)
	dWithdraw, ok := testutil.Poll(10*time.Second, 50*time.Millisecond, func() bool { return !s.routeAtBird() })
	if !ok {
		t.Errorf("step 5: route still at BIRD after kubal stopped")
	}
	if after := s.ipvs(); !vmrig.SameKeys(before, after) {
		t.Fatalf("step 5: IPVS changed by the stop: %v -> %v", before, after)
	}
	time.Sleep(500 * time.Millisecond) // traffic keeps flowing with no kubal at all
	t1 := s.startKubal()
	var dBGP, dReady time.Duration
	_, ok = testutil.Poll(60*time.Second, 50*time.Millisecond, func() bool {
		if dReady == 0 && httpOK(primaryAPI+"/readyz") {
			dReady = time.Since(t1)
		}
		if dBGP == 0 && s.routeAtBird() {
			dBGP = time.Since(t1)
		}
		return dReady != 0 && dBGP != 0
	})
	if !ok {
		t.Fatalf("step 5: after the restart: ready after %s, BGP route back after %s (0 = never)\n%s", dReady, dBGP, s.birdDebug())
	}
	time.Sleep(2 * time.Second)
	if after := s.ipvs(); !vmrig.SameKeys(before, after) {
		t.Errorf("step 5: IPVS after the restart %v, want %v", after, before)
	}
	_, fail, _ := s.loop.snapshot()
	s.result("5", "SIGTERM -> exit %s, route withdrawn at BIRD %s after exit, IPVS kept (%d dests); restart -> ready %s, BGP route back %s; client failures: %d",
		ms(dStop), ms(dWithdraw), len(before), ms(dReady), ms(dBGP), fail-fail0)
	if fail != fail0 {
		t.Errorf("step 5: client loop saw %d failed requests across the restart: %v", fail-fail0, s.loop.failLines())
	}
}

// 6. kill -9 of kubal with BFD on: BIRD drops the route within 1.5 s. The director's
// egress to the router is blackholed first, so the kernel's FIN/RST of the dead
// process's socket never reaches BIRD: only BFD can tell.
func (s *scenario) step6() {
	t := s.t
	if _, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, s.bfdUp); !ok {
		t.Fatalf("step 6: BFD not up before the kill\n%s", s.birdDebug())
	}
	_, fail0, _ := s.loop.snapshot()
	if out, err := exec.Command("/usr/sbin/tc", "qdisc", "add", "dev", "vbird", "root", "pfifo", "limit", "0").CombinedOutput(); err != nil {
		t.Fatalf("step 6: tc: %v: %s", err, out)
	}
	t0 := time.Now()
	s.kubal.Signal(syscall.SIGKILL, 10*time.Second)
	_, ok := testutil.Poll(10*time.Second, 50*time.Millisecond, func() bool { return !s.routeAtBird() })
	d := time.Since(t0) // from the SIGKILL
	if out, err := exec.Command("/usr/sbin/tc", "qdisc", "del", "dev", "vbird", "root").CombinedOutput(); err != nil {
		t.Errorf("step 6: tc del: %v: %s", err, out)
	}
	if !ok {
		t.Fatalf("step 6: route still at BIRD 10 s after kill -9 with BFD\n%s", s.birdDebug())
	}
	proto := s.birdCmd("show protocols all kubal")
	s.birdc("show protocols kubal")
	s.result("6", "kill -9 (egress to BIRD blackholed) -> route gone at BIRD in %s (bound 1.5 s; BFD 300 ms x 3); BIRD: %s", ms(d), birdLastError(proto))
	if d > 1500*time.Millisecond {
		t.Errorf("step 6: BFD failover took %s, want <= 1.5 s", d)
	}
	if !strings.Contains(proto, "BFD") {
		t.Errorf("step 6: BIRD did not drop the session for BFD:\n%s", proto)
	}
	// Back up for step 7; IPVS was left in place, traffic never stopped.
	s.startKubal()
	if _, ok := testutil.Poll(60*time.Second, 50*time.Millisecond, s.routeAtBird); !ok {
		t.Fatalf("step 6: BGP not back after the restart\n%s", s.birdDebug())
	}
	if _, ok := testutil.Poll(60*time.Second, 50*time.Millisecond, func() bool { return httpOK(primaryAPI+"/readyz") && len(s.ipvs()) == 3 }); !ok {
		t.Fatalf("step 6: kubal not ready with 3 nodes after the restart: %v", s.ipvs())
	}
	_, fail, _ := s.loop.snapshot()
	if fail != fail0 {
		t.Errorf("step 6: client loop saw %d failed requests: %v", fail-fail0, s.loop.failLines())
	}
}

// 7. Bad input: a broken config on SIGHUP (kept running), a malformed etcd value, the
// API server down for 20 s: no pool change, each visible in /alerts.
func (s *scenario) step7() {
	t := s.t
	before := s.ipvs()
	beforePools := s.pools(primaryAPI)
	_, fail0, _ := s.loop.snapshot()
	conf := filepath.Join(workDir, "pybal.conf")

	// (a) broken config on SIGHUP.
	bad := strings.Replace(s.conf, "scheduler = wrr", "scheduler = wrr # rr", 1)
	must(t, os.WriteFile(conf, []byte(bad), 0o644))
	t0 := time.Now()
	_ = s.kubal.Send(syscall.SIGHUP)
	dA, ok := testutil.Poll(20*time.Second, 50*time.Millisecond, func() bool { return strings.Contains(s.alerts(), "config reload failed") })
	alertA := s.alerts()
	if !ok {
		t.Errorf("step 7a: /alerts does not report the failed reload: %q", alertA)
	}
	if !s.kubal.Alive() || !httpOK(primaryAPI+"/healthz") {
		t.Fatalf("step 7a: kubal died on a bad config")
	}
	must(t, os.WriteFile(conf, []byte(s.conf), 0o644))
	_ = s.kubal.Send(syscall.SIGHUP)
	dA2, ok := testutil.Poll(20*time.Second, 50*time.Millisecond, func() bool { return !strings.Contains(s.alerts(), "config reload failed") })
	if !ok {
		t.Errorf("step 7a: the alert did not clear after a good reload: %q", s.alerts())
	}
	s.result("7a", "bad config + SIGHUP -> kept running, /alerts %q after %s; good config + SIGHUP -> cleared in %s", alertA, ms(dA), ms(dA2))
	_ = t0

	// (b) a malformed conftool value for node2.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := s.etcd.Put(ctx, conftoolKey+"node2", `{"pooled": "no", "weight": `)
	cancel()
	must(t, err)
	dB, okMetric := testutil.Poll(20*time.Second, 50*time.Millisecond, func() bool { return metricAbove(s.metrics(), "kubal_conftool_malformed_values_total", 0) })
	time.Sleep(time.Second)
	alertB := s.alerts()
	if !okMetric {
		t.Errorf("step 7b: kubal_conftool_malformed_values_total never rose")
	}
	if !vmrig.SameKeys(before, s.ipvs()) {
		t.Errorf("step 7b: a malformed etcd value changed the pool: %v -> %v", before, s.ipvs())
	}
	s.result("7b", "malformed etcd value for node2 -> counted in kubal_conftool_malformed_values_total after %s, pool unchanged (%d dests), /alerts %q", ms(dB), len(s.ipvs()), alertB)
	if !strings.Contains(alertB, "malformed conftool value") || !strings.Contains(alertB, conftoolKey+"node2") {
		t.Errorf("step 7b: /alerts does not name the malformed conftool key: %q", alertB)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	_, err = s.etcd.Delete(ctx, conftoolKey+"node2")
	cancel()
	must(t, err)
	// Fixing the key clears the alert.
	if dFix, ok := testutil.Poll(20*time.Second, 50*time.Millisecond, func() bool {
		a := s.alerts()
		return !strings.Contains(a, "conftool") && !strings.Contains(a, "malformed")
	}); ok {
		s.result("7b", "malformed key deleted -> /alerts clear after %s", ms(dFix))
	} else {
		t.Errorf("step 7b: /alerts still reports the conftool key after it was deleted: %q", s.alerts())
	}

	// (c) the API server down for 20 s.
	s.control("stop")
	t1 := time.Now()
	var dC time.Duration
	changed := false
	for time.Since(t1) < 20*time.Second {
		if dC == 0 && strings.Contains(s.alerts(), "source") {
			dC = time.Since(t1)
		}
		if !vmrig.SameKeys(before, s.ipvs()) {
			changed = true
		}
		time.Sleep(250 * time.Millisecond)
	}
	alertC := s.alerts()
	metric := metricLine(s.metrics(), "kubal_k8s_source_connected")
	t2 := time.Now()
	s.control("start")
	dUp := time.Since(t2)
	dClear, ok := testutil.Poll(60*time.Second, 50*time.Millisecond, func() bool { return !strings.Contains(s.alerts(), "source") })
	if !ok {
		t.Errorf("step 7c: the source alert did not clear after the API server came back: %q", s.alerts())
	}
	s.result("7c", "API server down 20 s -> /alerts after %s: %q, %s; pool changed: %v; API server back (%s) -> alert cleared %s later",
		ms(dC), alertC, metric, changed, ms(dUp), ms(dClear))
	if dC == 0 {
		t.Errorf("step 7c: /alerts never reported the API server outage: %q", alertC)
	}
	if changed {
		t.Errorf("step 7c: the pool changed while the API server was down: %v", s.ipvs())
	}
	time.Sleep(2 * time.Second)
	if after := s.pools(primaryAPI); after != beforePools {
		t.Errorf("step 7: /pools changed:\nbefore %s\nafter  %s", beforePools, after)
	}
	_, fail, _ := s.loop.snapshot()
	if fail != fail0 {
		t.Errorf("step 7: client loop saw %d failed requests: %v", fail-fail0, s.loop.failLines())
	}
}

// ---- helpers ----

func (s *scenario) startPiped(name string, env []string, args ...string) *vmrig.Proc {
	p, err := vmrig.StartPiped(name, env, s.loop.read, args...)
	must(s.t, err)
	s.procs = append(s.procs, p)
	return p
}

// ipvs returns the real servers of the VIP's service that take new connections:
// address -> weight.
func (s *scenario) ipvs() map[string]string {
	return vmrig.IPVSDests(fmt.Sprintf("%s:%d", vip, trafficPort))
}

func (s *scenario) setReady(node string, ready bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	must(s.t, k8srig.SetNodeReady(ctx, s.kc, node, ready))
}

func (s *scenario) kubalctl(args ...string) (string, int) {
	cmd := exec.Command("/payload/kubalctl", append([]string{"--url", "http://127.0.0.1:9091", "--timeout", "30s"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBAL_TOKEN="+adminToken)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("kubalctl: %v", err)
	}
	return string(out), code
}

type serverState struct {
	Pooled  *bool `json:"pooled"`
	Up      *bool `json:"up"`
	Enabled *bool `json:"enabled"`
	Weight  int   `json:"weight"`
}

func (s *scenario) poolState(api, host string) serverState {
	var st serverState
	req, _ := http.NewRequest(http.MethodGet, api+"/pools/"+pool+"/"+host, nil)
	req.Header.Set("Accept", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return st
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return st
}

func (s *scenario) wantPool(api, host string, pooled bool, _ string) {
	st := s.poolState(api, host)
	if st.Pooled == nil || *st.Pooled != pooled {
		s.t.Errorf("%s/pools/%s/%s: pooled=%v, want %v", api, pool, host, st.Pooled, pooled)
	}
}

func (s *scenario) pools(api string) string { return httpGet(api + "/pools/" + pool) }
func (s *scenario) alerts() string          { return httpGet(primaryAPI + "/alerts") }
func (s *scenario) metrics() string         { return httpGet(primaryAPI + "/metrics") }

func (s *scenario) control(what string) { must(s.t, vmrig.Control(httpClient, s.ctl, what)) }

var httpClient = &http.Client{Timeout: 30 * time.Second}

func httpGet(url string) string { return vmrig.Get(httpClient, url) }

func httpOK(url string) bool {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

func metricLine(body, name string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func metricAbove(body, name string, v float64) bool {
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, name) {
			continue
		}
		f := strings.Fields(l)
		var x float64
		if _, err := fmt.Sscan(f[len(f)-1], &x); err == nil && x > v {
			return true
		}
	}
	return false
}

func firstLineOf(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// ---- BIRD ----

// birdc runs the real birdc against the router and prints its output.
func (s *scenario) birdc(cmd string) {
	args := append([]string{"-s", filepath.Join(workDir, "bird.ctl")}, strings.Fields(cmd)...)
	out, err := exec.Command("/usr/sbin/birdc", args...).CombinedOutput()
	fmt.Printf("$ birdc %s\n%s", cmd, out)
	if err != nil {
		fmt.Printf("(birdc: %v)\n", err)
	}
}

func (s *scenario) birdCmd(cmd string) string { return s.bird.String(cmd) }

func (s *scenario) routeAtBird() bool {
	out := s.birdCmd("show route for " + vip + "/32")
	return strings.Contains(out, vip+"/32")
}

func (s *scenario) bfdUp() bool {
	return strings.Contains(s.birdCmd("show bfd sessions"), "Up")
}

func (s *scenario) birdDebug() string {
	return s.birdCmd("show protocols all kubal") + "\n" + s.birdCmd("show bfd sessions") + "\n" + s.birdCmd("show route all")
}

func birdLastError(proto string) string {
	for _, l := range strings.Split(proto, "\n") {
		if strings.Contains(l, "Last error") {
			return strings.TrimSpace(l)
		}
	}
	return firstLineOf(proto)
}
