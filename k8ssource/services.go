package k8ssource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"
)

const (
	resServices = "service"
	resPods     = "pod"
)

// Event reasons kubal records on a Kubernetes Service.
const (
	ReasonInvalid    = "KubalInvalid"    // an annotation or port kubal cannot use
	ReasonVIPRefused = "KubalVIPRefused" // the VIP is outside the ranges or taken
	ReasonAccepted   = "KubalAccepted"   // problems fixed: the Service is load-balanced
)

// Declared is one Kubernetes-declared kubal service: its config (as a pybal.conf
// section would give it) and its server source. Sources of the same Service and
// family share one node set, fed by the controller's shared informers.
type Declared struct {
	Config *config.Service
	Source source.Source
	// Owner is the Kubernetes Service, "namespace/name".
	Owner string
}

// Desired is the full set of Kubernetes-declared services.
type Desired struct {
	Services []Declared // sorted by Config.Name
	// Problems: Kubernetes Service ("namespace/name") -> why it is refused or keeps
	// its last good settings. Each is also a Kubernetes Event on the Service.
	Problems map[string]string
}

// ServicesOptions are the inputs of a Services controller besides the template.
type ServicesOptions struct {
	// Static are pybal.conf's own services: their VIPs and names are never given to
	// a Kubernetes Service.
	Static []*config.Service
	// Checks run on every declared service, as on pybal.conf sections (the daemon
	// passes monitor.Validate).
	Checks     []func(*config.Service) config.Diagnostics
	Log        *slog.Logger
	Registerer prometheus.Registerer
	// Identity names this LVS host in Events (default: the host name).
	Identity string
	// ReadOnly: write neither status nor Events (dry run).
	ReadOnly bool
	// FirstSliceWait bounds how long the node set of a new Local Service waits for
	// its first EndpointSlice (default DefaultFirstSliceWait).
	FirstSliceWait time.Duration

	client kubernetes.Interface // tests: an existing client
}

// DefaultFirstSliceWait is how long a Local Service created while kubal runs waits
// for its first EndpointSlice before its (then empty) node set is handed on. The
// Service reaches kubal before the EndpointSlice controller has written its slice;
// handed on at once, the set would be empty and the service would count as synced
// with no real server, then change a moment later. While the set is held the
// service's source has not synced, so kubal programs no destination for it yet (and
// keeps any it had). The EndpointSlice controller writes a slice, empty or not, for
// every Service with a selector, usually within a second; a selectorless Service may
// have none, hence the bound.
const DefaultFirstSliceWait = 5 * time.Second

// The controller's API client rate (requests/s, burst): status writes, Events and
// relists of 1,000 Services at once.
const (
	servicesQPS   = 50
	servicesBurst = 100
)

// Services is the controller of Kubernetes-declared services: one set of informers
// (Services, EndpointSlices, the selected Nodes, critical Pods) for all of them.
//
// How the daemon uses it (the daemon owns the service actors; the controller only
// says what should exist):
//
//	ctrl, err := k8ssource.NewServices(cfg.Global, cfg.K8sServices, k8ssource.ServicesOptions{
//		Static: cfg.Services, Checks: []func(*config.Service) config.Diagnostics{monitor.Validate},
//		Log: log, Registerer: reg, ReadOnly: dryRun})
//	go ctrl.Run(ctx, func(d k8ssource.Desired) { /* keep the latest, wake the main loop */ })
//
// For each Declared: an actor named Config.Name, built like a pybal.conf service
// whose source is Declared.Source (behind source.NewGuard), whose admin store follows
// Config.Conftool as for any section, with Deps.Health = true. A Declared whose Source
// (compared by identity: it is stable while the Service's node set is) and plan.Key are
// unchanged is reconfigured in place; one that disappears is stopped. Problems go to
// /alerts. On reload: the same template -> ctrl.SetStatic(cfg.Services); a changed
// template -> a new controller.
type Services struct {
	t      *config.K8sServices
	opts   ServicesOptions
	log    *slog.Logger
	client kubernetes.Interface
	health *health
	m      *metrics
	hub    *hub
	static chan []*config.Service

	statusMu sync.Mutex
	want     map[string][]string // namespace/name -> ingress IPs to write (nil: clear)
	queue    workqueue.TypedRateLimitingInterface[string]
	svcStore cache.Store
}

// CheckTemplate validates what config cannot (it does not import client-go): the
// node label selector. The daemon adds it to --check-config.
func CheckTemplate(cfg *config.Config) config.Diagnostics {
	t := cfg.K8sServices
	if t == nil {
		return nil
	}
	var ds config.Diagnostics
	if _, err := labels.Parse(t.Nodes); err != nil {
		ds = append(ds, config.Diagnostic{Pos: t.Pos, Key: "nodes", Msg: fmt.Sprintf("bad label selector %q: %v", t.Nodes, err)})
	}
	for _, c := range t.CriticalPods {
		if _, err := labels.Parse(c.Selector); err != nil {
			ds = append(ds, config.Diagnostic{Pos: t.Pos, Key: "critical-pods", Msg: fmt.Sprintf("%s: bad label selector: %v", c, err)})
		}
	}
	return ds
}

