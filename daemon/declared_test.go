package daemon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/ipvs"

	"github.com/kubal/kubal/internal/testutil"
)

// Issue 14 through the daemon, against a real kube-apiserver: a LoadBalancer Service
// of kubal's class becomes a running pool (in /pools, IPVS with the nodes) without a
// reload or restart, and leaves when the Service is deleted.
func TestKubernetesDeclaredServiceRunsWithoutReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, conf := declaredRig(t, ctx, map[string]string{"lvs": "yes"}, func(i int) []string { return []string{fmt.Sprintf("10.7.0.%d", i+1)} },
		"nodes = lvs=yes\nvip-ranges = ['192.0.2.0/28']\n")
	fake := ipvs.NewFake()
	d, stopDaemon := startDaemonWith(t, conf, fake)

	start := time.Now()
	svc := createLB(t, ctx, c, "web", corev1.ServiceExternalTrafficPolicyCluster)
	const name = "default.web:80"
	var key ipvs.ServiceKey
	took := testutil.Eventually(t, 20*time.Second, "the declared service in /pools and IPVS", func() bool {
		if !slices.Contains(d.Pools(), name) {
			return false
		}
		for k, p := range fake.Table() {
			if k.Port == 80 && netip.MustParsePrefix("192.0.2.0/28").Contains(k.Addr) && len(p.Destinations) == 2 {
				key = k
				return true
			}
		}
		return false
	})
	t.Logf("Service created -> programmed in IPVS after %v (since the API write: %v)", took, time.Since(start))
	testutil.Eventually(t, 10*time.Second, "status.loadBalancer.ingress", func() bool {
		s, err := c.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && len(s.Status.LoadBalancer.Ingress) == 1 && s.Status.LoadBalancer.Ingress[0].IP == key.Addr.String()
	})
	if err := c.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "the deleted Service's pool and IPVS service gone", func() bool {
		_, inKernel := fake.Table()[key]
		return !slices.Contains(d.Pools(), name) && !inKernel
	})

	// A Service deleted while kubal is down: the restarted kubal removes its IPVS
	// service once the Services are listed (a leftover in the VIP ranges), and leaves
	// a service outside the ranges alone.
	svc.Name = "api"
	if _, err := c.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, "default.api:80 in IPVS", func() bool {
		for k, p := range fake.Table() {
			if k.Port == 80 && netip.MustParsePrefix("192.0.2.0/28").Contains(k.Addr) && len(p.Destinations) == 2 {
				key = k
				return true
			}
		}
		return false
	})
	foreign := ipvs.ServiceKey{Protocol: ipvs.TCP, Addr: netip.MustParseAddr("198.51.100.1"), Port: 80}
	if err := fake.AddService(ctx, ipvs.Service{ServiceKey: foreign, Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	stopDaemon()
	if err := c.CoreV1().Services("default").Delete(ctx, "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	d, _ = startDaemonWith(t, conf, fake)
	testutil.Eventually(t, 20*time.Second, "ready, and the Service deleted while down gone from IPVS", func() bool {
		_, inKernel := fake.Table()[key]
		return d.Ready() == nil && !inKernel
	})
	if _, ok := fake.Table()[foreign]; !ok {
		t.Error("the IPVS service outside the VIP ranges was removed")
	}
}

// A dual-stack Service (issue 14) through the daemon and a dual-stack kube-apiserver:
// one pool per family, each with the nodes' addresses of its family, a VIP of each
// family's range, and both in status.loadBalancer.ingress.
func TestKubernetesDeclaredDualStackService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, conf := declaredRig(t, ctx, nil, func(i int) []string {
		return []string{fmt.Sprintf("10.7.0.%d", i+1), fmt.Sprintf("2001:db8:7::%d", i+1)}
	}, "vip-ranges = 192.0.2.0/28, 2001:db8:ed1a::/124\n")
	fake := ipvs.NewFake()
	d, _ := startDaemonWith(t, conf, fake)

	class, policy := "kubal.io/lvs", corev1.IPFamilyPolicyRequireDualStack
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "dual", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			IPFamilyPolicy: &policy, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyCluster,
			Ports:                 []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := c.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ranges := map[bool]netip.Prefix{false: netip.MustParsePrefix("192.0.2.0/28"), true: netip.MustParsePrefix("2001:db8:ed1a::/124")}
	vips := map[bool]netip.Addr{}
	testutil.Eventually(t, 20*time.Second, "both families' pools in /pools and IPVS", func() bool {
		if !slices.Contains(d.Pools(), "default.dual:80") || !slices.Contains(d.Pools(), "default.dual:80-v6") {
			return false
		}
		for k, p := range fake.Table() {
			v6 := k.Addr.Is6()
			if k.Port != 80 || !ranges[v6].Contains(k.Addr) || len(p.Destinations) != 2 {
				continue
			}
			for _, dst := range p.Destinations {
				if dst.Addr.Is6() != v6 {
					t.Fatalf("%s has destination %s of the other family", k, dst.Addr)
				}
			}
			vips[v6] = k.Addr
		}
		return vips[false].IsValid() && vips[true].IsValid()
	})
	testutil.Eventually(t, 10*time.Second, "both VIPs in status.loadBalancer.ingress", func() bool {
		s, err := c.CoreV1().Services("default").Get(ctx, "dual", metav1.GetOptions{})
		if err != nil || len(s.Status.LoadBalancer.Ingress) != 2 {
			return false
		}
		got := []string{s.Status.LoadBalancer.Ingress[0].IP, s.Status.LoadBalancer.Ingress[1].IP}
		return slices.Contains(got, vips[false].String()) && slices.Contains(got, vips[true].String())
	})
}

// An externalTrafficPolicy: Local Service (issue 14) through the daemon: its real
// servers are the nodes that run its pods. kube-proxy drops its traffic on every
// other node, so the depool threshold must not keep those pooled: here .9 of the two
// selected nodes, with the pod on node-a only, IPVS holds node-a alone. (Counted as
// down members, node-b was forced in.)
func TestKubernetesDeclaredLocalServicePoolsOnlyItsNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, conf := declaredRig(t, ctx, nil, func(i int) []string { return []string{fmt.Sprintf("10.7.0.%d", i+1)} },
		"vip-ranges = 192.0.2.0/28\ndepool-threshold = .9\n")
	fake := ipvs.NewFake()
	d, _ := startDaemonWith(t, conf, fake)
	createLB(t, ctx, c, "local", corev1.ServiceExternalTrafficPolicyLocal)
	createSlice(t, ctx, c, "local", "node-a")
	var dests []string
	testutil.Eventually(t, 20*time.Second, "default.local:80 in IPVS with node-a", func() bool {
		if !slices.Contains(d.Pools(), "default.local:80") {
			return false
		}
		for k, p := range fake.Table() {
			if k.Port == 80 && netip.MustParsePrefix("192.0.2.0/28").Contains(k.Addr) {
				dests = dests[:0]
				for _, dst := range p.Destinations {
					dests = append(dests, dst.Addr.String())
				}
				return slices.Contains(dests, "10.7.0.1")
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond) // a forced pooling would come with the same pass
	for k, p := range fake.Table() {
		if k.Port == 80 && netip.MustParsePrefix("192.0.2.0/28").Contains(k.Addr) && len(p.Destinations) != 1 {
			t.Errorf("IPVS %s: %+v; want node-a (10.7.0.1) alone: node-b runs no pod of the Local Service", k, p.Destinations)
		}
	}
}

// declaredRig starts a kube-apiserver with two Ready nodes (node-a, node-b: labels,
// InternalIPs from addrs) and writes a pybal.conf with only a [k8s-services] template
// (class kubal.io/lvs, wrr, no monitors unless extra sets them, plus extra lines) for a
// daemon to start on.
func declaredRig(t *testing.T, ctx context.Context, labels map[string]string, addrs func(i int) []string, extra string) (kubernetes.Interface, string) {
	t.Helper()
	apiserver, _, err := k8s.Binaries()
	if err != nil || apiserver == "" {
		k8s.SkipOrFail(t, err)
	}
	rig, err := k8s.Start(ctx)
	if err != nil {
		k8s.SkipOrFail(t, err)
	}
	t.Cleanup(func() { rig.Close() })
	c, err := rig.Client()
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"node-a", "node-b"} {
		created, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}},
		}
		for _, a := range addrs(i) {
			created.Status.Addresses = append(created.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
		if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := rig.WriteKubeconfig(kc, "admin", k8s.AdminToken); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "pybal.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "[global]\nbgp = no\nkubeconfig = %s\nstate-file = %s/state.json\n\n"+
		"[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\n%s%s", kc, dir, noMonitors(extra), extra), 0o644); err != nil {
		t.Fatal(err)
	}
	return c, conf
}

