package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/internal/testutil"
	"github.com/kubal/kubal/ipvs"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/logging"
)

// The end-to-end benchmark of Kubernetes-declared services (issue 14): the same API
// objects as k8ssource's BenchmarkK8sServices - benchSvcs LoadBalancer Services of the
// class with externalTrafficPolicy Local, benchNodes Nodes, one EndpointSlice per
// Service with ready endpoints on benchPods nodes - but through the whole daemon (the
// controller, 1,000 service actors, the planner, the IPVS reconciler) down to a fake
// IPVS backend that timestamps every write.
const (
	benchSvcs  = 1000
	benchNodes = 100
	// benchPods: each Service's endpoints are on this many nodes, its real servers
	// (Local: the other nodes are no members of its pool).
	benchPods    = 3
	benchNS      = "kubal-bench-svc"
	benchClass   = "kubal.io/bench"
	benchLabel   = "kubal-bench"
	benchRange   = "10.128.0.0/16"
	benchChanges = 200 // per phase, as down/up pairs on benchChanges/2 Services
	benchApplies = 20
)

func benchNodeName(i int) string { return fmt.Sprintf("bench-node-%03d", i) }

func benchNodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 100, byte(i / 250), byte(i%250 + 1)})
}

// ipvsWrite is one write the daemon made to the (fake) kernel.
type ipvsWrite struct {
	op     string // ipvs.Op* names
	k      ipvs.ServiceKey
	addr   netip.Addr // destinations only
	weight int
	at     time.Time // when the write returned
}

// recBackend is the fake kernel with a log of its writes: the benchmark times the
// daemon's IPVS writes exactly instead of polling the table. Reads (the reconciler's
// dumps) go to the embedded Fake unrecorded.
type recBackend struct {
	*ipvs.Fake

	mu     sync.Mutex
	writes []ipvsWrite
	dests  map[ipvs.ServiceKey]int       // destinations per service
	full   map[ipvs.ServiceKey]time.Time // when a service first held benchPods destinations
	dumps  []time.Time                   // the reconciler's full dumps (Services), when asked
	poke   chan struct{}                 // signalled (coalesced) after each write
}

// Services records when the reconciler dumps the table (its full resync pass).
func (r *recBackend) Services(ctx context.Context) ([]ipvs.Service, error) {
	r.mu.Lock()
	r.dumps = append(r.dumps, time.Now())
	r.mu.Unlock()
	return r.Fake.Services(ctx)
}

// dumpBetween reports whether a full dump started in [from, to].
func (r *recBackend) dumpBetween(from, to time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.dumps {
		if !t.Before(from) && !t.After(to) {
			return true
		}
	}
	return false
}

func newRecBackend() *recBackend {
	return &recBackend{Fake: ipvs.NewFake(), dests: map[ipvs.ServiceKey]int{},
		full: map[ipvs.ServiceKey]time.Time{}, poke: make(chan struct{}, 1)}
}

func (r *recBackend) record(err error, w ipvsWrite, delta int) error {
	if err != nil {
		return err
	}
	w.at = time.Now()
	r.mu.Lock()
	r.writes = append(r.writes, w)
	switch w.op {
	case ipvs.OpDeleteService: // a VIP may be allocated again: its next service starts afresh
		delete(r.dests, w.k)
		delete(r.full, w.k)
	default:
		r.dests[w.k] += delta
		if _, ok := r.full[w.k]; !ok && r.dests[w.k] == benchPods {
			r.full[w.k] = w.at
		}
	}
	r.mu.Unlock()
	select {
	case r.poke <- struct{}{}:
	default:
	}
	return nil
}

func (r *recBackend) AddService(ctx context.Context, s ipvs.Service) error {
	return r.record(r.Fake.AddService(ctx, s), ipvsWrite{op: ipvs.OpAddService, k: s.ServiceKey}, 0)
}

