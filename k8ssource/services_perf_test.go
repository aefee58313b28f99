package k8ssource

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/internal/testutil"
	"github.com/kubal/kubal/monitor"
	"github.com/kubal/kubal/source"
)

// The Kubernetes-declared services benchmark: perfSvcs LoadBalancer Services of the
// class (externalTrafficPolicy Local, so every node set is gated by the Service's
// EndpointSlice), perfSvcNodes Nodes, one EndpointSlice per Service with endpoints on
// three nodes. API objects only: no kube-proxy, no IPVS.
const (
	perfSvcs     = 1000
	perfSvcNodes = 100
	// perfSvcPods: each Service's endpoints are on this many nodes, its real servers
	// (Local: the other nodes are no members of its set).
	perfSvcPods   = 3
	perfSvcNS     = "kubal-perf-svc"
	perfSvcClass  = "kubal.io/perf"
	perfSvcLabel  = "kubal-perf-svc"
	perfSvcEvents = 200
	// perfSvcApplies new Services are created (and deleted) one at a time.
	perfSvcApplies = 20
)

func perfSvcNode(i int) string { return fmt.Sprintf("perfsvc-node-%03d", i) }

var populatedSvcs sync.Once

func populateServices(b *testing.B, c kubernetes.Interface) {
	populatedSvcs.Do(func() {
		start := time.Now()
		ctx := context.Background()
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: perfSvcNS}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		parallel(b, perfSvcNodes, func(i int) error {
			n := perfNode(i)
			n.Name = perfSvcNode(i)
			n.Labels = map[string]string{perfSvcLabel: "1"}
			created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
			if err == nil && len(created.Status.Conditions) == 0 {
				created.Status = n.Status
				_, err = c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
			}
			return err
		})
		class := perfSvcClass
		parallel(b, perfSvcs, func(i int) error {
			name := fmt.Sprintf("svc-%04d", i)
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: perfSvcNS, Name: name},
				Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
					ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Selector: map[string]string{"app": name},
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
			}
			if _, err := c.CoreV1().Services(perfSvcNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				return err
			}
			var eps []discoveryv1.Endpoint
			for j := range perfSvcPods {
				eps = append(eps, endpoint(fmt.Sprintf("10.250.%d.%d", i/250, i%250), perfSvcNode((i+j)%perfSvcNodes), epReady))
			}
			_, err := c.DiscoveryV1().EndpointSlices(perfSvcNS).Create(ctx, epSlice(name+"-1", perfSvcNS, name, eps...), metav1.CreateOptions{})
			return err
		})
		b.Logf("populated %d nodes, %d Services + EndpointSlices in %s", perfSvcNodes, perfSvcs, time.Since(start).Round(time.Millisecond))
	})
}

func parallel(b *testing.B, n int, f func(i int) error) {
	b.Helper()
	if err := testutil.Parallel(16, n, f); err != nil {
		b.Fatal(err)
	}
}

// setWatch is a source.Events for the benchmark: it signals each Update.
type setWatch struct {
	mu   sync.Mutex
	last source.Set
	at   time.Time
	poke chan struct{}
}

