package k8sservices

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	k8srig "github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/integration/vmrig"
	"github.com/kubal/kubal/internal/testutil"
)

const (
	birdAddr   = "10.0.0.254"
	primaryAPI = "http://127.0.0.1:9090"
	vipRange   = "192.0.2.80/29"
	relayAddr  = "10.0.0.1:6443" // kube-proxy's API server address (the guest relays it)
)

// kubalConf: the director's pybal.conf. No static service: everything it balances
// comes from the [k8s-services] template. ProxyFetch is named so that its interval can
// be set (1 s, for the scenario's timing); its port and URL for an
// externalTrafficPolicy: Local Service are the healthCheckNodePort and /healthz.
const kubalConf = `# kubal k8s-services scenario (integration/k8sservices)
[global]
bgp = yes
vip-addresses = yes
bgp-local-asn = 64600
bgp-peer-address = 10.0.0.254
bgp-nexthop-ipv4 = 10.0.0.1
bgp-hold-time = 30
instrumentation = yes
instrumentation_port = 9090
instrumentation_ips = ['127.0.0.1']
state-file = /tmp/k8ss/state.json
kubeconfig = /payload/kubal.kubeconfig
# wrr + drain, no mh: the setting docs/config.md recommends. Without it a client port
# whose SYN went to a node before its kube-proxy had the VIP keeps going there after
# the node is depooled. (Nodes are pooled after their first check, pool-unchecked = no,
# but kube-proxy's health check can answer before it has synced the VIP.)
ipvs-expire-nodest-conn = yes

[k8s-services]
class = kubal.io/lvs
nodes = kubal-e2e/lb=true
vip-ranges = 192.0.2.80/29
scheduler = wrr
depool-threshold = .5
depool-mode = drain
drain-timeout = 10
monitors = ['ProxyFetch']
proxyfetch.url = ['http://localhost/healthz']
proxyfetch.interval = 1
# 2, not 1: with 1 a node's /healthz once took longer in the guest, starved by three
# kube-proxies relisting after the API server outage (7b), and the node was depooled.
proxyfetch.timeout = 2
`

const birdConf = `router id 10.0.0.254;
log "/tmp/k8ss/bird.log" all;
protocol device { scan time 10; }
protocol bgp kubal {
	local 10.0.0.254 as 64512;
	neighbor 10.0.0.1 as 64600;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 2;
	hold time 30;
	graceful restart off;
	ipv4 { import all; export none; };
}
`

type scenario struct {
	t       *testing.T
	procs   []*vmrig.Proc
	kubal   *vmrig.Proc
	pods    map[string]*vmrig.Proc
	bird    *vmrig.Bird
	loop    *loopStats
	client  *vmrig.Proc
	kc      kubernetes.Interface
	ctl     string
	vip     string
	hcPort  int32
	settled time.Time // the client loop's phase settled (see apply)
	steps   *vmrig.Steps
}

func guest(t *testing.T) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Fatalf("no IPVS in the guest kernel: %v", err)
	}
	s := &scenario{t: t, ctl: os.Getenv("KUBAL_K8SS_CTL"), pods: map[string]*vmrig.Proc{}, steps: vmrig.NewSteps("K8SS-STEP")}
	must(t, os.MkdirAll(workDir, 0o755))
	t.Cleanup(s.stopAll)
	must(t, os.WriteFile(filepath.Join(workDir, "pybal.conf"), []byte(kubalConf), 0o644))
	must(t, os.WriteFile(filepath.Join(workDir, "bird.conf"), []byte(birdConf), 0o644))

	s.network()
	s.relay(os.Getenv("KUBAL_K8SS_API"))
	cfg, err := clientcmd.BuildConfigFromFlags("", "/payload/admin.kubeconfig")
	must(t, err)
	s.kc, err = kubernetes.NewForConfig(cfg)
	must(t, err)

	for i, n := range nodes {
		name := fmt.Sprintf("web-%d", i+1)
		s.pods[n.name] = s.start("pod-"+name, []string{envRole + "=pod", envName + "=" + name}, "/sbin/ip", "netns", "exec", "pod"+n.name[4:], "/payload/k8ss.test")
	}
	t0 := time.Now()
	s.startKubeProxies()
	for _, n := range nodes {
		if _, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool { return httpOK("http://" + n.podNet + ".2:8080/") }); !ok {
			t.Fatalf("pod on %s never answered", n.name)
		}
	}
	s.startBird()
	s.kubal = s.start("kubal", nil, "/payload/kubal", "-d", "-c", filepath.Join(workDir, "pybal.conf"))
	if _, ok := testutil.Poll(60*time.Second, 50*time.Millisecond, func() bool { return httpOK(primaryAPI+"/readyz") || !s.kubal.Alive() }); !ok || !s.kubal.Alive() {
		t.Fatalf("kubal not ready (alive: %v)", s.kubal.Alive())
	}
	s.result("0", "3 kube-proxy %s (nftables mode) healthy and kubal ready %s after the start", k8srig.KubeVersion, ms(time.Since(t0)))

	s.step1()
	s.step2()
	s.step3()
	s.step4()
	s.step5()
	s.step6()
	s.step7()
	s.result("kube-proxy", "IPv4 rule syncs (SyncProxyRules elapsed, all nodes, TCG): %s", s.proxySyncs())
	for _, name := range []string{"kubal", "kube-proxy-node1"} {
		b, _ := os.ReadFile(filepath.Join(workDir, name+".log"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "ProxyFetch") && !strings.Contains(l, "pool") {
				continue
			}
			if len(l) > 300 {
				l = l[:300]
			}
			fmt.Println("DIAG", name, l)
		}
	}
}