// NewServices builds the controller for the [k8s-services] template. The client
// comes from [global] kubeconfig, else in-cluster, else $KUBECONFIG.
func NewServices(g config.Global, t *config.K8sServices, opts ServicesOptions) (*Services, error) {
	if t == nil {
		return nil, fmt.Errorf("no [%s] section", config.K8sServicesSection)
	}
	if ds := CheckTemplate(&config.Config{K8sServices: t}); len(ds) > 0 {
		return nil, fmt.Errorf("[%s]: %w", config.K8sServicesSection, ds)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Identity == "" {
		opts.Identity, _ = os.Hostname()
	}
	s := &Services{
		t: t, opts: opts, log: opts.Log.With("system", "k8s-services"),
		health: newHealth(), hub: newHub(), static: make(chan []*config.Service, 1),
		want: map[string][]string{},
	}
	s.client = opts.client
	if s.client == nil {
		cfg, err := restConfig(g, URL{})
		if err != nil {
			return nil, fmt.Errorf("[%s]: %w", config.K8sServicesSection, err)
		}
		cfg = rest.CopyConfig(cfg)
		if cfg.QPS == 0 && cfg.RateLimiter == nil {
			// client-go's default limiter (5 requests/s, burst 10) took 198 s to write
			// the status of 1,000 new Services (BenchmarkK8sServicesDaemon), and
			// kube-proxy accepts a VIP only once the status names it. The API server's
			// priority and fairness still protects it from us.
			cfg.QPS, cfg.Burst = servicesQPS, servicesBurst
		}
		cfg.UserAgent = "kubal/k8s-services"
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
		cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
		h := s.health
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &transport{next: rt, h: h} })
		if s.client, err = kubernetes.NewForConfig(cfg); err != nil {
			return nil, fmt.Errorf("[%s]: client: %w", config.K8sServicesSection, err)
		}
	}
	m, err := newMetrics(opts.Registerer, config.K8sServicesSection)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

// SetStatic replaces the static services (after a reload of pybal.conf); the
// controller re-checks every VIP against them.
func (s *Services) SetStatic(static []*config.Service) {
	select {
	case <-s.static:
	default:
	}
	s.static <- static
}

// servicesState is owned by Run's goroutine.
type servicesState struct {
	nodes, slices, svcs cache.Store
	static              []*config.Service
	contrib             map[string]sliceContrib         // EndpointSlice key -> its endpoints by node
	byService           map[string]map[string]Endpoints // namespace/name -> node -> endpoints
	groups              map[string]*group               // groupKey -> node set
	built               map[string]*built               // namespace/name -> last build
	good                map[string][]declaredPort       // namespace/name -> last good ports
	problems            map[string]string               // namespace/name -> problem in force
	reported            map[string]string               // problems already sent as Events
	owned               map[string]bool                 // Services owned at some point in this run
	sources             map[string]*groupSource         // declared name -> its source (stable)
	delivered           bool                            // a first Desired was (the set is known)
	pods                []cache.Store                   // per critical-pods entry
	podContrib          map[string]podContrib           // "<entry>|ns/name" -> what it counted
	critical            []map[string]int                // per entry: node -> ready Pods
	sigs                map[string]cachedSig            // namespace/name -> inputSig at a resourceVersion

	// The VIP allocation, kept equal to allocateVIPs over every owned Service's
	// requests (see allocate).
	reqs        map[string][]vipRequest        // namespace/name -> its requests, by family
	vips        map[string]vipResult           // request id -> result
	taken       map[netip.Addr]holder          // every address a result or static service holds
	newest      vipRequest                     // no request sorts after it (Owner "": none yet)
	byAddr      map[netip.Addr]map[string]bool // address -> ids of requests naming it (requested or in status)
	searching   map[string]bool                // ids of requests whose result came from the search (step 3)
	staticIPs   map[netip.Addr]string          // static VIP -> its service
	staticNames map[string]bool                // static service names

	derivedSvc   map[string]*svcDerived // namespace/name -> what it contributes to Desired
	declared     []Declared             // every Service's, sorted by name (Desired.Services)
	listAll      bool                   // a full pass: declared is rebuilt and sorted at its end
	desiredDirty bool                   // a Service's contribution changed since the last Desired
	held         map[string]bool        // groups whose set may be held (heldUntil set)

	// Work counters (tests assert a single event's cost does not grow with the
	// number of Services): Services re-derived, node sets visited, full VIP
	// allocations run.
	derived, groupVisits, fullAllocs int
}

func newServicesState(nodes, slices, svcs cache.Store, static []*config.Service, pods []cache.Store) *servicesState {
	st := &servicesState{
		nodes: nodes, slices: slices, svcs: svcs,
		static:    static,
		contrib:   map[string]sliceContrib{},
		byService: map[string]map[string]Endpoints{},
		groups:    map[string]*group{}, built: map[string]*built{}, good: map[string][]declaredPort{},
		problems: map[string]string{}, reported: map[string]string{}, owned: map[string]bool{},
		sources: map[string]*groupSource{}, sigs: map[string]cachedSig{},
		reqs: map[string][]vipRequest{}, vips: map[string]vipResult{}, taken: map[netip.Addr]holder{},
		byAddr: map[netip.Addr]map[string]bool{}, searching: map[string]bool{},
		staticIPs: map[netip.Addr]string{}, staticNames: map[string]bool{},
		derivedSvc: map[string]*svcDerived{}, held: map[string]bool{},
		pods: pods, podContrib: map[string]podContrib{}, critical: make([]map[string]int, len(pods)),
	}
	for i := range st.critical {
		st.critical[i] = map[string]int{}
	}
	return st
}

type podContrib struct {
	entry int
	node  string
	ready bool
}

type sliceContrib struct {
	svc string
	eps map[string]Endpoints
}

type built struct {
	sig   string
	ports []declaredPort
	errs  []string
}

// group is the node set of one family of one Service.
type group struct {
	policy  Policy
	weights map[string]int
	set     source.Set
	// heldUntil: the set is not published before this time unless the Service's
	// first EndpointSlice is seen (see DefaultFirstSliceWait); zero: not held.
	heldUntil time.Time
}

