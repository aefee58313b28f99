package k8ssource

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubal/kubal/config"
	k8srig "github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/source"
)

// One real etcd + kube-apiserver for the whole package, started by the first test
// that needs it and stopped by TestMain.
var shared struct {
	once    sync.Once
	rig     *k8srig.Rig
	missing error // binaries not built: skip (or fail under KUBAL_REQUIRE_RIGS=1)
	err     error // built but failed to start: always a failure
}

// Static tokens known to the rig: the least-privilege ServiceAccount of
// configs/k8s/rbac.yaml, and a user with no RBAC at all.
var (
	saToken     = k8srig.Token{Token: "kubal-sa-token", User: "system:serviceaccount:kubal-system:kubal", Groups: []string{"system:serviceaccounts"}}
	nobodyToken = k8srig.Token{Token: "kubal-nobody-token", User: "kubal-nobody", Groups: []string{"system:authenticated"}}
)

func TestMain(m *testing.M) {
	if os.Getenv(perfChildEnv) != "" {
		os.Exit(perfChild())
	}
	code := m.Run()
	if shared.rig != nil {
		if err := shared.rig.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "k8s rig close:", err)
		}
	}
	os.Exit(code)
}

func rig(t testing.TB) *k8srig.Rig {
	t.Helper()
	shared.once.Do(func() {
		if _, _, err := k8srig.Binaries(); err != nil {
			shared.missing = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		shared.rig, shared.err = k8srig.Start(ctx, saToken, nobodyToken)
		if shared.err == nil {
			fmt.Fprintf(os.Stderr, "k8s rig (etcd + kube-apiserver %s) ready in %s\n", k8srig.KubeVersion, time.Since(start).Round(time.Millisecond))
		}
	})
	switch {
	case shared.missing != nil:
		k8srig.SkipOrFail(t, shared.missing)
	case shared.err != nil:
		t.Fatalf("k8s rig: %v", shared.err)
	}
	return shared.rig
}

func adminClient(t testing.TB, r *k8srig.Rig) kubernetes.Interface {
	t.Helper()
	c, err := r.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// recorder is a source.Events that keeps what it is told.
type recorder struct {
	mu      sync.Mutex
	last    source.Set
	updates []source.Set
	times   []time.Time // of each Update
	failed  []error     // every Failed call in order (nil = recovered)
	// setAtFailed is the latest set when each Failed call came: a recovery must not
	// be reported before the resynced set.
	setAtFailed []source.Set
	failedAt    []time.Time
	poke        chan struct{}
}

func newRecorder() *recorder { return &recorder{poke: make(chan struct{}, 1)} }

func (r *recorder) Update(s source.Set) {
	r.mu.Lock()
	r.last = s
	r.updates = append(r.updates, s)
	r.times = append(r.times, time.Now())
	r.mu.Unlock()
	r.signal()
}

func (r *recorder) Failed(err error) {
	r.mu.Lock()
	r.failed = append(r.failed, err)
	r.setAtFailed = append(r.setAtFailed, r.last)
	r.failedAt = append(r.failedAt, time.Now())
	r.mu.Unlock()
	r.signal()
}

func (r *recorder) signal() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

func (r *recorder) snapshot() (last source.Set, updates int, failed []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last, len(r.updates), slices.Clone(r.failed)
}

// waitSet waits until the latest Update satisfies ok.
func (r *recorder) waitSet(t testing.TB, timeout time.Duration, what string, ok func(source.Set) bool) source.Set {
	t.Helper()
	deadline := time.After(timeout)
	for {
		last, _, _ := r.snapshot()
		if last != nil && ok(last) {
			return last
		}
		select {
		case <-r.poke:
		case <-deadline:
			t.Fatalf("after %s: %s not reached; last set:\n%s", timeout, what, dump(last))
		}
	}
}

// waitFailed waits for the latest Failed call to be a failure (want true) or a recovery.
func (r *recorder) waitFailed(t testing.TB, timeout time.Duration, want bool) error {
	t.Helper()
	deadline := time.After(timeout)
	for {
		_, _, failed := r.snapshot()
		if n := len(failed); n > 0 && (failed[n-1] != nil) == want {
			return failed[n-1]
		}
		select {
		case <-r.poke:
		case <-deadline:
			t.Fatalf("after %s: no Failed(%s); calls so far: %v", timeout, map[bool]string{true: "err", false: "nil"}[want], failed)
		}
	}
}

func dump(s source.Set) string {
	var b strings.Builder
	for _, h := range slices.Sorted(maps.Keys(s)) {
		fmt.Fprintf(&b, "  %+v\n", s[h])
	}
	return b.String()
}

// server asserts one server's state; reason is a substring ("" = must be empty).
func hasServer(s source.Set, host string, enabled bool, reason string) bool {
	srv, ok := s[host]
	// "enabled" here means eligible: not disabled and not down.
	if !ok || (srv.Enabled && srv.Down == "") != enabled {
		return false
	}
	why := why(srv)
	if reason == "" {
		return why == ""
	}
	return strings.Contains(why, reason)
}

// why is everything that keeps a server out: its health, then its disable reasons.
func why(s source.Server) string { return strings.Trim(s.Down+"; "+s.Reason, "; ") }

type fixture struct {
	t      *testing.T
	rig    *k8srig.Rig
	c      kubernetes.Interface
	label  string // kubal-test=<label> selects this test's nodes
	ns     string
	prefix string
}

func newFixture(t *testing.T) *fixture {
	r := rig(t)
	label := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(label) > 50 {
		label = label[:50]
	}
	// Namespaces are never finalized without a controller-manager: a fresh name per
	// run lets -count=N reuse the rig.
	ns := label + "-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
	f := &fixture{t: t, rig: r, c: adminClient(t, r), label: label, ns: ns, prefix: label + "-"}
	t.Cleanup(func() {
		ctx := context.Background()
		_ = f.c.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "kubal-test=" + label})
	})
	return f
}