// proxySyncs summarises kube-proxy's own timing of its IPv4 nftables syncs: what it
// adds, under TCG, between a change in the API and the rules in the kernel.
func (s *scenario) proxySyncs() string {
	var ds []time.Duration
	for _, n := range nodes {
		b, _ := os.ReadFile(filepath.Join(workDir, "kube-proxy-"+n.name+".log"))
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.Contains(l, `"SyncProxyRules complete" ipFamily="IPv4"`) {
				continue
			}
			_, v, ok := strings.Cut(l, `elapsed="`)
			v, _, _ = strings.Cut(v, `"`)
			if d, err := time.ParseDuration(v); ok && err == nil {
				ds = append(ds, d)
			}
		}
	}
	if len(ds) == 0 {
		return "none logged"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return fmt.Sprintf("%d syncs, median %s, max %s", len(ds), ms(ds[len(ds)/2]), ms(ds[len(ds)-1]))
}

// proxyTimeline is kube-proxy's IPv4 nftables syncs on a node that ended after t0
// and started before until, as offsets from t0 ("+0.07-2.00s"): where apply -> first
// request goes. klog's time has no year; the guest's clock is UTC, as t0's.
func (s *scenario) proxyTimeline(node string, t0, until time.Time) string {
	b, _ := os.ReadFile(filepath.Join(workDir, "kube-proxy-"+node+".log"))
	var out []string
	var start time.Time
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || len(f[0]) != 5 || !strings.Contains(l, `ipFamily="IPv4"`) {
			continue
		}
		at, err := time.Parse("0102 15:04:05.000000", f[0][1:]+" "+f[1])
		if err != nil {
			continue
		}
		u := t0.UTC()
		at = time.Date(u.Year(), at.Month(), at.Day(), at.Hour(), at.Minute(), at.Second(), at.Nanosecond(), time.UTC)
		switch {
		case strings.Contains(l, `"Syncing nftables rules"`):
			start = at
		case strings.Contains(l, `"SyncProxyRules complete"`) && !start.IsZero():
			if at.After(t0) && start.Before(until) {
				out = append(out, fmt.Sprintf("+%.2f-%.2fs", start.Sub(t0).Seconds(), at.Sub(t0).Seconds()))
			}
			start = time.Time{}
		}
	}
	if len(out) == 0 {
		return "none logged"
	}
	return strings.Join(out, ", ")
}

// network builds the topology: the director is the root namespace (it reaches the
// host through eth0); the nodes, the client and the router hang off br0; each node
// routes its pod subnet to one pod namespace behind a veth. No node has the VIP.
func (s *scenario) network() {
	must(s.t, vmrig.Bridge(`for n in 1 2 3; do
	add node$n 10.0.0.1$n
	ip netns exec node$n sysctl -qw net.ipv4.ip_forward=1
	ip netns add pod$n
	ip -n node$n link add vpod type veth peer name eth0 netns pod$n
	ip -n node$n addr add 10.244.$n.1/24 dev vpod
	ip -n node$n link set vpod up
	ip -n pod$n link set lo up
	ip -n pod$n addr add 10.244.$n.2/24 dev eth0
	ip -n pod$n link set eth0 up
	ip -n pod$n route add default via 10.244.$n.1
	# The director reaches the pods for the test's own checks, as a routed cluster does.
	ip route add 10.244.$n.0/24 via 10.0.0.1$n
done
add client 10.0.0.10
ip -n client route add 192.0.2.80/29 via 10.0.0.1
# probe: sends to the VIP straight to node3, bypassing the director.
add probe 10.0.0.9
ip -n probe route add 192.0.2.80/29 via 10.0.0.13
add bird 10.0.0.254
`))
}

// relay forwards relayAddr to the API server through qemu's user network: the node
// namespaces have no route to 10.0.2.2, and a TCP relay is simpler than NAT.
func (s *scenario) relay(api string) {
	ln, err := net.Listen("tcp", relayAddr)
	must(s.t, err)
	s.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", api, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
				<-done
			}()
		}
	}()
}