// Run watches until ctx is done, calling out with the full Desired set after the
// caches synced and whenever it changes. out is called from Run's goroutine and
// must not block for long (hand the value over and return). Node set changes reach
// the Declared services' Sources directly, not through out.
func (s *Services) Run(ctx context.Context, out func(Desired)) error {
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(s.log.Handler()))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d := newServiceDirty()

	nodeInf := newInformer(nodesLW(s.client, s.health, s.t.Nodes), &corev1.Node{})
	sliceInf := newInformer(sliceLW(s.client, s.health, metav1.NamespaceAll, ""), &discoveryv1.EndpointSlice{})
	svcInf := newInformer(servicesLW(s.client, s.health), &corev1.Service{})
	for _, x := range []struct {
		inf  cache.SharedIndexInformer
		res  string
		trim cache.TransformFunc
	}{{nodeInf, resNodes, trimNode}, {sliceInf, resEndpointSlices, trimEndpointSlice}, {svcInf, resServices, trimService}} {
		if err := s.setup(x.inf, x.res, x.trim, d, ""); err != nil {
			return err
		}
	}
	resources := []string{resNodes, resEndpointSlices, resServices}
	infs := []cache.SharedIndexInformer{nodeInf, sliceInf, svcInf}
	synced := []cache.InformerSynced{nodeInf.HasSynced, sliceInf.HasSynced, svcInf.HasSynced}
	var podStores []cache.Store
	for i, c := range s.t.CriticalPods {
		// One label-selected informer per entry, in its namespace: only those Pods.
		inf := newInformer(podsLW(s.client, s.health, c.Namespace, c.Selector), &corev1.Pod{})
		if err := s.setup(inf, resPods, trimPod, d, strconv.Itoa(i)+"|"); err != nil {
			return err
		}
		infs = append(infs, inf)
		synced = append(synced, inf.HasSynced)
		podStores = append(podStores, inf.GetStore())
	}
	if len(podStores) > 0 {
		resources = append(resources, resPods)
	}
	stop := runInformers(ctx, infs)
	defer func() {
		cancel()
		stop()
	}()
	s.svcStore = svcInf.GetStore()

	var rec record.EventRecorder
	if !s.opts.ReadOnly {
		b := record.NewBroadcaster(record.WithContext(ctx))
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.client.CoreV1().Events("")})
		defer b.Shutdown()
		rec = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubal", Host: s.opts.Identity})
		s.queue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
		defer s.queue.ShutDown()
		go s.statusWorker(ctx)
	}

	syncedCh := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			close(syncedCh)
		}
	}()
	st := newServicesState(nodeInf.GetStore(), sliceInf.GetStore(), svcInf.GetStore(), s.opts.Static, podStores)
	var (
		inSync, failed bool
		downSince      time.Time
		lastRun        time.Time
		timer          = time.NewTimer(time.Hour)
		armed          bool
		// settle: every informer answered again; recovery is declared when it fires.
		settle   = time.NewTimer(time.Hour)
		settling bool
		// hold: the earliest release of a new Local service's held node set.
		hold = time.NewTimer(time.Hour)
	)
	timer.Stop()
	settle.Stop()
	hold.Stop()
	defer timer.Stop()
	defer settle.Stop()
	defer hold.Stop()
	s.m.connected.Set(0)
	apply := func(full bool) {
		defer func() { lastRun = time.Now() }()
		svcs, sl, nodes, pods, since := d.take()
		nodes = append(nodes, s.applyPods(st, full, pods)...)
		t0 := time.Now()
		if release := s.apply(st, full, svcs, sl, nodes, out, rec); !release.IsZero() {
			hold.Reset(time.Until(release))
		}
		s.log.Debug("k8s-services pass", "full", full, "services", len(svcs), "slices", len(sl), "nodes", len(nodes), "took", time.Since(t0))
		if !since.IsZero() {
			s.m.delay.Observe(time.Since(since).Seconds())
		}
		s.m.lastSync.SetToCurrentTime()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case st.static = <-s.static:
			if inSync {
				apply(true)
			}
		case <-syncedCh:
			syncedCh = nil
			inSync = true
			apply(true)
			if !failed {
				s.m.connected.Set(1)
			} else if err, answered := s.health.status(resources); err == nil && answered {
				// Unreachable at first, answered since: recover as after an outage.
				settle.Reset(resyncSettle)
				settling = true
			}
		case <-d.poke:
			if !inSync || armed {
				break
			}
			if wait := coalesce - time.Since(lastRun); wait > 0 {
				timer.Reset(wait)
				armed = true
				break
			}
			apply(false)
		case <-timer.C:
			armed = false
			apply(false)
		case <-hold.C:
			apply(false)
		case <-s.health.notify:
			err, answered := s.health.status(resources)
			switch {
			case err != nil:
				s.m.connected.Set(0)
				if settling {
					settle.Stop()
					settling = false
				}
				if !failed {
					failed = true
					downSince = time.Now()
					s.log.Warn("k8s API server unreachable or refusing; keeping the declared services and their last known nodes", "err", err)
					s.hub.fail(fmt.Errorf("[%s]: %w", config.K8sServicesSection, err))
				}
			case answered && inSync && failed && !settling:
				// Every informer has relisted (or resumed its watch): let client-go
				// hand the relisted objects to the caches, then recover.
				settle.Reset(resyncSettle)
				settling = true
			}
		case <-settle.C:
			settling = false
			if err, answered := s.health.status(resources); err != nil || !answered || !failed {
				break
			}
			failed = false
			s.m.connected.Set(1)
			s.log.Info("k8s API server reachable again; caches resynced", "down_for", time.Since(downSince).Round(time.Millisecond))
			apply(true)
			s.hub.fail(nil)
		}
	}
}

