package k8ssource

import (
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"
)

// ctrlHarness drives the controller's passes (Services.apply) on in-memory stores,
// without an API server: what the informer handlers would queue is passed by hand.
type ctrlHarness struct {
	s                  *Services
	st                 *servicesState
	nodes, slices, svc cache.Store
	last               Desired
	deliveries         int
	rv                 int
}

func newCtrlHarness(t testing.TB, tmpl *config.K8sServices, static []*config.Service) *ctrlHarness {
	t.Helper()
	s := &Services{t: tmpl, opts: ServicesOptions{Static: static, FirstSliceWait: time.Hour},
		log: slog.New(slog.DiscardHandler), hub: newHub(), want: map[string][]string{}}
	// A queue that nobody drains: setStatus records what it wants in s.want.
	s.queue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	t.Cleanup(s.queue.ShutDown)
	h := &ctrlHarness{s: s, nodes: cache.NewStore(cache.MetaNamespaceKeyFunc),
		slices: cache.NewStore(cache.MetaNamespaceKeyFunc), svc: cache.NewStore(cache.MetaNamespaceKeyFunc)}
	h.st = newServicesState(h.nodes, h.slices, h.svc, static, nil)
	s.svcStore = h.svc
	return h
}

func (h *ctrlHarness) apply(full bool, svcs, sl, nodes []string) {
	h.s.apply(h.st, full, svcs, sl, nodes, func(d Desired) { h.last, h.deliveries = d, h.deliveries+1 }, nil)
}

func (h *ctrlHarness) nextRV() string { h.rv++; return strconv.Itoa(h.rv) }

// putService stores a copy of svc with a new resourceVersion (as the API would).
func (h *ctrlHarness) putService(svc *corev1.Service) string {
	svc = svc.DeepCopy()
	svc.ResourceVersion = h.nextRV()
	if err := h.svc.Update(svc); err != nil {
		panic(err)
	}
	return svc.Namespace + "/" + svc.Name
}

func (h *ctrlHarness) getService(key string) *corev1.Service {
	obj, ok, _ := h.svc.GetByKey(key)
	if !ok {
		return nil
	}
	return obj.(*corev1.Service).DeepCopy()
}

// echoStatus writes what kubal wants into the Service's status, as the status
// worker would; it reports whether there was anything to write.
func (h *ctrlHarness) echoStatus(key string) bool {
	svc := h.getService(key)
	want, ok := h.s.want[key]
	if svc == nil || !ok || slices.Equal(ingressIPs(svc), want) {
		return false
	}
	svc.Status.LoadBalancer.Ingress = nil
	for _, ip := range want {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	h.putService(svc)
	return true
}

// counters returns and resets the work counters.
func (h *ctrlHarness) counters() (derived, visits, full int) {
	derived, visits, full = h.st.derived, h.st.groupVisits, h.st.fullAllocs
	h.st.derived, h.st.groupVisits, h.st.fullAllocs = 0, 0, 0
	return derived, visits, full
}

func incService(i int, created time.Time, ann map[string]string, fams ...corev1.IPFamily) *corev1.Service {
	class := "kubal.io/lvs"
	if len(fams) == 0 {
		fams = []corev1.IPFamily{corev1.IPv4Protocol}
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("s%04d", i), UID: types.UID("uid-" + strconv.Itoa(i)),
			Annotations: ann, CreationTimestamp: metav1.NewTime(created)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			Ports:                 []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, HealthCheckNodePort: 32000, IPFamilies: fams},
	}
}

func incSlice(svc *corev1.Service, nodes ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name + "-x",
		Labels: map[string]string{ServiceNameLabel: svc.Name}}, AddressType: discoveryv1.AddressTypeIPv4}
	for _, n := range nodes {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.1.0.1"}, NodeName: ptr(n),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	return es
}