// startKubeProxies runs one real kube-proxy per node namespace and waits for each to
// be healthy (its /healthz answers 200 once it has synced its rules).
func (s *scenario) startKubeProxies() {
	for _, n := range nodes {
		s.start("kube-proxy-"+n.name, nil, "/sbin/ip", "netns", "exec", n.name, "/payload/kube-proxy",
			"--proxy-mode=nftables", "--hostname-override="+n.name, "--kubeconfig=/payload/proxy.kubeconfig",
			"--cluster-cidr=10.244.0.0/16",
			// Global or already right in a fresh namespace: skip the sysctl writes.
			"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
			"--healthz-bind-address="+n.addr+":10256", "--metrics-bind-address=127.0.0.1:10249", "--v=2")
	}
	for _, n := range nodes {
		if _, ok := testutil.Poll(120*time.Second, 100*time.Millisecond, func() bool {
			return httpOK("http://" + n.addr + ":10256/healthz")
		}); !ok {
			s.dumpLog("kube-proxy-"+n.name, 8000)
			s.t.Fatalf("kube-proxy on %s never became healthy (log above)", n.name)
		}
	}
}

func (s *scenario) start(name string, env []string, args ...string) *vmrig.Proc {
	p, err := vmrig.Start(name, filepath.Join(workDir, name+".log"), env, args...)
	must(s.t, err)
	s.procs = append(s.procs, p)
	return p
}

// startPiped runs a client loop whose stdout the scenario's current loopStats counts.
func (s *scenario) startPiped(name string, env []string, args ...string) *vmrig.Proc {
	p, err := vmrig.StartPiped(name, env, s.loop.read, args...)
	must(s.t, err)
	s.procs = append(s.procs, p)
	return p
}

func (s *scenario) stopAll() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop(10 * time.Second)
	}
	if s.t.Failed() {
		for _, name := range []string{"kubal", "kube-proxy-node1", "kube-proxy-node3", "bird"} {
			s.dumpLog(name, 5000)
		}
	}
}

func (s *scenario) dumpLog(name string, tail int) {
	vmrig.DumpLog(filepath.Join(workDir, name+".log"), tail)
}

func (s *scenario) startBird() {
	p, b, err := vmrig.StartBird("bird", workDir)
	if p != nil {
		s.procs = append(s.procs, p)
	}
	must(s.t, err)
	s.bird = b
}

func (s *scenario) result(step, format string, args ...any) { s.steps.Add(step, format, args...) }

// ---- the Kubernetes objects ----

func (s *scenario) service(name string, annotations map[string]string) *corev1.Service {
	cls := class
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: nsShop, Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass:     &cls,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Selector:              map[string]string{"app": name},
			Ports:                 []corev1.ServicePort{{Name: "http", Port: svcPort, TargetPort: intstr.FromInt32(podPort), Protocol: corev1.ProtocolTCP}},
		},
	}
}

type epState int

const (
	epReady epState = iota
	epTerminating
)

// slice is web's EndpointSlice as the endpointslice controller would write it: one
// endpoint per pod, with its node and conditions.
func slice(eps map[string]epState) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svcName + "-k8ss", Namespace: nsShop,
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName, discoveryv1.LabelManagedBy: "k8ss.kubal.test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(podPort)), Protocol: ptr(corev1.ProtocolTCP)}},
	}
	for i, n := range nodes {
		st, ok := eps[n.name]
		if !ok {
			continue
		}
		c := discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)}
		if st == epTerminating {
			c = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}
		}
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{n.podNet + ".2"}, NodeName: ptr(n.name), Conditions: c,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: nsShop, Name: fmt.Sprintf("web-%d", i+1)},
		})
	}
	return es
}

func ptr[T any](v T) *T { return &v }

func (s *scenario) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 20*time.Second)
}

func (s *scenario) updateSlice(eps map[string]epState) {
	ctx, cancel := s.ctx()
	defer cancel()
	cur, err := s.kc.DiscoveryV1().EndpointSlices(nsShop).Get(ctx, svcName+"-k8ss", metav1.GetOptions{})
	must(s.t, err)
	es := slice(eps)
	es.ResourceVersion = cur.ResourceVersion
	_, err = s.kc.DiscoveryV1().EndpointSlices(nsShop).Update(ctx, es, metav1.UpdateOptions{})
	must(s.t, err)
}

func (s *scenario) statusIPs(name string) ([]string, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	svc, err := s.kc.CoreV1().Services(nsShop).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		ips = append(ips, in.IP)
	}
	return ips, nil
}