// setup wires one informer: memory trim, error handler, events.
func (s *Services) setup(inf cache.SharedIndexInformer, res string, trim cache.TransformFunc, d *serviceDirty, prefix string) error {
	if err := inf.SetTransform(trim); err != nil {
		return fmt.Errorf("[%s] %s informer: %w", config.K8sServicesSection, res, err)
	}
	err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		if isRoutineWatchEnd(err) || errors.Is(err, context.Canceled) {
			return
		}
		s.health.set(res, fmt.Errorf("%s list/watch: %w", res, err))
	})
	if err != nil {
		return err
	}
	add := func(typ string, obj any) {
		s.m.events.WithLabelValues(res, typ).Inc()
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			return
		}
		d.add(res, prefix+key)
	}
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { add("add", obj) },
		UpdateFunc: func(_, obj any) { add("update", obj) },
		DeleteFunc: func(obj any) { add("delete", obj) },
	})
	return err
}

// apply folds the changed objects into the state and publishes what changed.
//
// It returns when the earliest held node set must be released (zero: none held).
func (s *Services) apply(st *servicesState, full bool, svcKeys, sliceKeys, nodeKeys []string, out func(Desired), rec record.EventRecorder) time.Time {
	if full {
		sliceKeys = append(st.slices.ListKeys(), slices.Collect(maps.Keys(st.contrib))...)
	}
	// EndpointSlices: per Service and node, the endpoints there.
	touched := map[string]map[string]bool{} // namespace/name -> nodes
	touch := func(svc, node string) {
		if touched[svc] == nil {
			touched[svc] = map[string]bool{}
		}
		touched[svc][node] = true
	}
	for _, k := range sliceKeys {
		if old, ok := st.contrib[k]; ok {
			for n, e := range old.eps {
				st.byService[old.svc][n] = st.byService[old.svc][n].minus(e)
				if st.byService[old.svc][n] == (Endpoints{}) {
					delete(st.byService[old.svc], n)
				}
				touch(old.svc, n)
			}
			delete(st.contrib, k)
		}
		obj, ok, _ := st.slices.GetByKey(k)
		es, isSlice := obj.(*discoveryv1.EndpointSlice)
		if !ok || !isSlice || es.Labels[ServiceNameLabel] == "" {
			continue
		}
		svc := es.Namespace + "/" + es.Labels[ServiceNameLabel]
		c := sliceContrib{svc: svc, eps: EndpointsByNode([]*discoveryv1.EndpointSlice{es})}
		st.contrib[k] = c
		if st.byService[svc] == nil {
			st.byService[svc] = map[string]Endpoints{}
		}
		for n, e := range c.eps {
			st.byService[svc][n] = st.byService[svc][n].plus(e)
			touch(svc, n)
		}
	}

	changedGroups := map[string]bool{}
	if full || len(svcKeys) > 0 {
		s.reconcileServices(st, full, svcKeys, out, rec, changedGroups)
	}
	// Nodes: every group holds every selected node.
	if full {
		// Every node in the cache or in a set, once (a node in 1,000 sets is still
		// one key: this pass is groups x nodes).
		all := map[string]bool{}
		for _, k := range st.nodes.ListKeys() {
			all[k] = true
		}
		for _, g := range st.groups {
			for h := range g.set {
				all[h] = true
			}
		}
		nodeKeys = slices.Collect(maps.Keys(all))
	}
	var next time.Time
	visit := func(key string, g *group) {
		owner, _, _ := strings.Cut(key, "|")
		changed := false
		st.groupVisits++
		for _, n := range nodeKeys {
			changed = s.updateNode(st, g, owner, n) || changed
		}
		for n := range touched[owner] {
			changed = s.updateNode(st, g, owner, n) || changed
		}
		if !g.heldUntil.IsZero() {
			_, sliceSeen := st.byService[owner]
			if !sliceSeen && time.Now().Before(g.heldUntil) {
				if next.IsZero() || g.heldUntil.Before(next) {
					next = g.heldUntil
				}
				return
			}
			if !sliceSeen {
				s.log.Warn("new Local service has no EndpointSlice yet; handing on its nodes without one", "service", owner, "waited", s.firstSliceWait())
			}
			g.heldUntil, changed = time.Time{}, true
		}
		delete(st.held, key)
		if changed || changedGroups[key] {
			s.hub.publish(key, g.set.Clone())
		}
	}
	if len(nodeKeys) > 0 {
		// A node is in every set: each is visited.
		for key, g := range st.groups {
			visit(key, g)
		}
		return next
	}
	// Otherwise only the sets of the Services whose slices or settings changed,
	// and those held for a first slice.
	visited := map[string]bool{}
	visitKey := func(key string) {
		if g := st.groups[key]; g != nil && !visited[key] {
			visited[key] = true
			visit(key, g)
		}
	}
	for owner := range touched {
		visitKey(groupKey(owner, false))
		visitKey(groupKey(owner, true))
	}
	for key := range changedGroups {
		visitKey(key)
	}
	for key := range st.held {
		if st.groups[key] == nil {
			delete(st.held, key)
			continue
		}
		visitKey(key)
	}
	return next
}

func (s *Services) firstSliceWait() time.Duration {
	if s.opts.FirstSliceWait > 0 {
		return s.opts.FirstSliceWait
	}
	return DefaultFirstSliceWait
}