func (w *setWatch) Update(s source.Set) {
	w.mu.Lock()
	w.last, w.at = s, time.Now()
	w.mu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

func (w *setWatch) Failed(error) {}

func (w *setWatch) get() (source.Set, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.at
}

// BenchmarkK8sServices measures, against the real kube-apiserver, for 1,000
// Kubernetes-declared Services on 100 Nodes: the time from the controller's start to
// the full Desired set and to every declared service's Source holding its node set,
// the Go heap that adds (live objects after GC, in-process), and the time from one
// EndpointSlice write to the Source Update of that Service (p50/p99/max over
// perfSvcEvents changes, one at a time). Run with -benchtime=1x (docs/perf/k8s.md).
func BenchmarkK8sServices(b *testing.B) {
	r := rig(b)
	c := adminClient(b, r)
	populateServices(b, c)
	cfg, err := config.Parse("perf.conf", []byte("[k8s-services]\nclass = "+perfSvcClass+"\nscheduler = wrr\n"+
		"nodes = "+perfSvcLabel+"=1\nvip-ranges = 10.128.0.0/16\n"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)

		ctrl, err := NewServices(config.Global{Kubeconfig: r.Kubeconfig}, cfg.K8sServices, ServicesOptions{
			Checks: []func(*config.Service) config.Diagnostics{monitor.Validate}, ReadOnly: true,
			Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: perfLogLevel()})),
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		desired := make(chan Desired, 16)
		start := time.Now()
		done := make(chan struct{})
		go func() { defer close(done); _ = ctrl.Run(ctx, func(d Desired) { desired <- d }) }()
		var d Desired
		for len(d.Services) < perfSvcs {
			select {
			case d = <-desired:
			case <-time.After(2 * time.Minute):
				b.Fatalf("Desired has %d services after 2 minutes", len(d.Services))
			}
		}
		tDesired := time.Since(start)
		// Every declared service's Source, as the daemon runs them.
		watches := make(map[string]*setWatch, len(d.Services))
		for _, s := range d.Services {
			w := &setWatch{poke: make(chan struct{}, 1)}
			watches[s.Owner] = w
			go func() { _ = s.Source.Run(ctx, w) }()
		}
		for _, w := range watches {
			for {
				if set, _ := w.get(); len(set) == perfSvcPods {
					break
				}
				<-w.poke
			}
		}
		tSets := time.Since(start)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)

		// One EndpointSlice change at a time: the endpoint on the Service's first
		// node turns not ready (then ready again on the next round). Back to back
		// (the next write right after the previous Update: the controller's 10 ms
		// coalescing window applies to most), then isolated (30 ms quiet before each).
		ctxAPI := context.Background()
		change := func(k int) (fromStart, fromAck time.Duration) {
			i := (k * 7) % perfSvcs
			name := fmt.Sprintf("svc-%04d", i)
			es, err := c.DiscoveryV1().EndpointSlices(perfSvcNS).Get(ctxAPI, name+"-1", metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			ready := es.Endpoints[0].Conditions.Ready != nil && !*es.Endpoints[0].Conditions.Ready
			es.Endpoints[0].Conditions = epNotReady
			if ready {
				es.Endpoints[0].Conditions = epReady
			}
			node := *es.Endpoints[0].NodeName
			w := watches[perfSvcNS+"/"+name]
			t0 := time.Now()
			if _, err := c.DiscoveryV1().EndpointSlices(perfSvcNS).Update(ctxAPI, es, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			for {
				set, at := w.get()
				if srv := set[node]; (srv.Down == "") == ready && at.After(t0) {
					return at.Sub(t0), max(0, at.Sub(t1))
				}
				select {
				case <-w.poke:
				case <-time.After(10 * time.Second):
					b.Fatalf("%s: no Update for node %s after 10 s", name, node)
				}
			}
		}
		var lat, ack, iso, isoAck []time.Duration
		for k := range perfSvcEvents {
			l, a := change(k)
			lat, ack = append(lat, l), append(ack, a)
		}
		for k := range perfSvcEvents {
			time.Sleep(30 * time.Millisecond)
			l, a := change(perfSvcEvents + k)
			iso, isoAck = append(iso, l), append(isoAck, a)
		}
		// A new Service among the 1,000 (kubectl apply): from before the create to
		// the Desired holding it (its VIP allocated, its build checked).
		var applyLat []time.Duration
		for k := range perfSvcApplies {
			name := fmt.Sprintf("new-%d-%d", time.Now().UnixNano()%1e6, k)
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: perfSvcNS, Name: name},
				Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr(perfSvcClass),
					Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
			}
			t0 := time.Now()
			if _, err := c.CoreV1().Services(perfSvcNS).Create(ctxAPI, svc, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			want := perfSvcNS + "." + name + ":80"
		wait:
			for {
				select {
				case d = <-desired:
					if _, ok := find(d, want); ok {
						applyLat = append(applyLat, time.Since(t0))
						break wait
					}
				case <-time.After(10 * time.Second):
					b.Fatalf("%s not in Desired after 10 s", want)
				}
			}
			if err := c.CoreV1().Services(perfSvcNS).Delete(ctxAPI, name, metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
			for { // its removal, so the next create is measured alone
				d = <-desired
				if _, ok := find(d, want); !ok {
					break
				}
			}
		}
		cancel()
		<-done
		q := func(ds []time.Duration, f float64) time.Duration {
			ds = slices.Clone(ds)
			slices.Sort(ds)
			return ds[int(f*float64(len(ds)-1))].Round(10 * time.Microsecond)
		}
		b.Logf("%d Services (%d declared) on %d nodes: full Desired %s, every Source's node set %s; Go heap +%.1f MB after GC; "+
			"EndpointSlice write start -> Source Update: back to back p50 %s p99 %s max %s, from the write's ack p50 %s p99 %s; "+
			"isolated p50 %s p99 %s max %s, from the ack p50 %s p99 %s (n=%d each); a new Service -> in Desired p50 %s max %s (n=%d); loadavg %s",
			perfSvcs, len(d.Services), perfSvcNodes, tDesired.Round(time.Millisecond), tSets.Round(time.Millisecond), mb(heap),
			q(lat, .5), q(lat, .99), q(lat, 1), q(ack, .5), q(ack, .99),
			q(iso, .5), q(iso, .99), q(iso, 1), q(isoAck, .5), q(isoAck, .99), perfSvcEvents,
			q(applyLat, .5), q(applyLat, 1), len(applyLat), loadavg())
		b.ReportMetric(float64(q(iso, .99).Microseconds())/1000, "isolated-p99-ms")
		b.ReportMetric(float64(q(applyLat, 1).Microseconds())/1000, "apply-max-ms")
		b.ReportMetric(tDesired.Seconds(), "desired-s")
		b.ReportMetric(tSets.Seconds(), "all-sets-s")
		b.ReportMetric(mb(heap), "heap-MB")
		b.ReportMetric(float64(q(lat, .99).Microseconds())/1000, "back-to-back-p99-ms")
	}
}

// perfLogLevel: KUBAL_PERF_DEBUG=1 shows the controller's debug log.
func perfLogLevel() slog.Level {
	if os.Getenv("KUBAL_PERF_DEBUG") == "1" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