// event returns the message of the first Event on the Service with that reason.
func (s *scenario) event(name, reason string) string {
	ctx, cancel := s.ctx()
	defer cancel()
	evs, err := s.kc.CoreV1().Events(nsShop).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return ""
	}
	for _, e := range evs.Items {
		if e.Reason == reason {
			return e.Type + " " + e.Reason + ": " + e.Message
		}
	}
	return ""
}

func (s *scenario) setAllReady(ready bool) {
	ctx, cancel := s.ctx()
	defer cancel()
	for _, n := range nodes {
		must(s.t, k8srig.SetNodeReady(ctx, s.kc, n.name, ready))
	}
}

// ---- steps ----

// 1. Apply web (LoadBalancer, kubal's class, ETP Local) and its endpoints, one ready
// pod per node: status gets the VIP, IPVS holds the three nodes, BIRD has the route,
// the client loop succeeds; measured from the apply to the first successful request.
func (s *scenario) step1() {
	s.apply("1", map[string]epState{"node1": epReady, "node2": epReady, "node3": epReady})
}

// apply creates web and its EndpointSlice (eps), starts a client loop that targets
// the VIP as soon as web's status names it, and measures from the apply: status, IPVS
// holding the nodes with a ready endpoint, BIRD's route, the first successful request.
func (s *scenario) apply(step string, eps map[string]epState) {
	t := s.t
	ctx, cancel := s.ctx()
	defer cancel()
	s.loop = &loopStats{perPod: map[string]int{}}
	s.client = s.startPiped("client", []string{envRole + "=client"}, "/sbin/ip", "netns", "exec", "client", "/payload/k8ss.test")
	// The admin client's TLS session and discovery are set up before the clock starts.
	_, err := s.kc.CoreV1().Namespaces().Get(ctx, nsShop, metav1.GetOptions{})
	must(t, err)
	t0 := time.Now()
	svc, err := s.kc.CoreV1().Services(nsShop).Create(ctx, s.service(svcName, nil), metav1.CreateOptions{})
	must(t, err)
	_, err = s.kc.DiscoveryV1().EndpointSlices(nsShop).Create(ctx, slice(eps), metav1.CreateOptions{})
	must(t, err)
	dApply := time.Since(t0)
	fmt.Println("DIAG t0", step, t0.Format(time.RFC3339Nano), "applied", time.Now().Format(time.RFC3339Nano))
	s.hcPort = svc.Spec.HealthCheckNodePort
	if s.hcPort == 0 {
		t.Fatalf("step %s: the API server gave web no healthCheckNodePort", step)
	}
	dStatus, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		ips, err := s.statusIPs(svcName)
		if err != nil || len(ips) != 1 {
			return false
		}
		s.vip = ips[0]
		must(t, os.WriteFile(vipFile, []byte(s.vip), 0o644))
		return true
	})
	if !ok {
		t.Fatalf("step %s: web's status.loadBalancer.ingress never got a VIP", step)
	}
	want := map[string]bool{}
	for _, n := range nodes {
		if _, ok := eps[n.name]; ok {
			want[n.addr] = true
		}
	}
	var dIPVS, dRoute time.Duration
	_, ok = testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		if got := s.ipvs(); dIPVS == 0 && len(got) == len(want) && vmrig.SameKeys(got, toSet(want)) {
			dIPVS = time.Since(t0)
		}
		if dRoute == 0 && s.routeAtBird() {
			dRoute = time.Since(t0)
		}
		return dIPVS != 0 && dRoute != 0 && !s.loop.first().IsZero()
	})
	if !ok {
		t.Fatalf("step %s: after 30 s: IPVS %v (%s), the nodes with a ready endpoint %v after %s, BIRD route after %s, first request OK at %v; kube-proxy node1 ruleset:\n%s",
			step, s.ipvs(), s.vip, keys(toSet(want)), dIPVS, dRoute, s.loop.first(), s.nft("node1"))
	}
	dFirst := s.loop.first().Sub(t0)
	okFrom := s.loop.first()
	// Settled: IPVS holds exactly the nodes with a ready endpoint and every pod has
	// answered. Until then a request can meet a node whose kube-proxy has not synced
	// the VIP yet (its health check can answer first), or one kubal still holds under
	// the depool threshold though it has no endpoint; those are reported, not asserted.
	var settled time.Time
	_, ok = testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		_, per := s.loop.snapshot()
		if len(per) == len(eps) && vmrig.SameKeys(s.ipvs(), toSet(want)) {
			settled = time.Now()
			return true
		}
		return false
	})
	nOK, per := s.loop.snapshot()
	if !ok {
		t.Errorf("step %s: the client loop did not reach all %d pods: %v", step, len(eps), per)
	}
	s.settled = settled
	transitional := s.loop.failedSince(okFrom)
	if !inRange(s.vip) {
		t.Errorf("step %s: VIP %s is not in %s", step, s.vip, vipRange)
	}
	for _, n := range nodes {
		if out, _ := exec.Command("/sbin/ip", "-n", n.name, "-o", "addr").CombinedOutput(); strings.Contains(string(out), s.vip) {
			t.Errorf("step %s: %s has the VIP: %s", step, n.name, out)
		}
	}
	route := s.birdCmd("show route for " + s.vip + "/32 all")
	if !strings.Contains(route, "BGP.next_hop: 10.0.0.1") {
		t.Errorf("step %s: BIRD's route lacks next hop 10.0.0.1:\n%s", step, route)
	}
	s.result(step, "apply web (+ EndpointSlice, API %s) -> status VIP %s after %s; IPVS holds exactly the %d nodes with a ready endpoint after %s; BIRD route after %s; first successful request through the VIP after %s (goal < 3 s); all %d pods answered after %s (%d OK; %d failed between the first success and then; no VIP on any node)",
		ms(dApply), s.vip, ms(dStatus), len(eps), ms(dIPVS), ms(dRoute), ms(dFirst), len(per), ms(settled.Sub(t0)), nOK, transitional)
	// kube-proxy's share: a sync that began before the status named the VIP cannot
	// carry it, and the next waits for it to end and for kube-proxy's 1 s minimum
	// sync period.
	s.result(step, "kube-proxy IPv4 syncs (start-end, from the apply) up to the first successful request: node1 %s; node2 %s; node3 %s",
		s.proxyTimeline("node1", t0, okFrom), s.proxyTimeline("node2", t0, okFrom), s.proxyTimeline("node3", t0, okFrom))
	if dFirst > 3*time.Second {
		t.Logf("step %s: apply -> first successful request %s is over the 3 s goal", step, ms(dFirst))
	}
}