func (f *fixture) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	f.t.Cleanup(cancel)
	return ctx
}

// start runs a source for this fixture's nodes and returns its events recorder.
func (f *fixture) start(query string, svc *config.Service, kubeconfig string, reg prometheus.Registerer) *recorder {
	f.t.Helper()
	if svc == nil {
		svc = &config.Service{Name: f.label}
	}
	if kubeconfig == "" {
		kubeconfig = f.rig.Kubeconfig
	}
	raw := "k8s://?nodes=kubal-test%3D" + f.label
	if query != "" {
		raw += "&" + query
	}
	log := slog.New(slog.NewTextHandler(testWriter{f.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src, err := New(raw, config.Global{Kubeconfig: kubeconfig}, svc, log, reg)
	if err != nil {
		f.t.Fatal(err)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, rec) }()
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

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// readyNode is a Node as a kubelet would register it.
// namespace creates the test's namespace, deleted at the end.
func (f *fixture) namespace() {
	f.t.Helper()
	if _, err := f.c.CoreV1().Namespaces().Create(f.ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns}}, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = f.c.CoreV1().Namespaces().Delete(context.Background(), f.ns, metav1.DeleteOptions{}) })
}

// class is a loadBalancerClass of this test's own, so that controllers of tests that
// share the API server own none of its Services.
func (f *fixture) class() string { return "kubal.io/" + f.ns[max(0, len(f.ns)-40):] }

// threeNodes creates the ready nodes a, b and c at <net>.1-3 and returns their names.
func (f *fixture) threeNodes(net string) (a, b, c string) {
	f.t.Helper()
	for i, n := range []string{"a", "b", "c"} {
		f.createNode(f.readyNode(n, fmt.Sprintf("%s.%d", net, i+1)))
	}
	return f.prefix + "a", f.prefix + "b", f.prefix + "c"
}

func (f *fixture) readyNode(name, ipv4 string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: f.prefix + name, Labels: map[string]string{"kubal-test": f.label}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()},
				{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "RouteCreated"},
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: ipv4},
				{Type: corev1.NodeInternalIP, Address: "fd00::" + strings.ReplaceAll(ipv4, ".", ":")},
				{Type: corev1.NodeHostName, Address: f.prefix + name},
			},
		},
	}
}

// createNode creates a node with its status (status is a subresource: written
// separately if the create dropped it).
func (f *fixture) createNode(n *corev1.Node) {
	f.t.Helper()
	ctx := f.ctx()
	created, err := f.c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("create node %s: %v", n.Name, err)
	}
	if len(created.Status.Conditions) == 0 && len(n.Status.Conditions) > 0 {
		created.Status = n.Status
		if _, err := f.c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			f.t.Fatalf("node %s status: %v", n.Name, err)
		}
	}
}