// TestEventCostIndependentOfServices: one Service, EndpointSlice or Node event
// re-derives only what it touches. With 1,000 Services, a Service event (its own
// status write, an annotation change, a new Service) re-derives that Service, not
// all 1,000 (each used to cost a full pass: O(N) per event, O(N^2) for a cold start
// whose status writes each come back as an event).
func TestEventCostIndependentOfServices(t *testing.T) {
	const n = 1000
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\nvip-ranges = 192.0.0.0/16\nnodes = role=lvs\n"))
	if err != nil {
		t.Fatal(err)
	}
	h := newCtrlHarness(t, cfg.K8sServices, nil)
	for i := range 10 {
		nd := node(fmt.Sprintf("n%d", i))
		if err := h.nodes.Add(nd); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		svc := incService(i, t0.Add(time.Duration(i%50)*time.Second), nil)
		h.putService(svc)
		if err := h.slices.Add(incSlice(svc, fmt.Sprintf("n%d", i%10))); err != nil {
			t.Fatal(err)
		}
	}
	h.apply(true, nil, nil, nil)
	if len(h.last.Services) != n {
		t.Fatalf("%d declared services, want %d", len(h.last.Services), n)
	}
	// The cold start's status writes, each an event: none re-derives more than itself.
	for i := range n {
		key := fmt.Sprintf("ns/s%04d", i)
		if !h.echoStatus(key) {
			t.Fatalf("%s: no status to write", key)
		}
		h.counters()
		h.apply(false, []string{key}, nil, nil)
		if d, v, f := h.counters(); d > 1 || v > 2 || f > 0 {
			t.Fatalf("status write of %s: %d Services re-derived, %d node sets visited, %d full VIP allocations; want <= 1, 2, 0", key, d, v, f)
		}
	}

	mod := func(i int, f func(*corev1.Service)) func(h *ctrlHarness) ([]string, []string, []string) {
		return func(h *ctrlHarness) ([]string, []string, []string) {
			svc := h.getService(fmt.Sprintf("ns/s%04d", i))
			f(svc)
			return []string{h.putService(svc)}, nil, nil
		}
	}
	cases := []struct {
		name                      string
		change                    func(h *ctrlHarness) (svcs, sl, nodes []string)
		maxDerived, maxVisits     int
		maxFullAllocs, wantVisits int
	}{
		{name: "annotation change", change: mod(7, func(s *corev1.Service) {
			s.Annotations = map[string]string{AnnotationWeights: "n1=5"}
		}), maxDerived: 1, maxVisits: 2},
		{name: "port added", change: mod(8, func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: 443, Protocol: corev1.ProtocolTCP})
		}), maxDerived: 1, maxVisits: 2},
		{name: "bad annotation (last good settings kept)", change: mod(9, func(s *corev1.Service) {
			s.Annotations = map[string]string{AnnotationWeights: "n1=heavy"}
		}), maxDerived: 1, maxVisits: 2},
		// Without its status the Service searches again, and its address is free
		// for others: the allocation is redone (see allocate).
		{name: "status cleared by someone", change: mod(10, func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = nil
		}), maxDerived: 1, maxVisits: 2, maxFullAllocs: 1},
		{name: "new Service", change: func(h *ctrlHarness) ([]string, []string, []string) {
			return []string{h.putService(incService(n, t0.Add(time.Hour), nil))}, nil, nil
		}, maxDerived: 1, maxVisits: 2},
		{name: "new Service's status write", change: func(h *ctrlHarness) ([]string, []string, []string) {
			key := fmt.Sprintf("ns/s%04d", n)
			h.echoStatus(key)
			return []string{key}, nil, nil
		}, maxDerived: 1, maxVisits: 2},
		{name: "new Service requesting a free VIP", change: func(h *ctrlHarness) ([]string, []string, []string) {
			return []string{h.putService(incService(n+1, t0.Add(2*time.Hour), map[string]string{AnnotationVIP: "192.0.250.250"}))}, nil, nil
		}, maxDerived: 1, maxVisits: 2},
		{name: "EndpointSlice change", change: func(h *ctrlHarness) ([]string, []string, []string) {
			svc := h.getService("ns/s0011")
			if err := h.slices.Update(incSlice(svc, "n1", "n2")); err != nil {
				t.Fatal(err)
			}
			return nil, []string{"ns/s0011-x"}, nil
			// Its set, and the two new Services' sets held for their first slice.
		}, maxDerived: 0, maxVisits: 4},
		{name: "Node change (every node set holding it)", change: func(h *ctrlHarness) ([]string, []string, []string) {
			if err := h.nodes.Update(node("n3", setCond(corev1.NodeReady, corev1.ConditionFalse, "KubeletNotReady"))); err != nil {
				t.Fatal(err)
			}
			return nil, nil, []string{"n3"}
		}, maxDerived: 0, maxVisits: n + 2},
		// A deletion frees the Service's VIP: nobody else names it, and no other
		// Service searches for a free address (every status is written).
		{name: "Service deleted", change: func(h *ctrlHarness) ([]string, []string, []string) {
			h.echoStatus("ns/s0010") // cleared above
			h.apply(false, []string{"ns/s0010"}, nil, nil)
			svc := h.getService("ns/s0012")
			if err := h.svc.Delete(svc); err != nil {
				t.Fatal(err)
			}
			return []string{"ns/s0012"}, nil, nil
		}, maxDerived: 1, maxVisits: 2},
		// While another Service searches (its status not written yet), the freed
		// address could change its search: the allocation is redone (see allocate),
		// the Services whose VIP changed re-derived (none here).
		{name: "Service deleted while another searches", change: func(h *ctrlHarness) ([]string, []string, []string) {
			svc := h.getService("ns/s0014")
			svc.Status.LoadBalancer.Ingress = nil
			h.apply(false, []string{h.putService(svc)}, nil, nil)
			svc = h.getService("ns/s0015")
			if err := h.svc.Delete(svc); err != nil {
				t.Fatal(err)
			}
			return []string{"ns/s0015"}, nil, nil
		}, maxDerived: 1, maxVisits: 2, maxFullAllocs: 1},
		{name: "requested VIP changed", change: mod(13, func(s *corev1.Service) {
			s.Annotations = map[string]string{AnnotationVIP: "192.0.250.251"}
		}), maxDerived: 1, maxVisits: 2, maxFullAllocs: 1},
	}
	for _, tc := range cases {
		before := h.deliveries
		svcs, sl, nodes := tc.change(h)
		h.counters()
		h.apply(false, svcs, sl, nodes)
		d, v, f := h.counters()
		t.Logf("%s: %d re-derived, %d node sets visited, %d full allocations, %d Desired", tc.name, d, v, f, h.deliveries-before)
		if d > tc.maxDerived || v > tc.maxVisits || f > tc.maxFullAllocs {
			t.Errorf("%s: %d Services re-derived, %d node sets visited, %d full VIP allocations; want <= %d, %d, %d",
				tc.name, d, v, f, tc.maxDerived, tc.maxVisits, tc.maxFullAllocs)
		}
	}
}