// updateNode recomputes one node of one group; it reports a change.
//
// Under externalTrafficPolicy: Local (Policy.Members) the real servers are the nodes
// that run an endpoint of the Service, ready or not: kube-proxy drops the Service's
// traffic on every other node, so they are no real servers at all. Were they in the
// set as down, the depool threshold, counted over every selected node, would keep
// half of them pooled: with pods on 3 of 100 nodes, 47 nodes that drop every
// connection. Among the members, an endpoint that is not ready or terminating is a
// health signal held to the threshold, like a failing monitor.
func (s *Services) updateNode(st *servicesState, g *group, owner, name string) bool {
	old, had := g.set[name]
	obj, ok, _ := st.nodes.GetByKey(name)
	n, isNode := obj.(*corev1.Node)
	if g.policy.Members && st.byService[owner][name] == (Endpoints{}) {
		ok = false // no endpoint here: not a member
	}
	if !ok || !isNode {
		if had {
			delete(g.set, name)
			return true
		}
		return false
	}
	srv, _ := NodeServer(n, st.byService[owner][name], g.policy)
	if w, ok := g.weights[name]; ok {
		srv.Weight = w
	}
	for i, c := range s.t.CriticalPods {
		if st.critical[i][name] == 0 {
			// A health signal, like NotReady: held to the depool threshold.
			srv.Down = strings.TrimPrefix(srv.Down+"; "+criticalName(c)+" not ready on "+name, "; ")
		}
	}
	if had && srv == old {
		return false
	}
	g.set[name] = srv
	return true
}

// ownedSvc is an owned Service as read from the cache: its VIP requests (one per
// family) and what is wrong with them.
type ownedSvc struct {
	svc  *corev1.Service
	how  ownership
	reqs []vipRequest
	errs []string
}

// readService reads one Service from the cache; nil when it is gone or not owned.
func (s *Services) readService(st *servicesState, key string) *ownedSvc {
	obj, exists, _ := st.svcs.GetByKey(key)
	svc, ok := obj.(*corev1.Service)
	if !exists || !ok {
		return nil
	}
	how := owns(svc, s.t)
	if how == notOwned {
		return nil
	}
	o := &ownedSvc{svc: svc, how: how}
	req, err := requestedVIPs(svc)
	if err != nil {
		o.errs = append(o.errs, err.Error())
	}
	current := map[bool]netip.Addr{}
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(in.IP); err == nil {
			current[a.Is6()] = a
		}
	}
	for _, v6 := range families(svc) {
		if how == ownedNodePort && !req[v6].IsValid() && err == nil {
			// A NodePort Service has no status to keep an allocation in: it
			// must name its VIP (which the workers carry on their loopback).
			o.errs = append(o.errs, fmt.Sprintf("a NodePort Service needs annotation %s (%s)", AnnotationVIP, family(v6)))
			continue
		}
		o.reqs = append(o.reqs, vipRequest{Owner: key, V6: v6, Order: svc.CreationTimestamp.UnixNano(),
			Requested: req[v6], Current: current[v6], Seed: string(svc.UID)})
	}
	return o
}

// svcDerived is what one owned Service contributes to Desired.
type svcDerived struct {
	declared []Declared
	groups   []string // its node sets' keys
	sig      string   // of its declared services and problem: Desired changes when it does
}

// reconcileServices re-derives the given Services (every one when full): their VIP
// requests, the VIP allocation, builds (reused while their inputs are unchanged),
// node sets, status and Events; and delivers Desired when it changed.
//
// The cost is proportional to the Services re-derived: the keys given, plus the
// Services whose VIP a change moved (see allocate). Desired's list (the full set
// the daemon takes) is kept sorted as Services change, and a copy is delivered only
// when a Service's part changed: not for a status write, which is most of a cold
// start's events. A full pass (start, recovery, static services) re-derives all.
func (s *Services) reconcileServices(st *servicesState, full bool, keys []string, out func(Desired), rec record.EventRecorder, changedGroups map[string]bool) {
	if full {
		st.staticIPs, st.staticNames = map[netip.Addr]string{}, map[string]bool{}
		for _, svc := range st.static {
			if svc.IP.IsValid() {
				st.staticIPs[svc.IP] = svc.Name
			}
			st.staticNames[svc.Name] = true
		}
		all := map[string]bool{}
		for _, k := range st.svcs.ListKeys() {
			all[k] = true
		}
		for k := range st.owned {
			all[k] = true
		}
		for k := range st.reqs {
			all[k] = true
		}
		for k := range st.derivedSvc {
			all[k] = true
		}
		keys = slices.Collect(maps.Keys(all))
	}
	keys = slices.Compact(slices.Sorted(slices.Values(keys)))
	read := make(map[string]*ownedSvc, len(keys))
	var changes []reqChange
	for _, key := range keys {
		o := s.readService(st, key)
		read[key] = o
		var reqs []vipRequest
		if o != nil {
			reqs = o.reqs
		}
		if !slices.Equal(st.reqs[key], reqs) {
			changes = append(changes, reqChange{owner: key, reqs: reqs})
		}
	}
	moved := s.allocate(st, full, changes)
	for _, key := range moved {
		if _, ok := read[key]; !ok {
			read[key] = s.readService(st, key)
			keys = append(keys, key)
		}
	}
	st.listAll = full
	for _, key := range keys {
		s.derive(st, key, read[key], rec, changedGroups)
	}
	if full {
		st.declared = st.declared[:0]
		for _, d := range st.derivedSvc {
			st.declared = append(st.declared, d.declared...)
		}
		slices.SortFunc(st.declared, func(a, b Declared) int { return strings.Compare(a.Config.Name, b.Config.Name) })
	}
	if st.desiredDirty || !st.delivered {
		// The first one is delivered even when empty: it says the set is known, so the
		// daemon may remove what no Service declares any more.
		var desired []Declared // the daemon keeps it: a copy
		if len(st.declared) > 0 {
			desired = slices.Clone(st.declared)
		}
		problems := maps.Clone(st.problems)
		st.desiredDirty, st.delivered = false, true
		s.log.Info("k8s-declared services", "services", len(desired), "problems", len(problems))
		out(Desired{Services: desired, Problems: problems})
	}
}