func (r *recBackend) DeleteService(ctx context.Context, k ipvs.ServiceKey) error {
	return r.record(r.Fake.DeleteService(ctx, k), ipvsWrite{op: ipvs.OpDeleteService, k: k}, 0)
}

func (r *recBackend) AddDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	return r.record(r.Fake.AddDestination(ctx, k, d), ipvsWrite{op: ipvs.OpAddDestination, k: k, addr: d.Addr, weight: d.Weight}, 1)
}

func (r *recBackend) UpdateDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	return r.record(r.Fake.UpdateDestination(ctx, k, d), ipvsWrite{op: ipvs.OpUpdateDestination, k: k, addr: d.Addr, weight: d.Weight}, 0)
}

func (r *recBackend) DeleteDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	return r.record(r.Fake.DeleteDestination(ctx, k, d), ipvsWrite{op: ipvs.OpDeleteDestination, k: k, addr: d.Addr}, -1)
}

// mark is the position in the write log to look from.
func (r *recBackend) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.writes)
}

// await returns the first write from position `from` on that match accepts, waiting
// up to timeout.
func (r *recBackend) await(b *testing.B, from int, timeout time.Duration, what string, match func(ipvsWrite) bool) ipvsWrite {
	b.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for _, w := range r.writes[from:] {
			if match(w) {
				r.mu.Unlock()
				return w
			}
		}
		from = len(r.writes)
		r.mu.Unlock()
		select {
		case <-r.poke:
		case <-deadline:
			b.Fatalf("no IPVS write for %s after %s", what, timeout)
		}
	}
}

// fullCount counts the services in the VIP range holding benchPods destinations (or
// once did), and the latest time one got there.
func (r *recBackend) fullCount(known map[ipvs.ServiceKey]bool) (n int, last time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, at := range r.full {
		if known == nil || known[k] {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last
}

// benchCluster starts a kube-apiserver and creates the benchmark's Nodes, Services and
// EndpointSlices (parallel creates), and a pybal.conf with only the [k8s-services]
// template selecting them.
func benchCluster(b *testing.B) (kubernetes.Interface, string) {
	b.Helper()
	if _, _, err := k8s.Binaries(); err != nil {
		k8s.SkipOrFail(b, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rig, err := k8s.Start(ctx)
	if err != nil {
		k8s.SkipOrFail(b, err)
	}
	b.Cleanup(func() { rig.Close() })
	c, err := rig.Client()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	benchParallel(b, benchNodes, func(i int) error {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: benchNodeName(i), Labels: map[string]string{benchLabel: "1"}}}
		return k8s.CreateReadyNode(ctx, c, n, benchNodeIP(i).String())
	})
	benchParallel(b, benchSvcs, func(i int) error {
		name := fmt.Sprintf("svc-%04d", i)
		if _, err := c.CoreV1().Services(benchNS).Create(ctx, benchService(name), metav1.CreateOptions{}); err != nil {
			return err
		}
		_, err := c.DiscoveryV1().EndpointSlices(benchNS).Create(ctx, benchSlice(name, i), metav1.CreateOptions{})
		return err
	})
	b.Logf("populated %d nodes, %d Services + EndpointSlices in %s", benchNodes, benchSvcs, time.Since(start).Round(time.Millisecond))

	dir := b.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := rig.WriteKubeconfig(kc, "admin", k8s.AdminToken); err != nil {
		b.Fatal(err)
	}
	conf := filepath.Join(dir, "pybal.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "[global]\nbgp = no\nkubeconfig = %s\nstate-file = %s/state.json\n\n"+
		"[k8s-services]\nclass = %s\nscheduler = wrr\nmonitors = []\ndepool-threshold = .5\nnodes = %s=1\nvip-ranges = %s\n",
		kc, dir, benchClass, benchLabel, benchRange), 0o644); err != nil {
		b.Fatal(err)
	}
	return c, conf
}

func benchService(name string) *corev1.Service {
	class := benchClass
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
}

// benchSlice is Service name's EndpointSlice: ready endpoints on nodes i..i+benchPods-1.
func benchSlice(name string, i int) *discoveryv1.EndpointSlice {
	port, proto := int32(8080), corev1.ProtocolTCP
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: benchNS, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: &port, Protocol: &proto}},
	}
	for j := range benchPods {
		node := benchNodeName((i + j) % benchNodes)
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.250.%d.%d", (i*benchPods+j)/250, (i*benchPods+j)%250+1)},
			NodeName:  &node, Conditions: endpointConditions(true)})
	}
	return s
}