// TestIncrementalEqualsFullPass: random sequences of Service changes (VIP requests
// that collide, ties in creationTimestamp, status writes, cleared or foreign
// statuses, deletions, ownership changes, bad annotations, static services) give
// the same Desired, problems, wanted statuses, VIPs and node sets when each event
// is applied incrementally as when every event runs a full pass.
func TestIncrementalEqualsFullPass(t *testing.T) {
	// Small ranges (some Services find no free address and search on every pass)
	// and larger ones (every Service gets one, so statuses settle).
	var tmpls []*config.K8sServices
	for _, ranges := range []string{"10.0.0.0/29, 2001:db8::/126", "10.0.0.0/28, 2001:db8::/124"} {
		cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\nvip-ranges = "+ranges+"\nnodes = role=lvs\n"))
		if err != nil {
			t.Fatal(err)
		}
		tmpls = append(tmpls, cfg.K8sServices)
	}
	addrs := []string{"", "", "", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.6", "10.9.9.9", "2001:db8::1", "2001:db8::2", "10.0.0.2,2001:db8::1"}
	static := func(r *rand.Rand) []*config.Service {
		if r.IntN(2) == 0 {
			return nil
		}
		return []*config.Service{{Name: "static_80", IP: mustAddr("10.0.0." + strconv.Itoa(1+r.IntN(6)))}}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 14))
		tmpl := tmpls[seed%2]
		inc, full := newCtrlHarness(t, tmpl, nil), newCtrlHarness(t, tmpl, nil)
		for _, h := range []*ctrlHarness{inc, full} {
			for i := range 3 {
				if err := h.nodes.Add(node(fmt.Sprintf("n%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			h.apply(true, nil, nil, nil)
		}
		var trace []string
		for step := range 60 {
			i := r.IntN(10)
			key := fmt.Sprintf("ns/s%04d", i)
			op := r.IntN(14)
			var svc *corev1.Service
			if cur := inc.getService(key); cur != nil {
				svc = cur
			}
			fullPass := false
			var what string
			switch {
			case svc == nil || op == 0:
				var fams []corev1.IPFamily
				switch r.IntN(3) {
				case 0:
					fams = []corev1.IPFamily{corev1.IPv6Protocol}
				case 1:
					fams = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
				}
				var ann map[string]string
				if a := addrs[r.IntN(len(addrs))]; a != "" {
					ann = map[string]string{AnnotationVIP: a}
				}
				svc = incService(i, t0.Add(time.Duration(r.IntN(4)+step/20)*time.Second), ann, fams...)
				what = fmt.Sprintf("create %s at %s ann %v fams %v", key, svc.CreationTimestamp.Format("05"), ann, fams)
			case op == 1:
				if a := addrs[r.IntN(len(addrs))]; a != "" {
					svc.Annotations = map[string]string{AnnotationVIP: a}
				} else {
					svc.Annotations = nil
				}
				what = fmt.Sprintf("annotations of %s: %v", key, svc.Annotations)
			case op == 13:
				// The status worker caught up: every Service has its status.
				what = "status echo of every Service"
				for j := range 10 {
					k := fmt.Sprintf("ns/s%04d", j)
					if inc.echoStatus(k) != full.echoStatus(k) {
						t.Fatalf("seed %d step %d: %s: status to write differs", seed, step, k)
					}
					inc.apply(false, []string{k}, nil, nil)
					full.apply(true, nil, nil, nil)
				}
				svc = nil
			case op == 2 || op == 3 || op >= 10:
				// Status write of what kubal wants (on both: the same statuses).
				what = "status echo " + key
				svc = nil
			case op == 4:
				svc.Status.LoadBalancer.Ingress = nil
				what = "status cleared " + key
			case op == 5:
				a := strings.Split(addrs[3+r.IntN(len(addrs)-3)], ",")[0]
				svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: a}}
				what = "status set by someone " + key + " " + a
			case op == 6:
				what = "delete " + key
				for _, h := range []*ctrlHarness{inc, full} {
					if err := h.svc.Delete(h.getService(key)); err != nil {
						t.Fatal(err)
					}
				}
				svc = nil
			case op == 7:
				if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
					svc.Spec.Type = corev1.ServiceTypeClusterIP
				} else {
					svc.Spec.Type = corev1.ServiceTypeLoadBalancer
				}
				what = "type of " + key + " " + string(svc.Spec.Type)
			case op == 8:
				svc.Annotations = map[string]string{AnnotationWeights: []string{"n1=heavy", "n1=3", ""}[r.IntN(3)]}
				what = fmt.Sprintf("annotations of %s: %v", key, svc.Annotations)
			default:
				st := static(r)
				inc.st.static, full.st.static = st, st
				fullPass = true
				what = fmt.Sprintf("static %v", st)
				svc = nil
			}
			switch {
			case what == "status echo "+key:
				a, b := inc.echoStatus(key), full.echoStatus(key)
				if a != b {
					t.Fatalf("seed %d step %d: status to write %v incremental, %v full", seed, step, a, b)
				}
			case svc != nil:
				inc.putService(svc)
				full.putService(svc)
			}
			trace = append(trace, what)
			inc.apply(fullPass, []string{key}, nil, nil)
			full.apply(true, nil, nil, nil)
			if diff := compareCtrl(inc, full); diff != "" {
				t.Fatalf("seed %d step %d: incremental != full pass: %s\ntrace:\n  %s", seed, step, diff, strings.Join(trace, "\n  "))
			}
		}
	}
}