// derive recomputes one Service's declared services, node sets, status and Event
// from its cached VIP allocation (o nil: the Service is gone or no longer owned).
func (s *Services) derive(st *servicesState, key string, o *ownedSvc, rec record.EventRecorder, changedGroups map[string]bool) {
	st.derived++
	old := st.derivedSvc[key]
	if o == nil {
		if st.owned[key] {
			// No longer owned (type changed, opt-in annotation removed): it loses the
			// status kubal wrote; a deleted one is gone with its status.
			delete(st.owned, key)
			delete(st.built, key)
			delete(st.good, key)
			delete(st.reported, key)
			delete(st.sigs, key)
			if obj, exists, _ := st.svcs.GetByKey(key); exists {
				if svc, ok := obj.(*corev1.Service); ok {
					s.setStatus(key, nil, ingressIPs(svc))
				}
			} else {
				s.forgetStatus(key)
			}
		}
		if old != nil {
			s.dropDerived(st, old, nil, nil)
			st.replaceDeclared(old.declared, nil)
			delete(st.derivedSvc, key)
			st.desiredDirty = true
		}
		if _, had := st.problems[key]; had {
			delete(st.problems, key)
			st.desiredDirty = true
		}
		return
	}
	svc := o.svc
	st.owned[key] = true
	var refused []string
	assigned := map[bool]netip.Addr{}
	for _, v6 := range families(svc) {
		r, ok := st.vips[groupKey(key, v6)]
		switch {
		case !ok:
		case r.Refuse != "":
			refused = append(refused, r.Refuse)
		default:
			assigned[v6] = r.VIP
		}
	}
	errs := slices.Clone(o.errs)
	var ports []declaredPort
	if len(errs) == 0 {
		sig := st.inputSig(svc) + fmt.Sprintf("|%v|%d", assigned, o.how)
		b := st.built[key]
		if b == nil || b.sig != sig {
			p, e := buildService(svc, o.how, s.t, assigned, s.opts.Checks)
			b = &built{sig: sig, ports: p, errs: e}
			st.built[key] = b
		}
		ports, errs = b.ports, b.errs
	}
	for _, p := range ports {
		if st.staticNames[p.cfg.Name] {
			errs = append(errs, fmt.Sprintf("name %s is a static pybal.conf service", p.cfg.Name))
		}
	}
	var problem []string
	switch {
	case len(errs) > 0:
		problem = append(problem, errs...)
		ports = st.good[key] // keep the last good settings (none: not created)
		if len(ports) > 0 {
			problem = append(problem, "keeping the last good settings")
		}
	default:
		st.good[key] = ports
	}
	problem = append(problem, refused...)
	prob := strings.Join(problem, "; ")
	s.event(st, rec, svc, prob, len(errs) > 0)

	// Node sets: one per family in use.
	local := o.how == ownedLB && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	weights, _ := parseWeights(svc.Annotations[AnnotationWeights])
	wantGroups := map[string]*group{}
	var groupKeys []string
	for _, p := range ports {
		if wantGroups[p.group] != nil {
			continue
		}
		pol := Policy{IPv6: strings.HasSuffix(p.group, "|IPv6"), Taints: p.cfg.K8sTaints,
			KeepCordon: p.cfg.K8sCordoned == CordonKeep, Gated: local, Members: local, ServiceName: key}
		if len(errs) > 0 && st.groups[p.group] != nil {
			// Last good settings: the group keeps its policy and weights too.
			pol, weights = st.groups[p.group].policy, st.groups[p.group].weights
		}
		wantGroups[p.group] = &group{policy: pol, weights: weights}
		groupKeys = append(groupKeys, p.group)
	}
	d := &svcDerived{groups: groupKeys}
	var sb strings.Builder
	for _, p := range ports {
		src := st.sources[p.cfg.Name]
		if src == nil || src.key != p.group {
			src = &groupSource{hub: s.hub, key: p.group, name: p.cfg.Name}
			st.sources[p.cfg.Name] = src
		}
		d.declared = append(d.declared, Declared{Config: p.cfg, Source: src, Owner: key})
		fmt.Fprintf(&sb, "%s\x00%p\x00%s\x01", p.cfg.Name, src, p.fp)
	}
	sb.WriteString(prob)
	d.sig = sb.String()
	s.dropDerived(st, old, d, wantGroups)

	// Groups: keep the sets of unchanged ones; new or changed ones start empty and
	// are filled from every node.
	for gk, g := range wantGroups {
		old := st.groups[gk]
		if old != nil && samePolicy(old.policy, g.policy) && maps.Equal(old.weights, g.weights) {
			continue
		}
		g.set = source.Set{}
		if old == nil && g.policy.Gated && st.delivered && st.byService[key] == nil {
			// A Local Service created while we run: wait for its EndpointSlice.
			// (At start the slices were listed with the Services: no wait.)
			g.heldUntil = time.Now().Add(s.firstSliceWait())
			st.held[gk] = true
			s.log.Debug("new Local service: its nodes wait for its first EndpointSlice", "service", key, "for", s.firstSliceWait())
		}
		for _, n := range st.nodes.ListKeys() {
			s.updateNode(st, g, key, n)
		}
		st.groups[gk] = g
		changedGroups[gk] = true
	}

	if old == nil || old.sig != d.sig {
		st.desiredDirty = true
	}
	var was []Declared
	if old != nil {
		was = old.declared
	}
	st.replaceDeclared(was, d.declared)
	st.derivedSvc[key] = d
	if prob != "" {
		st.problems[key] = prob
	} else {
		delete(st.problems, key)
	}

	// Status: the VIPs in force (the last good ones while a bad annotation is
	// refused), in the Service's family order.
	if o.how == ownedLB {
		var ips []string
		for _, v6 := range families(svc) {
			for _, p := range ports {
				if p.cfg.IP.Is6() == v6 && !slices.Contains(ips, p.cfg.IP.String()) {
					ips = append(ips, p.cfg.IP.String())
				}
			}
		}
		s.setStatus(key, ips, ingressIPs(svc))
	}
}