func endpointConditions(ready bool) discoveryv1.EndpointConditions {
	return discoveryv1.EndpointConditions{Ready: ptrTo(ready), Serving: ptrTo(ready), Terminating: ptrTo(false)}
}

func ptrTo[T any](v T) *T { return &v }

func benchParallel(b *testing.B, n int, f func(i int) error) {
	b.Helper()
	if err := testutil.Parallel(16, n, f); err != nil {
		b.Fatal(err)
	}
}

// watchStatus records when each benchmark Service first has status.loadBalancer.ingress
// (kubal's status write), from one watch: no polling load on the API server.
type statusWatch struct {
	mu   sync.Mutex
	at   map[string]time.Time
	poke chan struct{}
}

func watchStatus(ctx context.Context, b *testing.B, c kubernetes.Interface) *statusWatch {
	b.Helper()
	w, err := c.CoreV1().Services(benchNS).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s := &statusWatch{at: map[string]time.Time{}, poke: make(chan struct{}, 1)}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			svc, ok := ev.Object.(*corev1.Service)
			if !ok || ev.Type == watch.Deleted || len(svc.Status.LoadBalancer.Ingress) == 0 {
				continue
			}
			s.mu.Lock()
			if _, seen := s.at[svc.Name]; !seen {
				s.at[svc.Name] = time.Now()
			}
			s.mu.Unlock()
			select {
			case s.poke <- struct{}{}:
			default:
			}
		}
	}()
	return s
}