func compareCtrl(a, b *ctrlHarness) string {
	da, db := describeDesired(a.last), describeDesired(b.last)
	if da != db {
		return fmt.Sprintf("Desired:\n%s\nvs\n%s", da, db)
	}
	if a.deliveries != b.deliveries {
		return fmt.Sprintf("%d Desired delivered, %d with full passes", a.deliveries, b.deliveries)
	}
	if !maps.EqualFunc(a.s.want, b.s.want, slices.Equal) {
		return fmt.Sprintf("status wanted %v vs %v", a.s.want, b.s.want)
	}
	if !maps.Equal(a.st.reported, b.st.reported) {
		return fmt.Sprintf("Events %v vs %v", a.st.reported, b.st.reported)
	}
	a.s.hub.mu.Lock()
	defer a.s.hub.mu.Unlock()
	b.s.hub.mu.Lock()
	defer b.s.hub.mu.Unlock()
	if !maps.EqualFunc(a.s.hub.sets, b.s.hub.sets, func(x, y source.Set) bool { return fmt.Sprint(x) == fmt.Sprint(y) }) {
		return fmt.Sprintf("node sets %v vs %v", a.s.hub.sets, b.s.hub.sets)
	}
	return ""
}

func describeDesired(d Desired) string {
	var b strings.Builder
	for _, x := range d.Services {
		fmt.Fprintf(&b, "%s %s %s %s %s\n", x.Config.Name, x.Owner, x.Config.IP, x.Source.(*groupSource).key, x.Config.Options.Fingerprint())
	}
	for _, k := range slices.Sorted(maps.Keys(d.Problems)) {
		fmt.Fprintf(&b, "problem %s: %s\n", k, d.Problems[k])
	}
	return b.String()
}

