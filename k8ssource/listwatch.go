package k8ssource

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"
)

const (
	// retryEvery (plus up to as much again of jitter) is how often a List or Watch
	// is retried while the API server is unreachable or overloaded: a change reaches
	// kubal within about a second of the API server answering again, for 1-2
	// requests/s per informer during an outage (the [k8s-services] controller has 3,
	// plus one per critical-pods entry; each k8s:// service 1 or 2), per LVS host.
	retryEvery = 500 * time.Millisecond
	// resumeQuiet: a watch resumed after an outage counts as a resync when its first
	// event is not an error, or when it stays quiet this long (the API server sends a
	// "too old resource version" at once, before any other event).
	resumeQuiet = time.Second
	// resumeFor is how long a broken watch is resumed before kubal relists instead.
	// A blip costs no relist; a real outage ends with a List (or watch-list) that
	// succeeds as soon as the API server answers, rather than with a resumed watch
	// that a restarted API server answers "too old resource version", after which
	// client-go relists only after its backoff (0.8-1.6 s, doubling on every
	// outage within 2 minutes).
	resumeFor = 2 * time.Second
)

// retryLW is the ListerWatcher of every kubal informer. It exists because of
// client-go's reflector backoff (800 ms doubling to 30 s with jitter 1.0, reset at
// most every 2 minutes), which shared informers do not let us configure: after a 20 s
// outage a reflector waited up to a minute before it even tried again. Here a List or
// Watch that fails at the connection level (refused, reset, timeout, EOF) or with a
// 5xx or 429 is retried in place every 0.5-1 s until it succeeds or ctx ends, so the
// reflector's backoff takes at most one step per outage (resumeFor), while the API
// server is still down. Anything else goes to the reflector unchanged: a 410 Gone / too old resource version must make it relist,
// and 401/403/404 are configuration errors the operator must see.
//
// It is also where health is decided: a failure is recorded at once; "answering
// again" only once a List succeeded, a watch-list stream delivered its initial state,
// or a resumed Watch turned out not to be expired. A 200 whose stream carries a 410
// is not a resync: client-go relists after it, and /alerts must not clear before.
type retryLW struct {
	res   string
	list  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
	h     *health
	// noWatchList is the client's answer to "does it not support watch-list?"
	// (the fake clientset does not).
	noWatchList bool
	// retryEvery, resumeQuiet, resumeFor; tests shorten them.
	every, quiet, resume time.Duration
}

var _ cache.ListerWatcherWithContext = (*retryLW)(nil)

func newRetryLW(res string, h *health, client any,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)) *retryLW {
	return &retryLW{
		res: res, list: list, watch: watch, h: h,
		noWatchList: watchlist.DoesClientNotSupportWatchListSemantics(client),
		every:       retryEvery, quiet: resumeQuiet, resume: resumeFor,
	}
}

// IsWatchListSemanticsUnSupported tells the reflector whether it may stream the
// initial state (watch-list) instead of a List.
func (l *retryLW) IsWatchListSemanticsUnSupported() bool { return l.noWatchList }

// List is the deprecated context-free form (the reflector uses ListWithContext).
func (l *retryLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return l.ListWithContext(context.Background(), opts)
}

// Watch is the deprecated context-free form (the reflector uses WatchWithContext).
func (l *retryLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return l.WatchWithContext(context.Background(), opts)
}

func (l *retryLW) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	for {
		obj, err := l.list(ctx, opts)
		if err == nil {
			l.h.set(l.res, nil)
			return obj, nil
		}
		if !l.failed(ctx, err) {
			return nil, err
		}
	}
}

func (l *retryLW) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	initial := opts.SendInitialEvents != nil && *opts.SendInitialEvents
	start := time.Now()
	for {
		w, err := l.watch(ctx, opts)
		if err == nil {
			if !initial && l.h.ok(l.res) {
				return w, nil // the common case: a watch renewed while all is well
			}
			return l.observe(w, initial), nil
		}
		if !l.failed(ctx, err) {
			return nil, err
		}
		if !initial && time.Since(start) >= l.resume {
			// Not a 410 (the reflector would take it for one) nor a refusal (it
			// would back off and resume the watch): an error that makes it relist.
			return nil, &relistError{res: l.res, cause: err.Error()}
		}
	}
}

// relistError ends a watch that could not be resumed: the reflector relists (through
// ListWithContext, which waits for the API server). It wraps nothing on purpose:
// client-go would treat a wrapped "connection refused" as a reason to resume.
type relistError struct{ res, cause string }