// stopLoop stops the client loop and reports (and checks) its totals.
func (s *scenario) stopLoop(step string) {
	s.client.Signal(syscall.SIGTERM, 10*time.Second)
	nOK, per := s.loop.snapshot()
	f := s.loop.failedSince(s.settled)
	s.result(step, "client loop: %d requests OK, per pod %v; %d failed once settled", nOK, per, f)
	if f != 0 {
		s.t.Errorf("client loop: %d requests failed once settled: %v", f, s.loop.failLinesSince(s.settled))
	}
}

// 2. Scale web off node3 as Kubernetes does: its endpoint first terminating (ready
// false, serving true), kube-proxy still serving it while the health check node port
// answers 503; then removed and the pod stopped. node3 leaves the pool; no request
// fails.
func (s *scenario) step2() {
	t := s.t
	hc := fmt.Sprintf("http://10.0.0.13:%d/healthz", s.hcPort)
	if code, body := httpCode(hc); code != 200 {
		t.Fatalf("step 2: node3's health check node port answers %d before the scale-down: %s", code, body)
	}
	t0 := time.Now()
	s.updateSlice(map[string]epState{"node1": epReady, "node2": epReady, "node3": epTerminating})
	var dOut, d503 time.Duration
	var body503 string
	_, ok := testutil.Poll(20*time.Second, 20*time.Millisecond, func() bool {
		if _, in := s.ipvs()["10.0.0.13"]; !in && dOut == 0 {
			dOut = time.Since(t0)
		}
		if d503 == 0 {
			if code, body := httpCode(hc); code == 503 {
				d503, body503 = time.Since(t0), body
			}
		}
		return dOut != 0 && d503 != 0
	})
	if !ok {
		t.Fatalf("step 2: node3 terminating: out of IPVS after %s, health check 503 after %s (0 = never); IPVS %v", dOut, d503, s.ipvs())
	}
	// The pod still serves through node3's kube-proxy (a terminating, serving endpoint
	// is used when the node has no ready one) while connections drain: a request to
	// the VIP routed straight to node3 reaches web-3.
	out, err := exec.Command("/sbin/ip", "netns", "exec", "probe", "/bin/env", envRole+"=probe", "/payload/k8ss.test").CombinedOutput()
	viaNode3 := strings.TrimSpace(string(out))
	if err != nil || viaNode3 != "web-3" {
		t.Errorf("step 2: a request to the VIP through node3 while web-3 is terminating: %v: %q, want web-3", err, viaNode3)
	}
	time.Sleep(time.Second)
	s.updateSlice(map[string]epState{"node1": epReady, "node2": epReady})
	time.Sleep(time.Second)
	s.pods["node3"].Signal(syscall.SIGTERM, 10*time.Second)
	_, per0 := s.loop.snapshot()
	time.Sleep(2 * time.Second)
	_, per1 := s.loop.snapshot()
	failed := s.loop.failedSince(t0)
	s.result("2", "web's endpoint on node3 terminating -> node3 out of IPVS after %s (kubal), its health check node port 503 after %s (kube-proxy: %s), a request via node3 still answered by %q; endpoint removed, pod stopped; IPVS %v; failed requests: %d",
		ms(dOut), ms(d503), strings.Join(strings.Fields(body503), " "), viaNode3, keys(s.ipvs()), failed)
	if failed != 0 {
		t.Errorf("step 2: %d client requests failed: %v", failed, s.loop.failLinesSince(t0))
	}
	if per1["web-3"] != per0["web-3"] {
		t.Errorf("step 2: web-3 still gets requests after it was removed: %v -> %v", per0, per1)
	}
	if got := s.ipvs(); len(got) != 2 {
		t.Errorf("step 2: IPVS %v, want node1 and node2", got)
	}
}

