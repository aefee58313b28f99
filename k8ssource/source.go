// Package k8ssource is the k8s:// server source: the selected Kubernetes Nodes are the
// real servers of a service, each enabled only when it is fit to take traffic (Ready,
// network up, not excluded, not cordoned unless told to keep, no configured taint,
// and, with endpoints=, a usable endpoint of the gating Service on that node), with a
// reason for every "no". It watches through client-go informers, never polls.
//
// Compared with PyBal's k8s:// (SPEC §2.4, §10): PyBal polled a wrong path (/v1/nodes)
// every 60 s and compared spec.unschedulable with the string "true", so cordoned nodes
// were never skipped (SPEC §14 #9). kubal watches /api/v1/nodes and honours the boolean.
package k8ssource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"
)

const (
	resNodes          = "node"
	resEndpointSlices = "endpointslice"

	// coalesce is how long a burst of informer events is gathered into one Update: a
	// relist of thousands of objects costs one recomputation, and a single change
	// still reaches the pool well under 50 ms.
	coalesce = 10 * time.Millisecond
	// resyncSettle is how long after every informer has answered again (a List
	// succeeded, a watch-list stream ended its initial state) recovery is declared:
	// client-go applies a relist to its cache through a queue after the List returns,
	// and the full pass that goes with recovery must see it.
	resyncSettle = 100 * time.Millisecond
	// maxLoggedChanges bounds per-node change lines per Update; the rest is summarised.
	maxLoggedChanges = 20
)

// Source is a running k8s:// source. Run it once.
type Source struct {
	url    URL
	policy Policy
	log    *slog.Logger
	client kubernetes.Interface
	health *health
	m      *metrics
	// noTrim keeps whole objects in the caches: only for the side-by-side memory
	// benchmark that shows what the trim saves.
	noTrim bool
	// onDelay, when set (benchmark only), sees each event-to-Update delay.
	onDelay func(time.Duration)
}

// New parses `k8s://[context]?nodes=<label selector>&endpoints=<namespace>/<service>`
// and builds a client-go informer-based source. The client comes from g.Kubeconfig
// when set, else the in-cluster service account, else $KUBECONFIG (or
// ~/.kube/config); the URL's context, when given, selects a kubeconfig context (and so
// skips in-cluster). svc supplies the VIP family (the InternalIP family to use),
// k8s-cordoned and k8s-taints.
func New(rawURL string, g config.Global, svc *config.Service, log *slog.Logger, reg prometheus.Registerer) (source.Source, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := Policy{
		IPv6:   svc.IPv6(),
		Taints: slices.Clone(svc.K8sTaints),
		Gated:  u.Gated(),
	}
	switch svc.K8sCordoned {
	case "", CordonDepool:
	case CordonKeep:
		p.KeepCordon = true
	default:
		return nil, fmt.Errorf("service %s: k8s-cordoned = %q: want %s or %s", svc.Name, svc.K8sCordoned, CordonDepool, CordonKeep)
	}
	if p.Gated {
		p.ServiceName = u.Namespace + "/" + u.Service
	}
	cfg, err := restConfig(g, u)
	if err != nil {
		return nil, fmt.Errorf("service %s: %s: %w", svc.Name, rawURL, err)
	}
	h := newHealth()
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "kubal/k8ssource"
	// Protobuf: the API server's compact encoding, for thousands of Nodes (JSON stays
	// accepted, e.g. through proxies that only speak it).
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &transport{next: rt, h: h} })
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("service %s: %s: client: %w", svc.Name, rawURL, err)
	}
	m, err := newMetrics(reg, svc.Name)
	if err != nil {
		return nil, fmt.Errorf("service %s: metrics: %w", svc.Name, err)
	}
	return &Source{
		url:    u,
		policy: p,
		log:    log.With("source", u.String()),
		client: client,
		health: h,
		m:      m,
	}, nil
}

// restConfig finds the API server: the configured kubeconfig, in-cluster, $KUBECONFIG.
func restConfig(g config.Global, u URL) (*rest.Config, error) {
	overrides := &clientcmd.ConfigOverrides{CurrentContext: u.Context}
	if g.Kubeconfig != "" {
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: g.Kubeconfig}
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("[global] kubeconfig %s: %w", g.Kubeconfig, err)
		}
		return cfg, nil
	}
	if u.Context == "" {
		cfg, err := rest.InClusterConfig()
		if err == nil {
			return cfg, nil
		}
		if !errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		where := "$KUBECONFIG"
		if os.Getenv(clientcmd.RecommendedConfigPathEnvVar) == "" {
			where = "no [global] kubeconfig, not in a cluster, $KUBECONFIG unset; " + clientcmd.RecommendedHomeFile
		}
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return cfg, nil
}

