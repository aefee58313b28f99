package k8ssource

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/source"
)

// desiredRecorder keeps the Desired sets a controller delivers.
type desiredRecorder struct {
	ctrl *Services // the controller it records
	mu   sync.Mutex
	last *Desired
	n    int
	hist []Desired // every delivery, with its time
	at   []time.Time
	poke chan struct{}
}

func newDesiredRecorder() *desiredRecorder { return &desiredRecorder{poke: make(chan struct{}, 1)} }

func (r *desiredRecorder) out(d Desired) {
	r.mu.Lock()
	r.last = &d
	r.n++
	r.hist = append(r.hist, d)
	r.at = append(r.at, time.Now())
	r.mu.Unlock()
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

func (r *desiredRecorder) wait(t testing.TB, timeout time.Duration, what string, ok func(Desired) bool) Desired {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		last := r.last
		r.mu.Unlock()
		if last != nil && ok(*last) {
			return *last
		}
		select {
		case <-r.poke:
		case <-deadline:
			t.Fatalf("after %s: %s not reached; last Desired: %s", timeout, what, describe(last))
		}
	}
}

func describe(d *Desired) string {
	if d == nil {
		return "none"
	}
	var b strings.Builder
	for _, s := range d.Services {
		fmt.Fprintf(&b, "\n  %s %s owner %s", s.Config.Name, s.Config.Key(), s.Owner)
	}
	for k, p := range d.Problems {
		fmt.Fprintf(&b, "\n  problem %s: %s", k, p)
	}
	return b.String()
}

func find(d Desired, name string) (Declared, bool) {
	for _, s := range d.Services {
		if s.Config.Name == name {
			return s, true
		}
	}
	return Declared{}, false
}

// startServices runs a controller with the given kubeconfig (its token is who it acts as).
func (f *fixture) startServices(t *config.K8sServices, kubeconfig, identity string, static []*config.Service) *desiredRecorder {
	f.t.Helper()
	return f.startServicesOpts(t, kubeconfig, ServicesOptions{Identity: identity, Static: static})
}

// startServicesOpts is startServices with more options (Checks and Log are set here).
func (f *fixture) startServicesOpts(t *config.K8sServices, kubeconfig string, opts ServicesOptions) *desiredRecorder {
	f.t.Helper()
	opts.Log = slog.New(slog.NewTextHandler(testWriter{f.t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", opts.Identity)
	opts.Checks = []func(*config.Service) config.Diagnostics{monitor.Validate}
	c, err := NewServices(config.Global{Kubeconfig: kubeconfig}, t, opts)
	if err != nil {
		f.t.Fatal(err)
	}
	rec := newDesiredRecorder()
	rec.ctrl = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, rec.out) }()
	f.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				f.t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			f.t.Errorf("Run did not return 10s after cancel")
		}
	})
	return rec
}

// runSource runs a declared service's Source as the daemon's service actor would.
func runSource(t *testing.T, src source.Source) *recorder {
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx, rec) }()
	t.Cleanup(func() { cancel(); <-done })
	return rec
}

func (f *fixture) lbService(name string, etp corev1.ServiceExternalTrafficPolicy, class string, ann map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name, Annotations: ann},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			ExternalTrafficPolicy: etp, Ports: ports, Selector: map[string]string{"app": name}},
	}
}