// replaceDeclared replaces a Service's entries in the sorted list of every declared
// service (its names are its own), unless a full pass sorts the list at its end.
func (st *servicesState) replaceDeclared(old, now []Declared) {
	if st.listAll {
		return
	}
	byName := func(d Declared, name string) int { return strings.Compare(d.Config.Name, name) }
	for _, d := range old {
		if i, found := slices.BinarySearchFunc(st.declared, d.Config.Name, byName); found {
			st.declared = slices.Delete(st.declared, i, i+1)
		}
	}
	for _, d := range now {
		if i, found := slices.BinarySearchFunc(st.declared, d.Config.Name, byName); found {
			st.declared[i] = d
		} else {
			st.declared = slices.Insert(st.declared, i, d)
		}
	}
}

// dropDerived forgets what a Service's previous derivation had and its new one (nil:
// none) has not: node sets and sources.
func (s *Services) dropDerived(st *servicesState, old, now *svcDerived, wantGroups map[string]*group) {
	if old == nil {
		return
	}
	for _, gk := range old.groups {
		if wantGroups[gk] == nil {
			s.hub.remove(gk)
			delete(st.groups, gk)
			delete(st.held, gk)
		}
	}
	for _, d := range old.declared {
		if now == nil || !slices.ContainsFunc(now.declared, func(x Declared) bool { return x.Config.Name == d.Config.Name }) {
			delete(st.sources, d.Config.Name)
		}
	}
}

// inputSig is what a build depends on in the Service: its trimmed spec and kubal
// annotations, not its status or resourceVersion (a status write must not rebuild
// the service). Cached per resourceVersion: a pass over 1,000 Services marshals only
// the changed ones.
func (st *servicesState) inputSig(svc *corev1.Service) string {
	key := svc.Namespace + "/" + svc.Name
	if c, ok := st.sigs[key]; ok && c.rv == svc.ResourceVersion {
		return c.sig
	}
	spec, _ := json.Marshal(svc.Spec)
	ann, _ := json.Marshal(svc.Annotations)
	sig := string(spec) + "|" + string(ann)
	st.sigs[key] = cachedSig{rv: svc.ResourceVersion, sig: sig}
	return sig
}

type cachedSig struct{ rv, sig string }

func samePolicy(a, b Policy) bool {
	return a.IPv6 == b.IPv6 && a.KeepCordon == b.KeepCordon && a.Gated == b.Gated && a.Members == b.Members &&
		a.ServiceName == b.ServiceName && slices.Equal(a.Taints, b.Taints)
}

// event records a problem (or its end) on the Service, once per change.
func (s *Services) event(st *servicesState, rec record.EventRecorder, svc *corev1.Service, problem string, invalid bool) {
	key := svc.Namespace + "/" + svc.Name
	prev, had := st.reported[key]
	if had && prev == problem || !had && problem == "" {
		return
	}
	st.reported[key] = problem
	if problem != "" {
		s.log.Warn("k8s-declared service has a problem", "service", key, "problem", problem)
	} else {
		s.log.Info("k8s-declared service problem fixed", "service", key)
	}
	if rec == nil {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: svc.Namespace, Name: svc.Name,
		UID: svc.UID, ResourceVersion: svc.ResourceVersion}
	switch {
	case problem == "":
		rec.Event(ref, corev1.EventTypeNormal, ReasonAccepted, "kubal: problems fixed; the Service is load-balanced")
	case invalid:
		rec.Event(ref, corev1.EventTypeWarning, ReasonInvalid, "kubal: "+problem)
	default:
		rec.Event(ref, corev1.EventTypeWarning, ReasonVIPRefused, "kubal: "+problem)
	}
}

// setStatus records the ingress IPs a Service should carry and queues a check.
// setStatus records the status kubal wants for the Service and queues a write when
// that changed or the Service's status (cur) differs from it: a Service created again
// under the same name, or whose status someone else cleared, must get it back, since
// without it kube-proxy drops the VIP's traffic.
func (s *Services) setStatus(key string, ips, cur []string) {
	if s.queue == nil {
		return
	}
	s.statusMu.Lock()
	old, had := s.want[key]
	s.want[key] = ips
	s.statusMu.Unlock()
	if had && slices.Equal(old, ips) && slices.Equal(cur, ips) {
		return
	}
	s.queue.Add(key)
}

// forgetStatus drops what kubal wanted for a deleted Service.
func (s *Services) forgetStatus(key string) {
	s.statusMu.Lock()
	delete(s.want, key)
	s.statusMu.Unlock()
}

// ingressIPs is the Service's status.loadBalancer.ingress as kubal writes it.
func ingressIPs(svc *corev1.Service) []string {
	var ips []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		ips = append(ips, in.IP)
	}
	return ips
}

// statusWorker writes status.loadBalancer.ingress. It writes only when the Service's
// status differs from what kubal computed, with the cached resourceVersion as a
// precondition: two LVS hosts computing the same VIPs (allocation is deterministic,
// and an allocation in status is kept) write the same value, at most once each, and
// a write based on a stale object fails with a conflict and is retried on the new one.
func (s *Services) statusWorker(ctx context.Context) {
	for {
		key, quit := s.queue.Get()
		if quit {
			return
		}
		err := s.writeStatus(ctx, key)
		switch {
		case err == nil:
			s.queue.Forget(key)
		case ctx.Err() != nil:
		case apierrors.IsConflict(err):
			// The other LVS host (or anyone) changed the Service since our cache saw
			// it: retry on the newer object, which most likely has the same VIP.
			s.log.Debug("Service status write conflicted; retrying on the newer object", "service", key)
			s.queue.AddRateLimited(key)
		default:
			s.log.Warn("cannot write Service status", "service", key, "err", err)
			s.queue.AddRateLimited(key)
		}
		s.queue.Done(key)
	}
}