// 3. A second Service with a bad annotation: a Warning Event naming the annotation,
// no kubal service, nothing else disturbed.
func (s *scenario) step3() {
	t := s.t
	before := s.ipvs()
	t0 := time.Now()
	ctx, cancel := s.ctx()
	defer cancel()
	_, err := s.kc.CoreV1().Services(nsShop).Create(ctx, s.service("bad", map[string]string{"lvs.kubal.io/scheduler": "fastest"}), metav1.CreateOptions{})
	must(t, err)
	var ev string
	d, ok := testutil.Poll(20*time.Second, 100*time.Millisecond, func() bool { ev = s.event("bad", "KubalInvalid"); return ev != "" })
	if !ok {
		t.Fatalf("step 3: no KubalInvalid Event on shop/bad")
	}
	if !strings.Contains(ev, "lvs.kubal.io/scheduler") {
		t.Errorf("step 3: the Event does not name the annotation: %q", ev)
	}
	time.Sleep(time.Second)
	if strings.Contains(httpGet(primaryAPI+"/pools"), "shop.bad") {
		t.Errorf("step 3: shop.bad is a kubal service: %s", httpGet(primaryAPI+"/pools"))
	}
	if ips, _ := s.statusIPs("bad"); len(ips) != 0 {
		t.Errorf("step 3: bad got a VIP: %v", ips)
	}
	if after := s.ipvs(); !vmrig.SameKeys(before, after) {
		t.Errorf("step 3: web's IPVS changed: %v -> %v", before, after)
	}
	s.result("3", "Service shop/bad (lvs.kubal.io/scheduler: fastest) -> Event after %s: %q; not load-balanced, web unchanged; failed requests: %d", ms(d), ev, s.loop.failedSince(t0))
	if f := s.loop.failedSince(t0); f != 0 {
		t.Errorf("step 3: %d client requests failed", f)
	}
}

// 4. A Service asking for web's VIP: refused with an Event, web undisturbed.
func (s *scenario) step4() {
	t := s.t
	before := s.ipvs()
	t0 := time.Now()
	ctx, cancel := s.ctx()
	defer cancel()
	_, err := s.kc.CoreV1().Services(nsShop).Create(ctx, s.service("clash", map[string]string{"lvs.kubal.io/vip": s.vip}), metav1.CreateOptions{})
	must(t, err)
	var ev string
	d, ok := testutil.Poll(20*time.Second, 100*time.Millisecond, func() bool { ev = s.event("clash", "KubalVIPRefused"); return ev != "" })
	if !ok {
		t.Fatalf("step 4: no KubalVIPRefused Event on shop/clash")
	}
	time.Sleep(time.Second)
	if ips, _ := s.statusIPs("clash"); len(ips) != 0 {
		t.Errorf("step 4: clash got status %v", ips)
	}
	if ips, _ := s.statusIPs(svcName); len(ips) != 1 || ips[0] != s.vip {
		t.Errorf("step 4: web's status is now %v, want [%s]", ips, s.vip)
	}
	if after := s.ipvs(); !vmrig.SameKeys(before, after) {
		t.Errorf("step 4: web's IPVS changed: %v -> %v", before, after)
	}
	s.result("4", "Service shop/clash asking for %s -> refused, Event after %s: %q; web unchanged; failed requests: %d", s.vip, ms(d), ev, s.loop.failedSince(t0))
	if f := s.loop.failedSince(t0); f != 0 {
		t.Errorf("step 4: %d client requests failed", f)
	}
	for _, n := range []string{"bad", "clash"} {
		must(t, s.kc.CoreV1().Services(nsShop).Delete(ctx, n, metav1.DeleteOptions{}))
	}
}