// count returns how many of the populated Services have a status, and the latest time.
func (s *statusWatch) count() (n int, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, at := range s.at {
		if strings.HasPrefix(name, "svc-") {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last
}

// BenchmarkK8sServicesDaemon measures issue 14's benchmark end to end, through the
// daemon against the real kube-apiserver, down to a fake IPVS backend that timestamps
// its writes: for 1,000 Kubernetes-declared Services (externalTrafficPolicy Local,
// endpoints on 3 of 100 nodes), the time from the daemon's start to every IPVS service
// programmed with its 3 destinations, the Go heap and goroutines that adds, the time
// until kubal wrote every Service's status; then the time from one EndpointSlice
// change (one endpoint ready -> not ready -> ready) to the IPVS destination write,
// with 30 ms of quiet before each change and again with 150 ms (beyond the IPVS
// reconciler's 100 ms MinInterval); and a new Service (with its EndpointSlice) to its
// IPVS service with 3 destinations. Run with -benchtime=1x (docs/perf/k8s.md); the
// cluster is populated once per run.
func BenchmarkK8sServicesDaemon(b *testing.B) {
	c, conf := benchCluster(b)
	logs := newLogCount(os.Getenv("KUBAL_PERF_DEBUG") == "1")
	log := slog.New(logs)
	svcRange := netip.MustParsePrefix(benchRange)
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background())
		status := watchStatus(ctx, b, c)
		rec := newRecBackend()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		goBefore := runtime.NumGoroutine()

		start := time.Now()
		d, err := New(Options{ConfigPath: conf, Log: log, IPVS: rec, Addrs: ipvs.NewFakeAddrs()})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := d.Run(ctx); err != nil {
				b.Errorf("Run: %v", err)
			}
		}()
		// Ready (every source synced), polled: cheap next to 1,000 services.
		readyAt := make(chan time.Duration, 1)
		go func() {
			for d.Ready() != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
			readyAt <- time.Since(start)
		}()

		// 1. Start -> every IPVS service programmed with its 3 destinations.
		deadline := time.After(3 * time.Minute)
		for {
			if n, _ := rec.fullCount(nil); n >= benchSvcs {
				break
			}
			select {
			case <-rec.poke:
			case <-deadline:
				n, _ := rec.fullCount(nil)
				b.Fatalf("%d of %d IPVS services hold %d destinations after 3 minutes", n, benchSvcs, benchPods)
			}
		}
		_, last := rec.fullCount(nil)
		tProgrammed := last.Sub(start)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		goAll := runtime.NumGoroutine()
		goroutines := goAll - goBefore
		var tReady time.Duration
		select {
		case tReady = <-readyAt:
		case <-time.After(time.Minute):
			b.Fatalf("daemon not ready a minute after every IPVS service was programmed: %v", d.Ready())
		}

		// The IPVS key of each Service, from the daemon's live config, checked against
		// the kernel: exactly the 1,000 services, each with its 3 nodes.
		keys := map[string]ipvs.ServiceKey{}
		known := map[ipvs.ServiceKey]bool{}
		for _, s := range d.Config().Services {
			if name, ok := strings.CutPrefix(s.Name, benchNS+"."); ok {
				k := ipvs.ServiceKey{Protocol: ipvs.TCP, Addr: s.IP, Port: s.Port}
				keys[strings.TrimSuffix(name, ":80")], known[k] = k, true
			}
		}
		table := rec.Table()
		if len(keys) != benchSvcs || len(table) != benchSvcs {
			b.Fatalf("%d declared services, %d IPVS services; want %d", len(keys), len(table), benchSvcs)
		}
		for i := range benchSvcs {
			k := keys[fmt.Sprintf("svc-%04d", i)]
			var got, want []netip.Addr
			for _, dst := range table[k].Destinations {
				got = append(got, dst.Addr)
			}
			for j := range benchPods {
				want = append(want, benchNodeIP((i+j)%benchNodes))
			}
			slices.SortFunc(got, netip.Addr.Compare)
			slices.SortFunc(want, netip.Addr.Compare)
			if !slices.Equal(got, want) || !svcRange.Contains(k.Addr) {
				b.Fatalf("svc-%04d: IPVS %v has %v; want %v, the nodes of its endpoints, and a VIP in %s", i, k, got, want, svcRange)
			}
		}

		// Every Service's status written (kubal's status worker), before measuring
		// the steady state: the status writes change the Services, which the
		// controller sees too.
		dw := watchDaemon(ctx, d)
		tWatch := time.Now()
		var tStatus time.Duration
		deadline = time.After(6 * time.Minute)
	statusWait:
		for {
			n, last := status.count()
			if n >= benchSvcs {
				tStatus = last.Sub(start)
				break
			}
			select {
			case <-status.poke:
			case <-deadline:
				b.Logf("only %d of %d Services have a status 6 minutes after the start", n, benchSvcs)
				break statusWait
			}
		}
		statusDesired, statusApplied := dw.counts(tWatch, time.Now())

		// 2. One EndpointSlice change at a time: the endpoint on Service i's first
		// node turns not ready (the node must leave its IPVS service: Local) and
		// ready again (it must return), after `quiet` each time.
		change := func(i int, ready bool, quiet time.Duration) (fromStart, fromAck time.Duration, afterDump bool) {
			name := fmt.Sprintf("svc-%04d", i)
			es, err := c.DiscoveryV1().EndpointSlices(benchNS).Get(ctx, name+"-1", metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			es.Endpoints[0].Conditions = endpointConditions(ready)
			addr, k := benchNodeIP(i%benchNodes), keys[name]
			time.Sleep(quiet)
			from := rec.mark()
			t0 := time.Now()
			if _, err := c.DiscoveryV1().EndpointSlices(benchNS).Update(ctx, es, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			w := rec.await(b, from, 10*time.Second, fmt.Sprintf("%s node %s ready=%v", name, addr, ready), func(w ipvsWrite) bool {
				if w.k != k || w.addr != addr {
					return false
				}
				if ready {
					return w.op == ipvs.OpAddDestination || w.op == ipvs.OpUpdateDestination && w.weight > 0
				}
				return w.op == ipvs.OpDeleteDestination || w.op == ipvs.OpUpdateDestination && w.weight == 0
			})
			// A full resync pass (dump) shortly before: the write waited for the
			// reconciler's MinInterval after it.
			return w.at.Sub(t0), max(0, w.at.Sub(t1)), rec.dumpBetween(t0.Add(-150*time.Millisecond), w.at)
		}
		type phase struct {
			name     string
			quiet    time.Duration
			first    int // the first Service; then every 7th
			lat, ack []time.Duration
			down, up []time.Duration
			// slow: changes over 30 ms from write start; slowDump: of those, with a
			// full resync dump within 150 ms before the write.
			slow, slowDump     int
			desired, reapplied int // Desired published, services re-applied (during the phase)
		}
		phases := []*phase{{name: "30 ms quiet", quiet: 30 * time.Millisecond, first: 0}, {name: "150 ms quiet", quiet: 150 * time.Millisecond, first: 1}}
		for _, p := range phases {
			pStart := time.Now()
			for n := range benchChanges / 2 {
				i := (p.first + 7*n) % benchSvcs
				for _, ready := range []bool{false, true} {
					l, a, dump := change(i, ready, p.quiet)
					p.lat, p.ack = append(p.lat, l), append(p.ack, a)
					if l > 30*time.Millisecond {
						p.slow++
						if dump {
							p.slowDump++
						}
					}
					if ready {
						p.up = append(p.up, l)
					} else {
						p.down = append(p.down, l)
					}
				}
			}
			p.desired, p.reapplied = dw.counts(pStart, time.Now())
		}

		// 3. A new Service among the 1,000 (kubectl apply; then the EndpointSlice
		// controller's slice): from before the Service create to its IPVS service
		// with its 3 destinations. Deleted after each, and its IPVS service gone, so
		// the next create is measured alone.
		var applyLat, applyFirst, applyDesired, applyApplied []time.Duration
		for n := range benchApplies {
			name := fmt.Sprintf("new-%d", n)
			// Past the reconciler's MinInterval since the previous delete's pass.
			time.Sleep(150 * time.Millisecond)
			from := rec.mark()
			t0 := time.Now()
			if _, err := c.CoreV1().Services(benchNS).Create(ctx, benchService(name), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			if _, err := c.DiscoveryV1().EndpointSlices(benchNS).Create(ctx, benchSlice(name, 10*n), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			k, at := rec.awaitNewFull(b, known, 20*time.Second, name)
			added := rec.await(b, from, time.Second, name+"'s IPVS service", func(w ipvsWrite) bool { return w.op == ipvs.OpAddService && w.k == k })
			applyLat, applyFirst = append(applyLat, at.Sub(t0)), append(applyFirst, added.at.Sub(t0))
			if des, app := dw.first(t0, benchNS+"."+name+":80"); !des.IsZero() && !app.IsZero() {
				applyDesired, applyApplied = append(applyDesired, des.Sub(t0)), append(applyApplied, app.Sub(t0))
			}
			from = rec.mark()
			if err := c.CoreV1().Services(benchNS).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
			if err := c.DiscoveryV1().EndpointSlices(benchNS).Delete(ctx, name+"-1", metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
			rec.await(b, from, 20*time.Second, name+" removed", func(w ipvsWrite) bool { return w.op == ipvs.OpDeleteService && w.k == k })
		}
		cancel()
		<-done

		q := func(ds []time.Duration, f float64) time.Duration {
			ds = slices.Clone(ds)
			slices.Sort(ds)
			return ds[int(f*float64(len(ds)-1))].Round(10 * time.Microsecond)
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		b.Logf("%d Services on %d nodes through the daemon: every IPVS service with its %d destinations %s after the start (ready %s), "+
			"Go heap +%.1f MB after GC, +%d goroutines (%d in all); every Service's status written %s",
			benchSvcs, benchNodes, benchPods, tProgrammed.Round(time.Millisecond), tReady.Round(time.Millisecond),
			float64(heap)/(1<<20), goroutines, goAll, statusText(tStatus))
		b.Logf("while the statuses were written: the controller published %d Desired, the daemon re-applied its services %d times",
			statusDesired, statusApplied)
		for _, p := range phases {
			b.Logf("EndpointSlice write -> IPVS destination write, %s (n=%d): from write start p50 %s p99 %s max %s; from the ack p50 %s p99 %s max %s; "+
				"not ready -> delete p50 %s max %s, ready -> add p50 %s max %s",
				p.name, len(p.lat), q(p.lat, .5), q(p.lat, .99), q(p.lat, 1), q(p.ack, .5), q(p.ack, .99), q(p.ack, 1),
				q(p.down, .5), q(p.down, 1), q(p.up, .5), q(p.up, 1))
			b.Logf("  %s: %d changes over 30 ms, %d of them with a full IPVS resync dump in the 150 ms before the write; %d Desired published, %d re-applications",
				p.name, p.slow, p.slowDump, p.desired, p.reapplied)
		}
		b.Logf("daemon log records at warning or above (by message): %s", logs.take())
		b.Logf("a new Service + EndpointSlice -> its IPVS service p50 %s max %s, with its %d destinations p50 %s max %s (n=%d); loadavg %s",
			q(applyFirst, .5), q(applyFirst, 1), benchPods, q(applyLat, .5), q(applyLat, 1), len(applyLat), benchLoadavg())
		if len(applyDesired) > 0 {
			b.Logf("  the new Service in the controller's Desired p50 %s max %s, in the daemon's running config p50 %s max %s (n=%d, 1 ms polling)",
				q(applyDesired, .5), q(applyDesired, 1), q(applyApplied, .5), q(applyApplied, 1), len(applyDesired))
		}
		b.ReportMetric(tProgrammed.Seconds(), "programmed-s")
		b.ReportMetric(tStatus.Seconds(), "status-s")
		b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
		b.ReportMetric(float64(goroutines), "goroutines")
		b.ReportMetric(ms(q(phases[0].lat, .99)), "slice-ipvs-p99-ms")
		b.ReportMetric(ms(q(phases[0].ack, .99)), "slice-ipvs-ack-p99-ms")
		b.ReportMetric(ms(q(phases[1].lat, .99)), "slice-ipvs-150ms-p99-ms")
		b.ReportMetric(ms(q(applyLat, 1)), "apply-max-ms")
	}
}

// awaitNewFull waits for a service not among known to hold benchPods destinations.
func (r *recBackend) awaitNewFull(b *testing.B, known map[ipvs.ServiceKey]bool, timeout time.Duration, what string) (ipvs.ServiceKey, time.Time) {
	b.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		for k, at := range r.full {
			if !known[k] {
				r.mu.Unlock()
				return k, at
			}
		}
		r.mu.Unlock()
		select {
		case <-r.poke:
		case <-deadline:
			b.Fatalf("no new IPVS service with %d destinations for %s after %s", benchPods, what, timeout)
		}
	}
}

func statusText(d time.Duration) string {
	if d == 0 {
		return "NOT within 6 minutes"
	}
	return d.Round(time.Millisecond).String() + " after the start"
}

func benchLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// logCount is the daemon's log for the benchmark: records at warning level or above
// are counted by the first words of their message, not printed (the daemon logs every endpoint turning not ready
// as an error, PyBal's format: hundreds of lines per run); KUBAL_PERF_DEBUG=1 prints
// everything from debug level on.
type logCount struct {
	print slog.Handler // nil: count only
	mu    *sync.Mutex
	n     map[string]int
}

func newLogCount(debug bool) *logCount {
	l := &logCount{mu: &sync.Mutex{}, n: map[string]int{}}
	if debug {
		l.print = logging.New(os.Stderr, slog.LevelDebug, false).Handler()
	}
	return l
}

func (l *logCount) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn || l.print != nil
}

func (l *logCount) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		l.mu.Lock()
		l.n[r.Level.String()+" "+firstWords(r.Message, 4)]++
		l.mu.Unlock()
	}
	if l.print != nil {
		return l.print.Handle(ctx, r)
	}
	return nil
}

func (l *logCount) WithAttrs(as []slog.Attr) slog.Handler {
	c := *l
	if l.print != nil {
		c.print = l.print.WithAttrs(as)
	}
	return &c
}

func (l *logCount) WithGroup(name string) slog.Handler {
	c := *l
	if l.print != nil {
		c.print = l.print.WithGroup(name)
	}
	return &c
}

// take returns the counts since the last take, most frequent first.
func (l *logCount) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	type kv struct {
		msg string
		n   int
	}
	var all []kv
	for m, n := range l.n {
		all = append(all, kv{m, n})
	}
	clear(l.n)
	if len(all) == 0 {
		return "none"
	}
	slices.SortFunc(all, func(a, b kv) int { return b.n - a.n })
	var out []string
	for _, e := range all {
		out = append(out, fmt.Sprintf("%dx %q", e.n, e.msg))
	}
	return strings.Join(out, "; ")
}