// Run starts the informers and reports the server set until ctx is done.
//
// One goroutine (this one) calls ev: informer handlers only record which Nodes and
// EndpointSlices changed. The first change after a quiet period is applied at once;
// further changes within `coalesce` are batched into one Update (a relist of
// thousands of objects costs one), and an Update is sent only when the set changed.
// While the API server is unreachable the informer caches - and so the last set - are
// kept, and ev.Failed(err) is called once; on return the informers relist (client-go),
// the set is recomputed in full and Failed(nil) is called.
func (s *Source) Run(ctx context.Context, ev source.Events) error {
	// client-go logs contextually: its reflectors' messages go to our logger, not to
	// klog's global stderr output.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(s.log.Handler()))
	ctx, cancel := context.WithCancel(ctx)
	d := newDirty()

	nodeInf := newInformer(nodesLW(s.client, s.health, s.url.Nodes), &corev1.Node{})
	if err := s.setup(nodeInf, resNodes, trimNode, d); err != nil {
		cancel()
		return err
	}
	resources := []string{resNodes}
	synced := []cache.InformerSynced{nodeInf.HasSynced}
	infs := []cache.SharedIndexInformer{nodeInf}

	var sliceStore keyStore
	if s.url.Gated() {
		epsInf := newInformer(sliceLW(s.client, s.health, s.url.Namespace,
			labels.Set{ServiceNameLabel: s.url.Service}.String()), &discoveryv1.EndpointSlice{})
		if err := s.setup(epsInf, resEndpointSlices, trimEndpointSlice, d); err != nil {
			cancel()
			return err
		}
		resources = append(resources, resEndpointSlices)
		synced = append(synced, epsInf.HasSynced)
		infs = append(infs, epsInf)
		sliceStore = epsInf.GetStore()
	}
	stop := runInformers(ctx, infs)
	defer func() {
		cancel()
		stop() // waits for the informer goroutines
	}()

	// The first Update waits for every cache: with endpoints= gating, nodes seen before
	// their EndpointSlices would all look unusable and depool the whole service.
	syncedCh := make(chan struct{})
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			close(syncedCh)
		}
	}()

	v := newView(s.policy, s.log, nodeInf.GetStore(), sliceStore)
	var (
		sent      bool // an Update has been delivered
		inSync    bool
		failed    bool // ev.Failed(err) reported, no recovery yet
		downSince time.Time
		connected bool
		lastRun   time.Time
		timer     = time.NewTimer(time.Hour)
		armed     bool
		// settle: every informer answered again; recovery is declared when it fires.
		settle   = time.NewTimer(time.Hour)
		settling bool
	)
	timer.Stop()
	settle.Stop()
	defer timer.Stop()
	defer settle.Stop()
	s.m.connected.Set(0)

	apply := func(full bool) {
		// The window starts when the work ends, so consecutive Updates are at least
		// `coalesce` apart however long a pass takes.
		defer func() { lastRun = time.Now() }()
		nodes, slices, since := d.take()
		if full {
			nodes, slices = v.all()
		}
		changes := v.update(nodes, slices)
		if !since.IsZero() && len(changes) > 0 {
			delay := time.Since(since)
			s.m.delay.Observe(delay.Seconds())
			if s.onDelay != nil {
				s.onDelay(delay)
			}
		}
		if connected {
			s.m.lastSync.SetToCurrentTime()
		}
		if sent && len(changes) == 0 {
			return
		}
		s.logChanges(v.set, changes, !sent)
		sent = true
		ev.Update(v.set.Clone())
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-syncedCh:
			syncedCh = nil
			inSync = true
			err, answered := s.health.status(resources)
			connected = err == nil && answered
			if connected {
				s.m.connected.Set(1)
			}
			apply(true)
			if connected && failed {
				failed = false
				s.log.Info("k8s API server reachable; caches in sync", "down_for", time.Since(downSince).Round(time.Millisecond))
				ev.Failed(nil)
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
		case <-s.health.notify:
			err, answered := s.health.status(resources)
			switch {
			case err != nil:
				connected = false
				s.m.connected.Set(0)
				if settling {
					settle.Stop()
					settling = false
				}
				if !failed {
					failed = true
					downSince = time.Now()
					s.log.Warn("k8s API server unreachable or refusing; keeping the last known servers", "err", err)
					ev.Failed(fmt.Errorf("k8s source %s: %w", s.url, err))
				}
			case answered:
				if !inSync {
					break // connected once the caches are filled (syncedCh)
				}
				if failed && !settling {
					// Every informer has relisted (or resumed its watch): let client-go
					// hand the relisted objects to the caches, then recover.
					settle.Reset(resyncSettle)
					settling = true
					break
				}
				if !failed {
					connected = true
					s.m.connected.Set(1)
				}
			}
		case <-settle.C:
			settling = false
			if err, answered := s.health.status(resources); err != nil || !answered || !failed {
				break
			}
			connected = true
			s.m.connected.Set(1)
			failed = false
			s.log.Info("k8s API server reachable again; caches resynced", "down_for", time.Since(downSince).Round(time.Millisecond))
			// The relist's events are being applied as they come; a full pass now
			// confirms the state is current even where nothing changed.
			apply(true)
			ev.Failed(nil)
		}
	}
}