// 5. Every node NotReady through the API: the pool is held at its depool threshold,
// traffic keeps flowing. web's real servers are node1 and node2 (node3 runs no pod
// since step 2: Local), so .5 of 2 keeps at least one: the first node to turn
// NotReady may go while the other is still up, the last one stays (PyBal's rule).
func (s *scenario) step5() {
	t := s.t
	before := s.ipvs()
	t0 := time.Now()
	s.setAllReady(false)
	time.Sleep(3 * time.Second)
	after := s.ipvs()
	pools := httpGet(primaryAPI + "/pools/" + poolName)
	s.setAllReady(true)
	s.result("5", "all 3 nodes NotReady for 3 s -> IPVS %v (before %v; threshold .5 of the 2 nodes running a pod keeps 1 or 2 pooled); failed requests: %d", keys(after), keys(before), s.loop.failedSince(t0))
	fmt.Printf("$ curl %s/pools/%s  (all NotReady)\n%s\n", primaryAPI, poolName, pools)
	kept := 0
	for k := range after {
		if _, ok := before[k]; ok {
			kept++
		}
	}
	if kept == 0 || kept != len(after) {
		t.Errorf("step 5: the pool was not held at its threshold: %v -> %v", before, after)
	}
	if f := s.loop.failedSince(t0); f != 0 {
		t.Errorf("step 5: %d client requests failed", f)
	}
	time.Sleep(time.Second)
}

// 6. Delete web (Service and EndpointSlice): the IPVS service removed, the route
// withdrawn, the VIP off the director, kube-proxy's rules for the VIP gone. (The
// status goes with the object: what it did, make kube-proxy accept the VIP, is undone.)
func (s *scenario) step6() {
	t := s.t
	s.stopLoop("6")
	must(t, os.Remove(vipFile))
	ctx, cancel := s.ctx()
	defer cancel()
	t0 := time.Now()
	must(t, s.kc.CoreV1().Services(nsShop).Delete(ctx, svcName, metav1.DeleteOptions{}))
	must(t, s.kc.DiscoveryV1().EndpointSlices(nsShop).Delete(ctx, svcName+"-k8ss", metav1.DeleteOptions{}))
	var dIPVS, dRoute, dProxy, dAddr time.Duration
	_, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		if dIPVS == 0 && !s.ipvsHasService() {
			dIPVS = time.Since(t0)
		}
		if dRoute == 0 && !s.routeAtBird() {
			dRoute = time.Since(t0)
		}
		if dAddr == 0 && !s.vipOnLo() {
			dAddr = time.Since(t0)
		}
		if dProxy == 0 && !strings.Contains(s.nft("node1"), s.vip) {
			dProxy = time.Since(t0)
		}
		return dIPVS != 0 && dRoute != 0 && dProxy != 0 && dAddr != 0
	})
	if !ok {
		t.Errorf("step 6: after deleting web: IPVS service gone after %s, route withdrawn after %s, VIP off lo after %s, kube-proxy rules gone after %s (0 = not within 30 s)", dIPVS, dRoute, dAddr, dProxy)
	}
	if strings.Contains(httpGet(primaryAPI+"/pools"), poolName) {
		t.Errorf("step 6: %s still in /pools", poolName)
	}
	s.result("6", "delete web -> IPVS service removed after %s, BIRD route withdrawn after %s, VIP off the director's lo after %s (kubal); kube-proxy's rules for %s gone (node1) after %s; %s no longer in /pools",
		ms(dIPVS), ms(dRoute), ms(dAddr), s.vip, ms(dProxy), poolName)
}

// 7. Apply web again (pods on node1 and node2: node3's is gone), then the API server
// down 20 s: nothing changes (IPVS identical, the client loop fine).
func (s *scenario) step7() {
	t := s.t
	s.apply("7a", map[string]epState{"node1": epReady, "node2": epReady})
	// kube-proxy's health check on node3 (no endpoint) says 503: node3 stays out.
	time.Sleep(2 * time.Second)
	before := s.ipvsRaw()
	t0 := time.Now()
	s.control("stop")
	dStop := time.Since(t0)
	changed := ""
	var trace connTrace
	for time.Since(t0) < 20*time.Second {
		if now := s.ipvsRaw(); now != before && changed == "" {
			changed = now
		}
		trace.sample(t0)
		time.Sleep(250 * time.Millisecond)
	}
	alerts := httpGet(primaryAPI + "/alerts")
	t1 := time.Now()
	s.control("start")
	dUp := time.Since(t1)
	for t2 := time.Now(); time.Since(t2) < 2*time.Second; time.Sleep(250 * time.Millisecond) {
		trace.sample(t0)
	}
	if now := s.ipvsRaw(); now != before && changed == "" {
		changed = now
	}
	failed := s.loop.failedSince(t0)
	if failed != 0 {
		// What the director saw of the failed connections: which node each SYN went to
		// and for how long it stayed unanswered; with the stop/start times and each
		// node's kube-proxy log, this says where the packets were lost.
		fmt.Printf("---- step 7b: API server stopped at +%s, start asked at +%s (took %s); failed requests: %v\n", ms(dStop), ms(t1.Sub(t0)), ms(dUp), s.loop.failLinesSince(t0))
		fmt.Print(trace.String())
		for _, n := range nodes {
			s.dumpLog("kube-proxy-"+n.name, 6000)
		}
		s.dumpLog("kubal", 6000)
	}
	s.result("7b", "API server down 20 s -> IPVS identical (active destinations): %v; /alerts %q; back in %s; failed requests: %d", changed == "", alerts, ms(dUp), failed)
	if changed != "" {
		t.Errorf("step 7b: IPVS changed while the API server was down:\nbefore %s\nafter  %s", before, changed)
	}
	if failed != 0 {
		t.Errorf("step 7b: %d client requests failed: %v", failed, s.loop.failLinesSince(t0))
	}
	s.stopLoop("7")
}