// node applies change to a node (spec/metadata and status), retrying conflicts.
func (f *fixture) node(name string, change func(*corev1.Node)) {
	f.t.Helper()
	ctx := f.ctx()
	for {
		n, err := f.c.CoreV1().Nodes().Get(ctx, f.prefix+name, metav1.GetOptions{})
		if err != nil {
			f.t.Fatalf("get node %s: %v", name, err)
		}
		before := n.DeepCopy()
		change(n)
		if !equalStatus(before.Status, n.Status) {
			n, err = f.c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
			if err == nil {
				// UpdateStatus ignores spec/metadata: apply those on the result.
				change(n)
				_, err = f.c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			}
		} else {
			_, err = f.c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		}
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "the object has been modified") {
			f.t.Fatalf("update node %s: %v", name, err)
		}
	}
}

func equalStatus(a, b corev1.NodeStatus) bool {
	return fmt.Sprint(a.Conditions) == fmt.Sprint(b.Conditions) && fmt.Sprint(a.Addresses) == fmt.Sprint(b.Addresses)
}

func setReady(s corev1.ConditionStatus) func(*corev1.Node) {
	return func(n *corev1.Node) {
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == corev1.NodeReady {
				n.Status.Conditions[i].Status = s
				n.Status.Conditions[i].Reason = map[corev1.ConditionStatus]string{corev1.ConditionTrue: "KubeletReady"}[s]
				if s == corev1.ConditionFalse {
					n.Status.Conditions[i].Reason = "KubeletNotReady"
				}
			}
		}
	}
}

const settle = 10 * time.Second // bound for one change to reach the source

// TestNodes drives Node changes through the API: NotReady, excluded, tainted,
// NetworkUnavailable, weight, deleted, added, unselected.
func TestNodes(t *testing.T) {
	f := newFixture(t)
	for i, n := range []string{"a", "b", "c"} {
		f.createNode(f.readyNode(n, fmt.Sprintf("10.1.0.%d", i+1)))
	}
	// A node of another test (not selected) must never appear.
	other := f.readyNode("stranger", "10.1.9.9")
	other.Labels["kubal-test"] = f.label + "-other"
	f.createNode(other)
	t.Cleanup(func() { _ = f.c.CoreV1().Nodes().Delete(context.Background(), other.Name, metav1.DeleteOptions{}) })

	svc := &config.Service{Name: "ingress", K8sTaints: []string{"lb.kubal.io/drain"}}
	rec := f.start("", svc, "", nil)
	a, b, c, d := f.prefix+"a", f.prefix+"b", f.prefix+"c", f.prefix+"d"
	set := rec.waitSet(t, settle, "three enabled nodes", func(s source.Set) bool {
		return len(s) == 3 && hasServer(s, a, true, "") && hasServer(s, b, true, "") && hasServer(s, c, true, "")
	})
	if got := set[b].Addr.String(); got != "10.1.0.2" || set[b].Weight != 1 {
		t.Fatalf("node b: addr %s weight %d, want 10.1.0.2 weight 1", got, set[b].Weight)
	}

	f.node("a", setReady(corev1.ConditionFalse))
	rec.waitSet(t, settle, "a NotReady", func(s source.Set) bool {
		return hasServer(s, a, false, "not Ready (Ready=False: KubeletNotReady)") && len(s) == 3
	})
	f.node("a", setReady(corev1.ConditionTrue))
	rec.waitSet(t, settle, "a Ready again", func(s source.Set) bool { return hasServer(s, a, true, "") })

	f.node("b", func(n *corev1.Node) { n.Labels[ExcludeLabel] = "true" })
	rec.waitSet(t, settle, "b excluded", func(s source.Set) bool { return hasServer(s, b, false, "labelled "+ExcludeLabel) })

	f.node("c", func(n *corev1.Node) {
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "lb.kubal.io/drain", Effect: corev1.TaintEffectNoSchedule})
	})
	rec.waitSet(t, settle, "c tainted", func(s source.Set) bool {
		return hasServer(s, c, false, "tainted lb.kubal.io/drain:NoSchedule")
	})
	f.node("c", func(n *corev1.Node) {
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == "lb.kubal.io/drain" })
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
				n.Status.Conditions[i].Status, n.Status.Conditions[i].Reason = corev1.ConditionTrue, "NoRouteCreated"
			}
		}
	})
	rec.waitSet(t, settle, "c untainted, network unavailable", func(s source.Set) bool {
		return hasServer(s, c, false, "NetworkUnavailable (NoRouteCreated)") && !strings.Contains(s[c].Reason, "tainted")
	})

	f.node("a", func(n *corev1.Node) { n.Annotations = map[string]string{WeightAnnotation: "5"} })
	rec.waitSet(t, settle, "a weight 5", func(s source.Set) bool { return s[a].Weight == 5 && s[a].Enabled })

	if err := f.c.CoreV1().Nodes().Delete(f.ctx(), b, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, settle, "b deleted", func(s source.Set) bool { _, ok := s[b]; return !ok && len(s) == 2 })

	f.createNode(f.readyNode("d", "10.1.0.4"))
	set = rec.waitSet(t, settle, "d added", func(s source.Set) bool { return hasServer(s, d, true, "") && len(s) == 3 })
	if set[d].Addr.String() != "10.1.0.4" {
		t.Fatalf("d addr %s", set[d].Addr)
	}

	// Relabelling a node out of the selector removes it, like a delete.
	f.node("d", func(n *corev1.Node) { n.Labels["kubal-test"] = "elsewhere" })
	rec.waitSet(t, settle, "d unselected", func(s source.Set) bool { _, ok := s[d]; return !ok && len(s) == 2 })
	_ = f.c.CoreV1().Nodes().Delete(f.ctx(), d, metav1.DeleteOptions{})

	if _, _, failed := rec.snapshot(); len(failed) != 0 {
		t.Errorf("Failed called without an outage: %v", failed)
	}
}