func (e *relistError) Error() string {
	return fmt.Sprintf("%s watch: API server unreachable (%s): relisting when it answers", e.res, e.cause)
}

// failed records err and, when it is worth retrying here, waits; false: hand err to
// the reflector.
func (l *retryLW) failed(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if !isExpired(err) {
		l.h.set(l.res, fmt.Errorf("%s list/watch: %w", l.res, err))
	}
	if !transient(err) {
		return false
	}
	t := time.NewTimer(l.every + rand.N(l.every+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// transient: the API server is unreachable, restarting or overloaded.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		c := st.Status().Code
		return c == 429 || c >= 500
	}
	var op *net.OpError
	var dns *net.DNSError
	return errors.As(err, &op) || errors.As(err, &dns) ||
		utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) || utilnet.IsProbableEOF(err) ||
		utilnet.IsTimeout(err) || utilnet.IsHTTP2ConnectionLost(err)
}

func isExpired(err error) bool {
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

// observe passes a watch through, deciding from its first events whether the API
// server answered: initial (watch-list) streams on their end-of-initial-events
// bookmark, resumed ones on their first non-error event or after resumeQuiet. An
// error event is recorded (a 410 leaves the failure in force: the relist decides).
func (l *retryLW) observe(in watch.Interface, initial bool) watch.Interface {
	w := &observedWatch{in: in, out: make(chan watch.Event), stop: make(chan struct{})}
	go func() {
		defer close(w.out)
		decided := false
		var quiet <-chan time.Time
		if !initial {
			t := time.NewTimer(l.quiet)
			defer t.Stop()
			quiet = t.C
		}
		for {
			select {
			case <-w.stop:
				return
			case <-quiet:
				quiet = nil
				if !decided {
					decided = true
					l.h.set(l.res, nil)
				}
			case ev, ok := <-in.ResultChan():
				if !ok {
					return
				}
				if !decided {
					switch {
					case ev.Type == watch.Error:
						decided = true
						if err := apierrors.FromObject(ev.Object); !isExpired(err) {
							l.h.set(l.res, fmt.Errorf("%s watch: %w", l.res, err))
						}
					case !initial:
						decided = true
						l.h.set(l.res, nil)
					case ev.Type == watch.Bookmark && isInitialEnd(ev.Object):
						decided = true
						l.h.set(l.res, nil)
					}
				}
				select {
				case w.out <- ev:
				case <-w.stop:
					return
				}
			}
		}
	}()
	return w
}

func isInitialEnd(obj runtime.Object) bool {
	m, ok := obj.(metav1.Object)
	return ok && m.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true"
}

// observedWatch forwards a watch's events through observe's goroutine.
type observedWatch struct {
	in   watch.Interface
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

func (w *observedWatch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		w.in.Stop()
	})
}

func (w *observedWatch) ResultChan() <-chan watch.Event { return w.out }

// newInformer is a shared index informer on a retryLW (client-go's informer
// factories build their own ListerWatcher, which we must replace).
func newInformer(lw *retryLW, obj runtime.Object) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformerWithOptions(lw, obj, cache.SharedIndexInformerOptions{ObjectDescription: lw.res})
}

// runInformers runs the informers until ctx ends; the returned func waits for them
// (call it after cancelling ctx).
func runInformers(ctx context.Context, infs []cache.SharedIndexInformer) (wait func()) {
	var wg sync.WaitGroup
	for _, inf := range infs {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	return wg.Wait
}

// The ListerWatchers of kubal's informers: the typed client, as client-go's informer
// factories call it, with our selectors.

func nodesLW(c kubernetes.Interface, h *health, selector string) *retryLW {
	api := c.CoreV1().Nodes()
	return newRetryLW(resNodes, h, c,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return api.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return api.Watch(ctx, o)
		})
}

func sliceLW(c kubernetes.Interface, h *health, namespace, selector string) *retryLW {
	api := c.DiscoveryV1().EndpointSlices(namespace)
	return newRetryLW(resEndpointSlices, h, c,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return api.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return api.Watch(ctx, o)
		})
}

func servicesLW(c kubernetes.Interface, h *health) *retryLW {
	api := c.CoreV1().Services(metav1.NamespaceAll)
	return newRetryLW(resServices, h, c,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return api.List(ctx, o) },
		api.Watch)
}

func podsLW(c kubernetes.Interface, h *health, namespace, selector string) *retryLW {
	api := c.CoreV1().Pods(namespace)
	return newRetryLW(resPods, h, c,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return api.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return api.Watch(ctx, o)
		})
}