// waitIngress polls the API until the Service's status.loadBalancer.ingress is want.
func (f *fixture) waitIngress(name string, want []string) *corev1.Service {
	f.t.Helper()
	deadline := time.Now().Add(settle)
	for {
		svc, err := f.c.CoreV1().Services(f.ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			f.t.Fatal(err)
		}
		var got []string
		for _, in := range svc.Status.LoadBalancer.Ingress {
			got = append(got, in.IP)
		}
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return svc
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("Service %s: status ingress %v, want %v", name, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitEvent waits for an Event on the Service with the reason and a message substring.
func (f *fixture) waitEvent(name, reason, msg string) corev1.Event {
	f.t.Helper()
	deadline := time.Now().Add(settle)
	sel := fields.Set{"involvedObject.name": name, "involvedObject.kind": "Service"}.String()
	for {
		evs, err := f.c.CoreV1().Events(f.ns).List(context.Background(), metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			f.t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Reason == reason && strings.Contains(e.Message, msg) {
				return e
			}
		}
		if time.Now().After(deadline) {
			var got []string
			for _, e := range evs.Items {
				got = append(got, e.Reason+": "+e.Message)
			}
			f.t.Fatalf("no Event %s %q on Service %s; events: %v", reason, msg, name, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestK8sServices drives Kubernetes-declared services through the real API server,
// as configs/k8s/rbac.yaml + rbac-services.yaml's ServiceAccount (so the real
// authorizer checks every call), with two controllers (the primary and the backup
// LVS host) at once: a LoadBalancer Service of the class becomes a kubal service
// with its VIP, nodes and monitors, and its status carries the VIP, written once; a
// bad annotation gives an Event and disturbs nothing else (a new Service is not
// created, a running one keeps its last good settings); a colliding VIP is refused
// with an Event; deleting the Service removes it.
func TestK8sServices(t *testing.T) {
	f := newFixture(t)
	applyServicesRBAC(t, f.c)
	ctx := f.ctx()
	f.namespace()
	a, b, c := f.threeNodes("10.7.0")
	class := f.class()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = "+class+"\nscheduler = wrr\n"+
		"nodes = kubal-test="+f.label+"\nvip-ranges = 192.0.2.0/28\n"))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := cfg.K8sServices
	static := []*config.Service{{Name: "static_80", IP: netip.MustParseAddr("192.0.2.1"), Port: 80, Protocol: "tcp"}}

	dir := t.TempDir()
	saKubeconfig := filepath.Join(dir, "sa.kubeconfig")
	if err := f.rig.WriteKubeconfig(saKubeconfig, "lvs", saToken.Token); err != nil {
		t.Fatal(err)
	}
	primary := f.startServices(tmpl, saKubeconfig, "lvs1001", static)
	backup := f.startServices(tmpl, saKubeconfig, "lvs2001", static)

	svcs := f.c.CoreV1().Services(f.ns)
	web := f.lbService("web", corev1.ServiceExternalTrafficPolicyLocal, class,
		map[string]string{AnnotationPrefix + "scheduler": "sh"},
		corev1.ServicePort{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP})
	created, err := svcs.Create(ctx, web, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hcnp := created.Spec.HealthCheckNodePort
	if hcnp == 0 {
		t.Fatalf("the API server allocated no healthCheckNodePort: %+v", created.Spec)
	}
	// The web pods run on a and b.
	if _, err := f.c.DiscoveryV1().EndpointSlices(f.ns).Create(ctx, epSlice("web-1", f.ns, "web",
		endpoint("10.244.0.1", a, epReady), endpoint("10.244.1.1", b, epReady)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	webName := f.ns + ".web:443"
	var vip string
	for i, rec := range []*desiredRecorder{primary, backup} {
		d := rec.wait(t, settle, "web declared", func(d Desired) bool { _, ok := find(d, webName); return ok })
		w, _ := find(d, webName)
		cfg := w.Config
		if i == 0 {
			vip = cfg.IP.String()
		}
		if cfg.IP.String() != vip || !netip.MustParsePrefix("192.0.2.0/28").Contains(cfg.IP) || cfg.IP.String() == "192.0.2.1" {
			t.Fatalf("host %d: VIP %s (primary %s): want one address of 192.0.2.0/28, not the static 192.0.2.1, the same on both hosts", i, cfg.IP, vip)
		}
		if cfg.Port != 443 || cfg.Protocol != "tcp" || cfg.Scheduler != "sh" || w.Owner != f.ns+"/web" ||
			len(cfg.Monitors) != 1 || cfg.Monitors[0] != "ProxyFetch" || cfg.Options["proxyfetch.port"].Raw != fmt.Sprint(hcnp) {
			t.Fatalf("web: %s sched %s monitors %v options:\n%s", cfg.Key(), cfg.Scheduler, cfg.Monitors, cfg.Options.Fingerprint())
		}
	}
	d := primary.wait(t, settle, "web", func(d Desired) bool { _, ok := find(d, webName); return ok })
	w, _ := find(d, webName)
	nodes := runSource(t, w.Source)
	nodes.waitSet(t, settle, "a and b, not c (no web endpoint: Local)", func(s source.Set) bool {
		_, hasC := s[c]
		return len(s) == 2 && hasServer(s, a, true, "") && hasServer(s, b, true, "") && !hasC && s[a].Addr.String() == "10.7.0.1"
	})

	// Status: the VIP, written once although two hosts run.
	st := f.waitIngress("web", []string{vip})
	rv := st.ResourceVersion
	time.Sleep(1500 * time.Millisecond)
	if again := f.waitIngress("web", []string{vip}); again.ResourceVersion != rv {
		t.Errorf("the two hosts keep rewriting the status: resourceVersion %s -> %s", rv, again.ResourceVersion)
	}

	// An endpoint moving from b to c moves the node set, through the shared informer.
	es, err := f.c.DiscoveryV1().EndpointSlices(f.ns).Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints[1].NodeName = ptr(c)
	if _, err := f.c.DiscoveryV1().EndpointSlices(f.ns).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes.waitSet(t, settle, "c in, b out", func(s source.Set) bool {
		_, hasB := s[b]
		return hasServer(s, c, true, "") && !hasB
	})

	// A new Service with a bad annotation: an Event naming it, not created.
	if _, err := svcs.Create(ctx, f.lbService("bad", corev1.ServiceExternalTrafficPolicyCluster, class,
		map[string]string{AnnotationPrefix + "scheduler": "fastest"}, corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d = primary.wait(t, settle, "bad refused", func(d Desired) bool { return d.Problems[f.ns+"/bad"] != "" })
	if _, ok := find(d, f.ns+".bad:80"); ok {
		t.Errorf("a Service with a bad annotation was created: %s", describe(&d))
	}
	if !strings.Contains(d.Problems[f.ns+"/bad"], "annotation lvs.kubal.io/scheduler") {
		t.Errorf("problem %q does not name the annotation", d.Problems[f.ns+"/bad"])
	}
	f.waitEvent("bad", ReasonInvalid, `annotation lvs.kubal.io/scheduler: scheduler: "fastest" is not one of`)
	if w2, ok := find(d, webName); !ok || w2.Config != w.Config || w2.Source != w.Source {
		t.Errorf("web disturbed by another Service's bad annotation")
	}

	// The running web gets a bad annotation: it keeps its last good settings.
	patch := []byte(`{"metadata":{"annotations":{"lvs.kubal.io/depool-threshold":"2"}}}`)
	if _, err := svcs.Patch(ctx, "web", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	d = primary.wait(t, settle, "web keeps its last good settings", func(d Desired) bool {
		return strings.Contains(d.Problems[f.ns+"/web"], "keeping the last good settings")
	})
	if w2, ok := find(d, webName); !ok || w2.Config.Scheduler != "sh" || w2.Config.DepoolThreshold != 0.5 {
		t.Errorf("web after a bad annotation: %s", describe(&d))
	}
	f.waitEvent("web", ReasonInvalid, "annotation lvs.kubal.io/depool-threshold: depool-threshold: 2 is outside [0, 1]")
	patch = []byte(`{"metadata":{"annotations":{"lvs.kubal.io/depool-threshold":"0.3"}}}`)
	if _, err := svcs.Patch(ctx, "web", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	primary.wait(t, settle, "web fixed", func(d Desired) bool {
		w2, ok := find(d, webName)
		return ok && d.Problems[f.ns+"/web"] == "" && w2.Config.DepoolThreshold == 0.3
	})
	f.waitEvent("web", ReasonAccepted, "problems fixed")

	// VIP collisions: with web's VIP (older wins) and with the static service's.
	for name, ip := range map[string]string{"thief": vip, "static-thief": "192.0.2.1", "outsider": "198.51.100.7"} {
		if _, err := svcs.Create(ctx, f.lbService(name, corev1.ServiceExternalTrafficPolicyCluster, class,
			map[string]string{AnnotationVIP: ip}, corev1.ServicePort{Port: 8080, Protocol: corev1.ProtocolTCP}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d = primary.wait(t, settle, "collisions refused", func(d Desired) bool {
		return d.Problems[f.ns+"/thief"] != "" && d.Problems[f.ns+"/static-thief"] != "" && d.Problems[f.ns+"/outsider"] != ""
	})
	for _, n := range []string{"thief", "static-thief", "outsider"} {
		if _, ok := find(d, f.ns+"."+n+":8080"); ok {
			t.Errorf("%s declared despite its VIP being refused", n)
		}
	}
	f.waitEvent("thief", ReasonVIPRefused, "VIP "+vip+" is already used by Service "+f.ns+"/web")
	f.waitEvent("static-thief", ReasonVIPRefused, "VIP 192.0.2.1 is already used by static service [static_80]")
	f.waitEvent("outsider", ReasonVIPRefused, "VIP 198.51.100.7 is outside the vip-ranges 192.0.2.0/28")
	if w2, _ := find(d, webName); w2.Config.IP.String() != vip {
		t.Errorf("web's VIP moved to %s", w2.Config.IP)
	}

	// Delete: gone from the desired set on both hosts.
	if err := svcs.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, rec := range []*desiredRecorder{primary, backup} {
		rec.wait(t, settle, "web gone", func(d Desired) bool { _, ok := find(d, webName); return !ok })
	}
	// The thief may now have the VIP (the older owner is gone).
	primary.wait(t, settle, "thief gets the freed VIP", func(d Desired) bool {
		th, ok := find(d, f.ns+".thief:8080")
		return ok && th.Config.IP.String() == vip
	})
	f.waitIngress("thief", []string{vip})
	f.waitEvent("thief", ReasonAccepted, "problems fixed")

	// A reload of pybal.conf adds a static service on the thief's VIP: the static
	// one wins, the Service is refused; the reload undone, it is back.
	reloaded := append(slices.Clone(static), &config.Service{Name: "new_443", IP: netip.MustParseAddr(vip), Port: 443, Protocol: "tcp"})
	primary.ctrl.SetStatic(reloaded)
	primary.wait(t, settle, "thief refused after the reload", func(d Desired) bool {
		_, ok := find(d, f.ns+".thief:8080")
		return !ok && strings.Contains(d.Problems[f.ns+"/thief"], "VIP "+vip+" is already used by static service [new_443]")
	})
	primary.ctrl.SetStatic(static)
	primary.wait(t, settle, "thief back", func(d Desired) bool { _, ok := find(d, f.ns+".thief:8080"); return ok })

	// Leaving kubal's ownership (type LoadBalancer -> ClusterIP): status cleared.
	patch = []byte(`{"spec":{"type":"ClusterIP","loadBalancerClass":null,"externalTrafficPolicy":null}}`)
	if _, err := svcs.Patch(ctx, "thief", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	primary.wait(t, settle, "thief gone", func(d Desired) bool { _, ok := find(d, f.ns+".thief:8080"); return !ok })
	f.waitIngress("thief", nil)
}

// applyServicesRBAC applies both RBAC manifests and removes rbac-services.yaml's
// binding at the end, so that tests of rbac.yaml alone still see least privilege.
func applyServicesRBAC(t *testing.T, c kubernetes.Interface) {
	applyManifest(t, c, filepath.Join("..", "configs", "k8s", "rbac.yaml"))
	applyManifest(t, c, filepath.Join("..", "configs", "k8s", "rbac-services.yaml"))
	t.Cleanup(func() {
		_ = c.RbacV1().ClusterRoleBindings().Delete(context.Background(), "kubal-services", metav1.DeleteOptions{})
	})
}

// TestK8sServicesRBAC checks rbac-services.yaml against the real authorizer: every
// call the controller makes is allowed, and nothing else.
func TestK8sServicesRBAC(t *testing.T) {
	f := newFixture(t)
	applyServicesRBAC(t, f.c)
	sa, err := kubernetes.NewForConfig(f.rig.RESTConfig(saToken.Token))
	if err != nil {
		t.Fatal(err)
	}
	ctx := f.ctx()
	f.namespace()
	if _, err := f.c.CoreV1().Services(f.ns).Create(ctx, f.lbService("x", corev1.ServiceExternalTrafficPolicyCluster, "kubal.io/x", nil,
		corev1.ServicePort{Port: 80}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Everything rbac-services.yaml grants is needed; nothing else is granted.
	forbidden := map[string]func() error{
		"update services": func() error {
			s, err := f.c.CoreV1().Services(f.ns).Get(ctx, "x", metav1.GetOptions{})
			if err != nil {
				return nil
			}
			_, err = sa.CoreV1().Services(f.ns).Update(ctx, s, metav1.UpdateOptions{})
			return err
		},
		"patch services (spec)": func() error {
			_, err := sa.CoreV1().Services(f.ns).Patch(ctx, "x", "application/merge-patch+json", []byte(`{"metadata":{"labels":{"a":"b"}}}`), metav1.PatchOptions{})
			return err
		},
		"delete services": func() error { return sa.CoreV1().Services(f.ns).Delete(ctx, "x", metav1.DeleteOptions{}) },
		"list pods":       func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"list secrets":    func() error { _, err := sa.CoreV1().Secrets(f.ns).List(ctx, metav1.ListOptions{}); return err },
		"delete events": func() error {
			return sa.CoreV1().Events(f.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		},
		"list events": func() error { _, err := sa.CoreV1().Events(f.ns).List(ctx, metav1.ListOptions{}); return err },
	}
	for what, call := range forbidden {
		if err := call(); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("the ServiceAccount can %s (err %v): rbac-services.yaml is not least privilege", what, err)
		}
	}
	allowed := map[string]func() error{
		"list services": func() error { _, err := sa.CoreV1().Services("").List(ctx, metav1.ListOptions{}); return err },
		"patch services/status": func() error {
			_, err := sa.CoreV1().Services(f.ns).Patch(ctx, "x", "application/merge-patch+json",
				[]byte(`{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.99"}]}}}`), metav1.PatchOptions{}, "status")
			return err
		},
		"create events": func() error {
			_, err := sa.CoreV1().Events(f.ns).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{GenerateName: "x-"},
				InvolvedObject: corev1.ObjectReference{Kind: "Service", Namespace: f.ns, Name: "x"}, Reason: "Test", Message: "m", Type: "Normal"},
				metav1.CreateOptions{})
			return err
		},
		"list endpointslices": func() error {
			_, err := sa.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
			return err
		},
	}
	for what, call := range allowed {
		if err := call(); err != nil {
			t.Errorf("the ServiceAccount cannot %s: %v", what, err)
		}
	}
}

// TestK8sServicesAPIServerDown: the API server dies; the declared services and their
// node sets stay as they were (each Source reports Failed), and after a restart a
// change made through the new API server arrives.
func TestK8sServicesAPIServerDown(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx()
	f.namespace()
	a := f.prefix + "a"
	f.createNode(f.readyNode("a", "10.8.0.1"))
	f.createNode(f.readyNode("b", "10.8.0.2"))
	class := f.class()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = "+class+"\nscheduler = wrr\n"+
		"nodes = kubal-test="+f.label+"\nvip-ranges = 192.0.2.0/28\n"))
	if err != nil {
		t.Fatal(err)
	}
	rec := f.startServices(cfg.K8sServices, f.rig.Kubeconfig, "lvs1001", nil)
	if _, err := f.c.CoreV1().Services(f.ns).Create(ctx, f.lbService("web", corev1.ServiceExternalTrafficPolicyCluster, class, nil,
		corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name := f.ns + ".web:80"
	d := rec.wait(t, settle, "web declared", func(d Desired) bool { _, ok := find(d, name); return ok })
	w, _ := find(d, name)
	nodes := runSource(t, w.Source)
	nodes.waitSet(t, settle, "both nodes", func(s source.Set) bool { return len(s) == 2 && hasServer(s, a, true, "") })
	f.waitIngress("web", []string{w.Config.IP.String()})
	rec.mu.Lock()
	deliveries := rec.n
	rec.mu.Unlock()
	_, updates, _ := nodes.snapshot()

	if err := f.rig.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	err = nodes.waitFailed(t, 20*time.Second, true)
	t.Logf("the Source reported the outage: %v", err)
	rec.mu.Lock()
	after := rec.n
	rec.mu.Unlock()
	if _, u, _ := nodes.snapshot(); after != deliveries || u != updates {
		t.Fatalf("the outage changed the declared services (%d -> %d deliveries) or the node set (%d -> %d updates)", deliveries, after, updates, u)
	}

	if err := f.rig.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.node("a", setReady(corev1.ConditionFalse))
	nodes.waitSet(t, 40*time.Second, "a NotReady after the restart", func(s source.Set) bool { return hasServer(s, a, false, "not Ready") })
	nodes.waitFailed(t, 10*time.Second, false)
	rec.wait(t, settle, "web still declared", func(d Desired) bool { _, ok := find(d, name); return ok })
}

// TestK8sServicesCriticalPods: with critical-pods, a node is healthy only with a
// ready Pod of the selector on it, and the reason names it; run as the ServiceAccount
// with rbac-critical-pods.yaml.
func TestK8sServicesCriticalPods(t *testing.T) {
	f := newFixture(t)
	applyServicesRBAC(t, f.c)
	applyManifest(t, f.c, filepath.Join("..", "configs", "k8s", "rbac-critical-pods.yaml"))
	t.Cleanup(func() {
		_ = f.c.RbacV1().ClusterRoleBindings().Delete(context.Background(), "kubal-critical-pods", metav1.DeleteOptions{})
	})
	ctx := f.ctx()
	f.namespace()
	a, b := f.prefix+"a", f.prefix+"b"
	f.createNode(f.readyNode("a", "10.9.0.1"))
	f.createNode(f.readyNode("b", "10.9.0.2"))
	// calico-node "DaemonSet" Pods (no scheduler or kubelet here: bound and given a
	// status through the API; no controller-manager: the default ServiceAccount
	// admission needs is made by hand).
	if _, err := f.c.CoreV1().ServiceAccounts(f.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := f.c.CoreV1().Pods(f.ns)
	mkPod := func(name, node string, ready corev1.ConditionStatus) {
		t.Helper()
		p, err := pods.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"k8s-app": "calico-node"}},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "calico/node"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}}
		if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mkPod("calico-a", a, corev1.ConditionTrue)
	mkPod("calico-b", b, corev1.ConditionFalse)

	class := f.class()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = "+class+"\nscheduler = wrr\n"+
		"nodes = kubal-test="+f.label+"\nvip-ranges = 192.0.2.0/28\ncritical-pods = "+f.ns+"/k8s-app=calico-node\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	saKubeconfig := filepath.Join(dir, "sa.kubeconfig")
	if err := f.rig.WriteKubeconfig(saKubeconfig, "lvs", saToken.Token); err != nil {
		t.Fatal(err)
	}
	rec := f.startServices(cfg.K8sServices, saKubeconfig, "lvs1001", nil)
	if _, err := f.c.CoreV1().Services(f.ns).Create(ctx, f.lbService("web", corev1.ServiceExternalTrafficPolicyCluster, class, nil,
		corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name := f.ns + ".web:80"
	d := rec.wait(t, settle, "web declared", func(d Desired) bool { _, ok := find(d, name); return ok })
	w, _ := find(d, name)
	nodes := runSource(t, w.Source)
	reason := f.ns + "/calico-node not ready on " + b
	nodes.waitSet(t, settle, "a eligible, b without a ready calico-node", func(s source.Set) bool {
		return hasServer(s, a, true, "") && hasServer(s, b, false, reason) && why(s[b]) == reason
	})

	p, err := pods.Get(ctx, "calico-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Conditions[0].Status = corev1.ConditionTrue
	if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes.waitSet(t, settle, "b eligible once calico-node is ready", func(s source.Set) bool { return hasServer(s, b, true, "") })
	if err := pods.Delete(ctx, "calico-a", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	nodes.waitSet(t, settle, "a without calico-node", func(s source.Set) bool {
		return hasServer(s, a, false, f.ns+"/calico-node not ready on "+a) && hasServer(s, b, true, "")
	})
}

// TestK8sServicesRecreatedGetsStatus: a Service deleted and created again under the
// same name with the same VIP (`kubectl delete -f web.yaml; kubectl apply -f
// web.yaml` with lvs.kubal.io/vip) gets its status written again, and so does one
// whose status someone else cleared: without status.loadBalancer.ingress kube-proxy
// drops the VIP's traffic that IPVS sends to the nodes. (Found by
// integration/k8sservices: the controller remembered the deleted Service's status
// and skipped the write for the new one.)
func TestK8sServicesRecreatedGetsStatus(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx()
	f.namespace()
	f.createNode(f.readyNode("a", "10.8.0.1"))
	class := f.class()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = "+class+"\nscheduler = wrr\n"+
		"nodes = kubal-test="+f.label+"\nvip-ranges = 192.0.2.0/28\n"))
	if err != nil {
		t.Fatal(err)
	}
	rec := f.startServices(cfg.K8sServices, f.rig.Kubeconfig, "lvs1001", nil)
	name := f.ns + ".web:80"
	web := func() *corev1.Service {
		return f.lbService("web", corev1.ServiceExternalTrafficPolicyCluster, class, map[string]string{AnnotationVIP: "192.0.2.5"},
			corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP})
	}
	if _, err := f.c.CoreV1().Services(f.ns).Create(ctx, web(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, settle, "web declared", func(d Desired) bool { _, ok := find(d, name); return ok })
	f.waitIngress("web", []string{"192.0.2.5"})

	if err := f.c.CoreV1().Services(f.ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, settle, "web gone", func(d Desired) bool { _, ok := find(d, name); return !ok })
	if _, err := f.c.CoreV1().Services(f.ns).Create(ctx, web(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, settle, "web declared again", func(d Desired) bool { _, ok := find(d, name); return ok })
	f.waitIngress("web", []string{"192.0.2.5"})

	// Someone else clears the status: kubal writes it back.
	if _, err := f.c.CoreV1().Services(f.ns).Patch(ctx, "web", types.MergePatchType,
		[]byte(`{"status":{"loadBalancer":{"ingress":null}}}`), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	f.waitIngress("web", []string{"192.0.2.5"})
}

// TestK8sServicesLocalMembers: the real servers of an externalTrafficPolicy: Local
// Service are the nodes that run one of its endpoints. A node with none is not in the
// set at all: kube-proxy drops the Service's traffic there, and as a down member the
// depool threshold (counted over every selected node) would keep half the nodes
// pooled however few run a pod. A node whose endpoint is not ready is a member that
// is down. A Local Service created while kubal runs reaches kubal before the
// EndpointSlice controller has written its slice: its set is held until the slice is
// seen (so the service does not first sync empty), at most FirstSliceWait; one
// already there at start is not held.
func TestK8sServicesLocalMembers(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx()
	f.namespace()
	a, b, c := f.threeNodes("10.9.0")
	class := f.class()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = "+class+"\nscheduler = wrr\n"+
		"nodes = kubal-test="+f.label+"\nvip-ranges = 192.0.2.0/28\n"))
	if err != nil {
		t.Fatal(err)
	}
	svcs := f.c.CoreV1().Services(f.ns)
	local := func(name string) *corev1.Service {
		return f.lbService(name, corev1.ServiceExternalTrafficPolicyLocal, class, nil, corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP})
	}
	// Already there at start, without a slice: handed on at once, empty.
	if _, err := svcs.Create(ctx, local("old"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const wait = 3 * time.Second
	rec := f.startServicesOpts(cfg.K8sServices, f.rig.Kubeconfig, ServicesOptions{Identity: "lvs1001", FirstSliceWait: wait})
	declared := func(name string) Declared {
		d := rec.wait(t, settle, name+" declared", func(d Desired) bool { _, ok := find(d, f.ns+"."+name+":80"); return ok })
		w, _ := find(d, f.ns+"."+name+":80")
		return w
	}
	t0 := time.Now()
	old := runSource(t, declared("old").Source)
	old.waitSet(t, wait/2, "old's node set (no slice, there at start)", func(s source.Set) bool { return len(s) == 0 })
	if d := time.Since(t0); d >= wait {
		t.Errorf("a Service already there at start was held %s", d)
	}

	// Created while running: held until its slice is seen; then only the nodes with
	// an endpoint, the not ready one down.
	if _, err := svcs.Create(ctx, local("web"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := runSource(t, declared("web").Source)
	time.Sleep(wait / 3)
	if last, n, _ := web.snapshot(); n != 0 {
		t.Fatalf("web's nodes handed on before its EndpointSlice:\n%s", dump(last))
	}
	slices := f.c.DiscoveryV1().EndpointSlices(f.ns)
	if _, err := slices.Create(ctx, epSlice("web-1", f.ns, "web",
		endpoint("10.244.0.1", a, epReady), endpoint("10.244.1.1", b, epNotReady)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web.waitSet(t, settle, "web's nodes", func(s source.Set) bool { return len(s) > 0 })
	web.mu.Lock()
	first := web.updates[0]
	web.mu.Unlock()
	if _, hasC := first[c]; len(first) != 2 || hasC || !hasServer(first, a, true, "") || !hasServer(first, b, false, "endpoint not ready") {
		t.Errorf("web's first node set: want a, and b down (endpoint not ready), not c (no endpoint):\n%s", dump(first))
	}
	// The pod on a goes: a is no real server of web any more.
	es, err := slices.Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Endpoints = es.Endpoints[1:]
	if _, err := slices.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	web.waitSet(t, settle, "only b", func(s source.Set) bool { _, hasA := s[a]; return len(s) == 1 && !hasA })

	// Created while running and never given a slice: handed on (empty) after the wait.
	if _, err := svcs.Create(ctx, local("lonely"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	lonelyDecl := declared("lonely")
	t1 := time.Now()
	lonely := runSource(t, lonelyDecl.Source)
	lonely.waitSet(t, wait+settle, "lonely's node set after the wait", func(s source.Set) bool { return len(s) == 0 })
	if d := time.Since(t1); d < wait/2 {
		t.Errorf("lonely (no slice) handed on after %s, before the wait (%s)", d, wait)
	}
}