// firstWords groups formatted messages ("... reports server bench-node-001 ...").
func firstWords(msg string, n int) string {
	w := strings.Fields(msg)
	if len(w) <= n {
		return msg
	}
	return strings.Join(w[:n], " ") + " ..."
}

// daemonWatch polls (every millisecond) the daemon's two pointers that change with
// the declared services: the controller's latest Desired (d.declared) and the running
// config (d.cfg, stored by the main loop each time it re-applies the services). Each
// change is recorded with the name of a "new-" Service it holds (phase 3).
type daemonWatch struct {
	mu               sync.Mutex
	desired, applied []daemonChange
}

type daemonChange struct {
	at     time.Time
	newSvc string // the first declared service named benchNS.new-*, "" if none
}

func watchDaemon(ctx context.Context, d *Daemon) *daemonWatch {
	w := &daemonWatch{}
	prefix := benchNS + ".new-"
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		lastD, lastC := d.declared.Load(), d.cfg.Load()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if des := d.declared.Load(); des != lastD {
				lastD = des
				name := ""
				// Sorted by name, and "new-" sorts before "svc-".
				i, _ := slices.BinarySearchFunc(des.Services, prefix, func(s k8ssource.Declared, p string) int { return strings.Compare(s.Config.Name, p) })
				if i < len(des.Services) && strings.HasPrefix(des.Services[i].Config.Name, prefix) {
					name = des.Services[i].Config.Name
				}
				w.mu.Lock()
				w.desired = append(w.desired, daemonChange{time.Now(), name})
				w.mu.Unlock()
			}
			if cfg := d.cfg.Load(); cfg != lastC {
				lastC = cfg
				name := ""
				for _, s := range cfg.Services {
					if strings.HasPrefix(s.Name, prefix) {
						name = s.Name
						break
					}
				}
				w.mu.Lock()
				w.applied = append(w.applied, daemonChange{time.Now(), name})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// counts returns how many Desired and re-applications were seen in [from, to].
func (w *daemonWatch) counts(from, to time.Time) (desired, applied int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	in := func(cs []daemonChange) (n int) {
		for _, c := range cs {
			if !c.at.Before(from) && !c.at.After(to) {
				n++
			}
		}
		return n
	}
	return in(w.desired), in(w.applied)
}

// first returns when, after t0, a Desired and the running config first held svc.
func (w *daemonWatch) first(t0 time.Time, svc string) (desired, applied time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	find := func(cs []daemonChange) time.Time {
		for _, c := range cs {
			if c.at.After(t0) && c.newSvc == svc {
				return c.at
			}
		}
		return time.Time{}
	}
	return find(w.desired), find(w.applied)
}