// TestIPv6VIP: an IPv6 service gets each node's IPv6 InternalIP.
func TestIPv6VIP(t *testing.T) {
	f := newFixture(t)
	f.createNode(f.readyNode("a", "10.2.0.1"))
	svc := &config.Service{Name: "v6"}
	svc.IP = mustAddr("2001:db8::80")
	rec := f.start("", svc, "", nil)
	rec.waitSet(t, settle, "a with its IPv6 InternalIP", func(s source.Set) bool {
		return s[f.prefix+"a"].Addr.String() == "fd00::10:2:0:1"
	})
}

// TestCordon runs two sources over the same nodes: k8s-cordoned = depool (default)
// and keep.
func TestCordon(t *testing.T) {
	f := newFixture(t)
	f.createNode(f.readyNode("a", "10.3.0.1"))
	f.createNode(f.readyNode("b", "10.3.0.2"))
	depool := f.start("", &config.Service{Name: "depool"}, "", nil)
	keep := f.start("", &config.Service{Name: "keep", K8sCordoned: CordonKeep}, "", nil)
	a := f.prefix + "a"
	for _, rec := range []*recorder{depool, keep} {
		rec.waitSet(t, settle, "both enabled", func(s source.Set) bool { return len(s) == 2 && hasServer(s, a, true, "") })
	}

	f.node("a", func(n *corev1.Node) { n.Spec.Unschedulable = true })
	depool.waitSet(t, settle, "a cordoned and depooled", func(s source.Set) bool { return hasServer(s, a, false, "cordoned") })
	// keep: the cordon must not change anything; check after depool saw it.
	if last, _, _ := keep.snapshot(); !hasServer(last, a, true, "") {
		t.Fatalf("k8s-cordoned=keep: a = %+v, want enabled", last[a])
	}

	f.node("a", func(n *corev1.Node) { n.Spec.Unschedulable = false })
	depool.waitSet(t, settle, "a uncordoned", func(s source.Set) bool { return hasServer(s, a, true, "") })
}

func epSlice(name, ns, service string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			ServiceNameLabel:           service,
			discoveryv1.LabelManagedBy: "kubal-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http2"), Port: ptr(int32(8080))}},
		Endpoints:   eps,
	}
}

func endpoint(ip, node string, c discoveryv1.EndpointConditions) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr(node), Conditions: c}
}