// setup wires one informer before it starts: memory trim, error handler, events.
func (s *Source) setup(inf cache.SharedIndexInformer, res string, trim cache.TransformFunc, d *dirty) error {
	if s.noTrim {
		trim = nil
	}
	if err := inf.SetTransform(trim); err != nil {
		return fmt.Errorf("k8s source %s: %s informer: %w", s.url, res, err)
	}
	// Replaces client-go's default handler (klog): errors go to our logger and health.
	// A closed or expired watch is routine (the reflector relists), not a failure.
	err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		if errors.Is(err, context.Canceled) || isRoutineWatchEnd(err) {
			return
		}
		s.health.set(res, fmt.Errorf("%s list/watch: %w", res, err))
	})
	if err != nil {
		return fmt.Errorf("k8s source %s: %s informer: %w", s.url, res, err)
	}
	add := func(typ string, obj any) {
		s.m.events.WithLabelValues(res, typ).Inc()
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			s.log.Warn("k8s source: object without a key", "resource", res, "err", err)
			return
		}
		d.add(res, key)
	}
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { add("add", obj) },
		UpdateFunc: func(_, obj any) { add("update", obj) },
		DeleteFunc: func(obj any) { add("delete", obj) },
	})
	if err != nil {
		return fmt.Errorf("k8s source %s: %s informer: %w", s.url, res, err)
	}
	return nil
}

func isRoutineWatchEnd(err error) bool {
	var relist *relistError
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err) || errors.As(err, &relist) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// logChanges logs what an Update changes: a summary on the first one, then one line
// per changed node (bounded).
func (s *Source) logChanges(cur source.Set, changes []change, first bool) {
	enabled := 0
	for _, srv := range cur {
		if srv.Enabled && srv.Down == "" {
			enabled++
		}
	}
	if first {
		s.log.Info("k8s source synced", "nodes", len(cur), "eligible", enabled)
		return
	}
	for i, c := range changes {
		if i == maxLoggedChanges {
			s.log.Info("k8s source: more node changes", "count", len(changes)-i, "nodes", len(cur), "eligible", enabled)
			break
		}
		switch {
		case !c.hasCurr:
			s.log.Info("k8s node removed", "host", c.host)
		case !c.hadOld:
			s.log.Info("k8s node added", "host", c.host, "enabled", c.cur.Enabled, "reason", c.cur.Reason, "down", c.cur.Down)
		default:
			s.log.Info("k8s node changed", "host", c.host, "enabled", c.cur.Enabled, "reason", c.cur.Reason, "down", c.cur.Down,
				"addr", c.cur.Addr, "weight", c.cur.Weight, "was_enabled", c.old.Enabled)
		}
	}
}

// trimNode keeps only what eligibility reads, so 5,000 Nodes (whose status carries
// image lists, capacity, node info) stay small in the informer cache.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	t := &corev1.Node{}
	t.Name = n.Name
	t.UID = n.UID
	t.ResourceVersion = n.ResourceVersion
	if v, ok := n.Labels[ExcludeLabel]; ok {
		t.Labels = map[string]string{ExcludeLabel: v}
	}
	if v, ok := n.Annotations[WeightAnnotation]; ok {
		t.Annotations = map[string]string{WeightAnnotation: v}
	}
	t.Spec.Unschedulable = n.Spec.Unschedulable
	t.Spec.Taints = n.Spec.Taints
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady || c.Type == corev1.NodeNetworkUnavailable {
			t.Status.Conditions = append(t.Status.Conditions, corev1.NodeCondition{Type: c.Type, Status: c.Status, Reason: c.Reason})
		}
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			t.Status.Addresses = append(t.Status.Addresses, a)
		}
	}
	return t, nil
}

// trimEndpointSlice keeps each endpoint's node and conditions.
func trimEndpointSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	t := &discoveryv1.EndpointSlice{AddressType: es.AddressType}
	t.Name = es.Name
	t.Namespace = es.Namespace
	t.UID = es.UID
	t.ResourceVersion = es.ResourceVersion
	t.Labels = map[string]string{ServiceNameLabel: es.Labels[ServiceNameLabel]}
	t.Endpoints = make([]discoveryv1.Endpoint, len(es.Endpoints))
	for i, ep := range es.Endpoints {
		t.Endpoints[i] = discoveryv1.Endpoint{NodeName: ep.NodeName, Conditions: ep.Conditions}
	}
	return t, nil
}

// String returns the source's URL (for logs).
func (s *Source) String() string { return s.url.String() }