func noMonitors(extra string) string {
	if strings.Contains(extra, "monitors") { // set, or a comment that wants the defaults
		return ""
	}
	return "monitors = []\n"
}

// pool-unchecked (the [k8s-services] default is no): a new Local Service's node is
// not in IPVS before kube-proxy's health check on it (ProxyFetch on
// healthCheckNodePort) has answered, and a restart keeps the nodes' destinations while
// the new kubal waits for those checks. With pool-unchecked = yes (PyBal) the slow node
// is pooled before it ever answered: the same test sees it, so the check can fail.
func TestKubernetesDeclaredPoolsNodesAfterTheirFirstCheck(t *testing.T) {
	for _, tt := range []struct {
		unchecked      string
		wantEarly      bool // node-b in IPVS before its health check answered
		restartHitless bool
	}{
		{unchecked: "no", wantEarly: false, restartHitless: true},
		{unchecked: "yes", wantEarly: true},
	} {
		t.Run("pool-unchecked="+tt.unchecked, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// kube-proxy's health check server on each node: node-a (127.0.0.1) answers
			// at once, node-b (127.0.0.2) after slow.
			const slow = 2 * time.Second
			var hcPort int
			var answered atomic.Int64 // unix nanos of node-b's first answer since reset
			var servers []*http.Server
			for try := 0; ; try++ {
				hcPort = 30000 + rand.IntN(2700)
				var lns []net.Listener
				var err error
				for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
					var ln net.Listener
					if ln, err = net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(hcPort))); err != nil {
						break
					}
					lns = append(lns, ln)
				}
				if err != nil {
					for _, ln := range lns {
						ln.Close()
					}
					if try > 20 {
						t.Fatal(err)
					}
					continue
				}
				for i, ln := range lns {
					nodeB := i == 1
					srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						if nodeB {
							time.Sleep(slow)
							answered.CompareAndSwap(0, time.Now().UnixNano())
						}
						fmt.Fprintln(w, `{"localEndpoints": 1}`)
					})}
					servers = append(servers, srv)
					go srv.Serve(ln)
				}
				break
			}
			t.Cleanup(func() {
				for _, s := range servers {
					s.Close()
				}
			})
			c, conf := declaredRig(t, ctx, nil, func(i int) []string { return []string{fmt.Sprintf("127.0.0.%d", i+1)} },
				"vip-ranges = 192.0.2.0/28\npool-unchecked = "+tt.unchecked+"\n# monitors: each Service's defaults\n")
			fake := ipvs.NewFake()
			_, stop := startDaemonWith(t, conf, fake)
			// The node port too: one the API server picked itself was once hcPort
			// ("provided port is already allocated").
			createLB(t, ctx, c, "checked", corev1.ServiceExternalTrafficPolicyLocal, func(s *corev1.ServiceSpec) {
				s.HealthCheckNodePort, s.Ports[0].NodePort = int32(hcPort), int32(hcPort+1)
			})
			createSlice(t, ctx, c, "checked", "node-a", "node-b")
			dests := func() (map[string]bool, bool) {
				for k, p := range fake.Table() {
					if k.Port == 80 && netip.MustParsePrefix("192.0.2.0/28").Contains(k.Addr) {
						out := map[string]bool{}
						for _, d := range p.Destinations {
							out[d.Addr.String()] = true
						}
						return out, true
					}
				}
				return nil, false
			}
			// Watch IPVS until both nodes are in, noting node-b before its first answer.
			early := false
			deadline := time.Now().Add(30 * time.Second)
			for {
				ds, _ := dests()
				if ds["127.0.0.2"] && (answered.Load() == 0 || time.Now().UnixNano() < answered.Load()) {
					early = true
				}
				if ds["127.0.0.1"] && ds["127.0.0.2"] {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("IPVS holds %v 30 s after the Service; want both nodes", ds)
				}
				time.Sleep(2 * time.Millisecond)
			}
			if early != tt.wantEarly {
				t.Errorf("node-b in IPVS before its health check answered: %v, want %v", early, tt.wantEarly)
			}
			if !tt.restartHitless {
				return
			}
			// Restart on the same kernel: the new kubal waits slow for node-b's check,
			// and neither node leaves IPVS meanwhile.
			stop()
			answered.Store(0)
			startDaemonWith(t, conf, fake)
			deadline = time.Now().Add(slow + 10*time.Second)
			for answered.Load() == 0 || time.Since(time.Unix(0, answered.Load())) < time.Second {
				ds, ok := dests()
				if !ok || !ds["127.0.0.1"] || !ds["127.0.0.2"] {
					t.Fatalf("during the restart IPVS held %v (service present %v); want both nodes throughout", ds, ok)
				}
				if time.Now().After(deadline) {
					t.Fatal("node-b's health check was not asked for after the restart")
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
}

// createLB creates the LoadBalancer Service default/name of kubal's class with one
// TCP port 80 and the traffic policy, after mods.
func createLB(t *testing.T, ctx context.Context, c kubernetes.Interface, name string, policy corev1.ServiceExternalTrafficPolicy, mods ...func(*corev1.ServiceSpec)) *corev1.Service {
	t.Helper()
	class := "kubal.io/lvs"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			ExternalTrafficPolicy: policy, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	for _, m := range mods {
		m(&svc.Spec)
	}
	if _, err := c.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return svc
}

// createSlice writes the EndpointSlice of default/service with one ready endpoint on
// each node.
func createSlice(t *testing.T, ctx context.Context, c kubernetes.Interface, service string, nodes ...string) {
	t.Helper()
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: service + "-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for i, n := range nodes {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.244.%d.5", i)}, NodeName: &n, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	if _, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// A reload applies a changed [k8s-services] template without a restart: the declared
// service keeps its VIP and its destinations throughout and takes the new scheduler;
// a template the controller refuses fails the reload and changes nothing; removing
// the section removes the declared service, and adding it back restores it on the
// same VIP (from the Service's status).
func TestKubernetesDeclaredTemplateReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, conf := declaredRig(t, ctx, nil, func(i int) []string { return []string{fmt.Sprintf("10.7.0.%d", i+1)} },
		"vip-ranges = 192.0.2.0/28\n")
	fake := ipvs.NewFake()
	d, _ := startDaemonWith(t, conf, fake)
	createLB(t, ctx, c, "web", corev1.ServiceExternalTrafficPolicyCluster)
	const name = "default.web:80"
	var key ipvs.ServiceKey
	testutil.Eventually(t, 20*time.Second, "default.web:80 in IPVS with both nodes", func() bool {
		for k, p := range fake.Table() {
			if k.Port == 80 && netip.MustParsePrefix("192.0.2.0/28").Contains(k.Addr) && len(p.Destinations) == 2 {
				key = k
				return p.Service.Scheduler == "wrr"
			}
		}
		return false
	})
	orig, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	rewrite := func(f func(string) string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(f(string(orig))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// watch samples IPVS until cond, failing if the service ever lost a destination.
	watch := func(what string, cond func(ipvs.Pool, bool) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			p, ok := fake.Table()[key]
			if !ok || len(p.Destinations) != 2 {
				t.Fatalf("%s: IPVS %s present %v with %d destinations; want both nodes throughout", what, key, ok, len(p.Destinations))
			}
			if cond(p, ok) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20 s: %+v", what, p.Service)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}

	rewrite(func(s string) string { return strings.Replace(s, "scheduler = wrr", "scheduler = rr", 1) })
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("reload with a changed template: %v", err)
	}
	watch("scheduler wrr -> rr by a reload", func(p ipvs.Pool, _ bool) bool { return p.Service.Scheduler == "rr" })

	rewrite(func(s string) string {
		return strings.Replace(s, "scheduler = wrr", "scheduler = rr\nnodes = role in (lvs", 1)
	})
	if err := d.Reload(ctx); err == nil || !strings.Contains(err.Error(), "nodes") {
		t.Fatalf("reload with a bad node selector: %v, want an error naming nodes", err)
	}
	time.Sleep(500 * time.Millisecond)
	watch("after the refused reload", func(p ipvs.Pool, _ bool) bool { return p.Service.Scheduler == "rr" })

	rewrite(func(s string) string { s, _, _ = strings.Cut(s, "[k8s-services]"); return s })
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("reload without the template: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, "the declared service gone with the template", func() bool {
		_, inKernel := fake.Table()[key]
		return !inKernel && !slices.Contains(d.Pools(), name)
	})

	rewrite(func(s string) string { return s })
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("reload with the template back: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, "the declared service back on its VIP", func() bool {
		p, ok := fake.Table()[key]
		return ok && len(p.Destinations) == 2 && p.Service.Scheduler == "wrr" && slices.Contains(d.Pools(), name)
	})
}