// TestEndpointGating: the gateway endpoint on one node turning not ready,
// terminating (serving and not), missing; other services' endpoints are ignored.
func TestEndpointGating(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx()
	f.namespace()
	a, b, c := f.threeNodes("10.4.0")
	slicesAPI := f.c.DiscoveryV1().EndpointSlices(f.ns)
	// The gateway's pods, split over two slices as the EndpointSlice controller may do.
	gw1 := epSlice("gw-1", f.ns, "gw", endpoint("10.244.0.1", a, epReady), endpoint("10.244.1.1", b, epReady))
	gw2 := epSlice("gw-2", f.ns, "gw", endpoint("10.244.2.1", c, epReady))
	// Another service with a not-ready pod on a: must not gate anything.
	otherSvc := epSlice("other-1", f.ns, "other", endpoint("10.244.0.9", a, epNotReady))
	for _, s := range []*discoveryv1.EndpointSlice{gw1, gw2, otherSvc} {
		if _, err := slicesAPI.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	rec := f.start("endpoints="+f.ns+"/gw", nil, "", nil)
	rec.waitSet(t, settle, "all gated nodes enabled", func(s source.Set) bool {
		return len(s) == 3 && hasServer(s, a, true, "") && hasServer(s, b, true, "") && hasServer(s, c, true, "")
	})
	// The first Update already had the endpoints: nodes seen before their slices must
	// not flap through "no endpoint".
	rec.mu.Lock()
	first := rec.updates[0]
	rec.mu.Unlock()
	for h, srv := range first {
		if !srv.Enabled || srv.Down != "" {
			t.Errorf("first Update had %s disabled (%s%s): sent before the EndpointSlice cache synced", h, srv.Reason, srv.Down)
		}
	}

	setB := func(c discoveryv1.EndpointConditions) {
		t.Helper()
		s, err := slicesAPI.Get(ctx, "gw-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range s.Endpoints {
			if *s.Endpoints[i].NodeName == b {
				s.Endpoints[i].Conditions = c
			}
		}
		if _, err := slicesAPI.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	gwName := f.ns + "/gw"
	steps := []struct {
		what   string
		conds  discoveryv1.EndpointConditions
		enable bool
		reason string
	}{
		{"b's gateway not ready", epNotReady, false, gwName + " endpoint not ready"},
		{"b's gateway ready", epReady, true, ""},
		{"b's gateway terminating, still serving", epTermServing, false, gwName + " endpoint terminating (still serving)"},
		{"b's gateway terminating, not serving", epTermNotServing, false, gwName + " endpoint terminating"},
		{"b's gateway serving, not terminating", epServingNotReady, true, ""},
	}
	for _, st := range steps {
		setB(st.conds)
		rec.waitSet(t, settle, st.what, func(s source.Set) bool {
			return hasServer(s, b, st.enable, st.reason) && (st.reason == "" || why(s[b]) == st.reason) &&
				hasServer(s, a, true, "") && hasServer(s, c, true, "")
		})
	}

	// c's gateway pod gone (slice deleted): no endpoint on c.
	if err := slicesAPI.Delete(ctx, "gw-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, settle, "c without gateway", func(s source.Set) bool {
		return hasServer(s, c, false, "no "+gwName+" endpoint on node")
	})
	// A new pod on c, in a new slice.
	if _, err := slicesAPI.Create(ctx, epSlice("gw-3", f.ns, "gw", endpoint("10.244.2.2", c, epReady)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitSet(t, settle, "c's new gateway ready", func(s source.Set) bool { return hasServer(s, c, true, "") })
}

// TestAPIServerRestart: the API server dies; the source keeps its last state, reports
// Failed and connected=0; after a restart it reports recovery and follows changes made
// after the restart.
func TestAPIServerRestart(t *testing.T) {
	f := newFixture(t)
	f.createNode(f.readyNode("a", "10.5.0.1"))
	f.createNode(f.readyNode("b", "10.5.0.2"))
	reg := prometheus.NewRegistry()
	svc := &config.Service{Name: "restart"}
	rec := f.start("", svc, "", reg)
	a, b := f.prefix+"a", f.prefix+"b"
	rec.waitSet(t, settle, "both enabled", func(s source.Set) bool {
		return len(s) == 2 && hasServer(s, a, true, "") && hasServer(s, b, true, "")
	})
	waitGauge(t, reg, "kubal_k8s_source_connected", 1)
	_, updatesBefore, _ := rec.snapshot()

	if err := f.rig.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	err := rec.waitFailed(t, 15*time.Second, true)
	t.Logf("Failed reported %s after the kill: %v", time.Since(down).Round(time.Millisecond), err)
	waitGauge(t, reg, "kubal_k8s_source_connected", 0)
	last, updates, _ := rec.snapshot()
	if updates != updatesBefore || len(last) != 2 || !hasServer(last, a, true, "") {
		t.Fatalf("outage changed the set (updates %d -> %d):\n%s", updatesBefore, updates, dump(last))
	}

	if err := f.rig.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	// A change made after the restart must arrive: the informers are watching again.
	f.node("a", setReady(corev1.ConditionFalse))
	rec.waitSet(t, 40*time.Second, "a NotReady after the restart", func(s source.Set) bool {
		return hasServer(s, a, false, "not Ready") && hasServer(s, b, true, "")
	})
	rec.waitFailed(t, 10*time.Second, false)
	t.Logf("converged %s after the API server was ready again", time.Since(up).Round(time.Millisecond))
	waitGauge(t, reg, "kubal_k8s_source_connected", 1)
	if v := gauge(t, reg, "kubal_k8s_last_sync_timestamp_seconds"); v < float64(up.Unix())-1 {
		t.Errorf("last sync %v, before the restart at %d", v, up.Unix())
	}
	if v := counterSum(t, reg, "kubal_k8s_events_total"); v < 3 {
		t.Errorf("kubal_k8s_events_total = %v, want >= 3 (2 adds + 1 update)", v)
	}
}

// TestRBACLeastPrivilege applies configs/k8s/rbac.yaml and runs the source as that
// ServiceAccount: it syncs nodes and the gateway's EndpointSlices, and the account can
// do nothing else. A user without the binding gets Failed (403) and no Update.
func TestRBACLeastPrivilege(t *testing.T) {
	f := newFixture(t)
	applyManifest(t, f.c, filepath.Join("..", "configs", "k8s", "rbac.yaml"))
	ctx := f.ctx()
	f.namespace()
	f.createNode(f.readyNode("a", "10.6.0.1"))
	if _, err := f.c.DiscoveryV1().EndpointSlices(f.ns).Create(ctx,
		epSlice("gw-1", f.ns, "gw", endpoint("10.244.0.1", f.prefix+"a", epReady)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	saKubeconfig := filepath.Join(dir, "sa.kubeconfig")
	if err := f.rig.WriteKubeconfig(saKubeconfig, "lvs", saToken.Token); err != nil {
		t.Fatal(err)
	}
	// Through the URL's context, as an LVS host with several clusters would.
	src, err := New("k8s://lvs?nodes=kubal-test%3D"+f.label+"&endpoints="+f.ns+"/gw",
		config.Global{Kubeconfig: saKubeconfig}, &config.Service{Name: "rbac"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(runCtx, rec) }()
	t.Cleanup(func() { cancel(); <-done })
	rec.waitSet(t, settle, "a enabled as the ServiceAccount", func(s source.Set) bool { return hasServer(s, f.prefix+"a", true, "") })

	sa, err := kubernetes.NewForConfig(f.rig.RESTConfig(saToken.Token))
	if err != nil {
		t.Fatal(err)
	}
	forbidden := map[string]func() error{
		"list pods":       func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"list secrets":    func() error { _, err := sa.CoreV1().Secrets(f.ns).List(ctx, metav1.ListOptions{}); return err },
		"list services":   func() error { _, err := sa.CoreV1().Services(f.ns).List(ctx, metav1.ListOptions{}); return err },
		"delete node":     func() error { return sa.CoreV1().Nodes().Delete(ctx, f.prefix+"a", metav1.DeleteOptions{}) },
		"delete endpoint": func() error { return sa.DiscoveryV1().EndpointSlices(f.ns).Delete(ctx, "gw-1", metav1.DeleteOptions{}) },
	}
	for what, call := range forbidden {
		if err := call(); err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("ServiceAccount can %s (err %v): the role is not least privilege", what, err)
		}
	}

	nobody := filepath.Join(dir, "nobody.kubeconfig")
	if err := f.rig.WriteKubeconfig(nobody, "nobody", nobodyToken.Token); err != nil {
		t.Fatal(err)
	}
	rec2 := f.start("", nil, nobody, nil)
	err = rec2.waitFailed(t, settle, true)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "kubal-nobody") {
		t.Errorf("Failed(%v), want a 403 naming the user", err)
	}
	if _, n, _ := rec2.snapshot(); n != 0 {
		t.Errorf("%d Updates without permission, want 0", n)
	}
}