// BenchmarkServiceEvent: the controller's pass for one event among N Services (no
// API server: the stores are filled by hand), N = 100 and 1,000. The cost of one
// change must not grow with N.
//
//	go test -run '^$' -bench BenchmarkServiceEvent -benchmem ./k8ssource
func BenchmarkServiceEvent(b *testing.B) {
	for _, n := range []int{100, 1000} {
		cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\nvip-ranges = 192.0.0.0/16\nnodes = role=lvs\n"))
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		fill := func(b *testing.B) *ctrlHarness {
			h := newCtrlHarness(b, cfg.K8sServices, nil)
			for i := range 10 {
				if err := h.nodes.Add(node(fmt.Sprintf("n%d", i))); err != nil {
					b.Fatal(err)
				}
			}
			for i := range n {
				svc := incService(i, t0.Add(time.Duration(i%50)*time.Second), nil)
				h.putService(svc)
				if err := h.slices.Add(incSlice(svc, fmt.Sprintf("n%d", i%10))); err != nil {
					b.Fatal(err)
				}
			}
			return h
		}
		// The first (full) pass: every Service built and allocated.
		b.Run(fmt.Sprintf("services=%d/first-pass", n), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				h := fill(b)
				b.StartTimer()
				h.apply(true, nil, nil, nil)
			}
		})
		h := fill(b)
		h.apply(true, nil, nil, nil)
		for i := range n {
			key := fmt.Sprintf("ns/s%04d", i)
			h.echoStatus(key)
			h.apply(false, []string{key}, nil, nil)
		}
		b.Run(fmt.Sprintf("services=%d/update-nothing-read", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				key := h.putService(h.getService(fmt.Sprintf("ns/s%04d", i%n)))
				h.apply(false, []string{key}, nil, nil)
			}
		})
		b.Run(fmt.Sprintf("services=%d/annotation", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				svc := h.getService(fmt.Sprintf("ns/s%04d", i%n))
				svc.Annotations = map[string]string{AnnotationWeights: "n1=" + strconv.Itoa(1+i%7)}
				h.apply(false, []string{h.putService(svc)}, nil, nil)
			}
		})
		// Two events: a new Service (Desired is assembled again), then its deletion
		// (the VIP allocation is redone, see allocate).
		b.Run(fmt.Sprintf("services=%d/create+delete", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				svc := incService(n+1+i%2, t0.Add(time.Hour+time.Duration(i)*time.Second), nil)
				key := h.putService(svc)
				h.apply(false, []string{key}, nil, nil)
				if err := h.svc.Delete(svc); err != nil {
					b.Fatal(err)
				}
				h.apply(false, []string{key}, nil, nil)
			}
		})
		b.Run(fmt.Sprintf("services=%d/slice", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				svc := h.getService(fmt.Sprintf("ns/s%04d", i%n))
				if err := h.slices.Update(incSlice(svc, fmt.Sprintf("n%d", i%10), fmt.Sprintf("n%d", (i+1+i/n)%10))); err != nil {
					b.Fatal(err)
				}
				h.apply(false, nil, []string{svc.Namespace + "/" + svc.Name + "-x"}, nil)
			}
		})
	}
}