func (s *Services) writeStatus(ctx context.Context, key string) error {
	s.statusMu.Lock()
	ips, ok := s.want[key]
	s.statusMu.Unlock()
	obj, exists, _ := s.svcStore.GetByKey(key)
	svc, isSvc := obj.(*corev1.Service)
	if !ok || !exists || !isSvc {
		return nil
	}
	if slices.Equal(ingressIPs(svc), ips) {
		return nil
	}
	ingress := make([]map[string]string, len(ips))
	for i, ip := range ips {
		ingress[i] = map[string]string{"ip": ip}
	}
	var ing any = ingress
	if len(ips) == 0 {
		ing = nil
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": svc.ResourceVersion},
		"status":   map[string]any{"loadBalancer": map[string]any{"ingress": ing}},
	})
	if err != nil {
		return err
	}
	_, err = s.client.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "kubal"}, "status")
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		s.log.Info("Service status written", "service", key, "ingress", ips)
	}
	return err
}

// trimService keeps what ownership, VIPs, ports and status need.
func trimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	t := &corev1.Service{}
	t.Name, t.Namespace, t.UID, t.ResourceVersion = svc.Name, svc.Namespace, svc.UID, svc.ResourceVersion
	t.CreationTimestamp = svc.CreationTimestamp
	for k, v := range svc.Annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	sp := &svc.Spec
	t.Spec = corev1.ServiceSpec{Type: sp.Type, Ports: sp.Ports, LoadBalancerClass: sp.LoadBalancerClass,
		LoadBalancerIP: sp.LoadBalancerIP, IPFamilies: sp.IPFamilies, ExternalTrafficPolicy: sp.ExternalTrafficPolicy,
		HealthCheckNodePort: sp.HealthCheckNodePort}
	t.Status.LoadBalancer = svc.Status.LoadBalancer
	return t, nil
}

// serviceDirty collects changed keys from informer handlers.
type serviceDirty struct {
	mu                  sync.Mutex
	svcs, slices, nodes map[string]struct{}
	pods                map[string]struct{}
	since               time.Time
	poke                chan struct{}
}

func newServiceDirty() *serviceDirty {
	return &serviceDirty{svcs: map[string]struct{}{}, slices: map[string]struct{}{}, nodes: map[string]struct{}{},
		pods: map[string]struct{}{}, poke: make(chan struct{}, 1)}
}

func (d *serviceDirty) add(res, key string) {
	d.mu.Lock()
	if d.since.IsZero() {
		d.since = time.Now()
	}
	switch res {
	case resServices:
		d.svcs[key] = struct{}{}
	case resEndpointSlices:
		d.slices[key] = struct{}{}
	case resPods:
		d.pods[key] = struct{}{}
	default:
		d.nodes[key] = struct{}{}
	}
	d.mu.Unlock()
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

func (d *serviceDirty) take() (svcs, sl, nodes, pods []string, since time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	since, d.since = d.since, time.Time{}
	svcs, sl, nodes = slices.Collect(maps.Keys(d.svcs)), slices.Collect(maps.Keys(d.slices)), slices.Collect(maps.Keys(d.nodes))
	pods = slices.Collect(maps.Keys(d.pods))
	clear(d.svcs)
	clear(d.slices)
	clear(d.nodes)
	clear(d.pods)
	return svcs, sl, nodes, pods, since
}

// applyPods folds changed critical Pods into the per-node counts and returns the
// nodes whose count changed (every node set holding them is recomputed).
func (s *Services) applyPods(st *servicesState, full bool, keys []string) []string {
	if full {
		keys = slices.Collect(maps.Keys(st.podContrib))
		for i, store := range st.pods {
			for _, k := range store.ListKeys() {
				keys = append(keys, strconv.Itoa(i)+"|"+k)
			}
		}
	}
	var nodes []string
	for _, key := range keys {
		if old, ok := st.podContrib[key]; ok {
			if old.ready {
				st.critical[old.entry][old.node]--
				if st.critical[old.entry][old.node] <= 0 {
					delete(st.critical[old.entry], old.node)
				}
			}
			nodes = append(nodes, old.node)
			delete(st.podContrib, key)
		}
		idx, k, _ := strings.Cut(key, "|")
		i, err := strconv.Atoi(idx)
		if err != nil || i < 0 || i >= len(st.pods) {
			continue
		}
		obj, ok, _ := st.pods[i].GetByKey(k)
		pod, isPod := obj.(*corev1.Pod)
		if !ok || !isPod || pod.Spec.NodeName == "" {
			continue
		}
		c := podContrib{entry: i, node: pod.Spec.NodeName, ready: podReady(pod)}
		st.podContrib[key] = c
		if c.ready {
			st.critical[i][c.node]++
		}
		nodes = append(nodes, c.node)
	}
	return nodes
}

// podReady: Running, Ready, not being deleted.
func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// criticalName is how a reason names a critical-pods entry: the value of a
// single-label selector ("calico-node" for k8s-app=calico-node), else the selector.
func criticalName(c config.CriticalPods) string {
	sel, err := labels.Parse(c.Selector)
	if err == nil {
		if reqs, _ := sel.Requirements(); len(reqs) == 1 && reqs[0].Values().Len() == 1 {
			return c.Namespace + "/" + reqs[0].Values().List()[0]
		}
	}
	return c.String()
}

// trimPod keeps what podReady reads.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &corev1.Pod{}
	t.Name, t.Namespace, t.UID, t.ResourceVersion, t.DeletionTimestamp = p.Name, p.Namespace, p.UID, p.ResourceVersion, p.DeletionTimestamp
	t.Spec.NodeName = p.Spec.NodeName
	t.Status.Phase = p.Status.Phase
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			t.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return t, nil
}