// ---- helpers ----

// connTrace records the director's connections that wait for a SYN-ACK (IPVS state
// SYN_RECV): client port -> real server, first and last seen, sampled from
// `ipvsadm -Lnc`. A connection seen there for a second or more is one the node it
// went to did not answer; one there since before the step is an old entry that new
// connections from the same client port still follow (see plan.Sysctls).
type connTrace struct {
	seen  map[string]*traced
	order []string
}

type traced struct{ dest, first, last string }

func (c *connTrace) sample(t0 time.Time) {
	out, _ := exec.Command("/sbin/ipvsadm", "-Lnc").CombinedOutput()
	at := ms(time.Since(t0))
	if c.seen == nil {
		c.seen = map[string]*traced{}
	}
	for _, l := range strings.Split(string(out), "\n") {
		// pro expire state source virtual destination
		f := strings.Fields(l)
		if len(f) < 6 || f[2] != "SYN_RECV" {
			continue
		}
		key := f[3] + " -> " + f[5]
		e, ok := c.seen[key]
		if !ok {
			e = &traced{dest: f[5], first: at}
			c.seen[key] = e
			c.order = append(c.order, key)
		}
		e.last = at
	}
}

func (c *connTrace) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "---- connections in SYN_RECV at the director (%d):\n", len(c.order))
	for _, k := range c.order {
		e := c.seen[k]
		fmt.Fprintf(&b, "  %s: +%s .. +%s\n", k, e.first, e.last)
	}
	return b.String()
}

func inRange(ip string) bool {
	_, n, _ := net.ParseCIDR(vipRange)
	a := net.ParseIP(ip)
	return a != nil && n.Contains(a)
}

// ipvs returns the real servers of web's IPVS service that take new connections:
// address -> weight.
func (s *scenario) ipvs() map[string]string {
	if s.vip == "" {
		return map[string]string{}
	}
	return vmrig.IPVSDests(net.JoinHostPort(s.vip, fmt.Sprint(svcPort)))
}

func (s *scenario) vipOnLo() bool {
	out, _ := exec.Command("/sbin/ip", "-o", "addr", "show", "dev", "lo").CombinedOutput()
	return strings.Contains(string(out), " "+s.vip+"/")
}

func (s *scenario) ipvsHasService() bool {
	return exec.Command("/sbin/ipvsadm", "-Ln", "-t", net.JoinHostPort(s.vip, fmt.Sprint(svcPort))).Run() == nil
}

// ipvsRaw is the whole IPVS table without the connection counters and without
// draining destinations (weight 0: out of the pool, deleted when the drain timer that
// started before ends).
func (s *scenario) ipvsRaw() string {
	out, _ := exec.Command("/sbin/ipvsadm", "-Ln").CombinedOutput()
	var b strings.Builder
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[0] == "->" {
			f = f[:4]
		}
		if len(f) == 4 && f[0] == "->" && f[3] == "0" {
			continue
		}
		b.WriteString(strings.Join(f, " ") + "; ")
	}
	return b.String()
}

func (s *scenario) nft(node string) string {
	out, err := exec.Command("/sbin/ip", "netns", "exec", node, "/usr/sbin/nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		return "ERROR " + err.Error() + ": " + string(out)
	}
	return string(out)
}

func toSet(m map[string]bool) map[string]string {
	out := make(map[string]string, len(m))
	for k := range m {
		out[k] = ""
	}
	return out
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (s *scenario) control(what string) { must(s.t, vmrig.Control(httpClient, s.ctl, what)) }

var httpClient = &http.Client{Timeout: 30 * time.Second}

func httpGet(url string) string { return vmrig.Get(httpClient, url) }

func httpCode(url string) (int, string) {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func httpOK(url string) bool {
	code, _ := httpCode(url)
	return code == 200
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// ---- BIRD ----

func (s *scenario) birdCmd(cmd string) string { return s.bird.String(cmd) }

func (s *scenario) routeAtBird() bool {
	return s.vip != "" && strings.Contains(s.birdCmd("show route for "+s.vip+"/32"), s.vip+"/32")
}
