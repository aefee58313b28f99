package conftool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Timing of the watch loop. Fields of watcher so tests can shorten them.
const (
	defaultReadTimeout   = 5 * time.Second
	defaultHealthEvery   = 2 * time.Second
	defaultHealthTimeout = 2 * time.Second
	defaultBackoffMin    = 100 * time.Millisecond
	defaultBackoffMax    = 5 * time.Second
)

// kv is one key's decoded state as the watcher saw it.
type kv struct {
	host      string
	e         entry
	deleted   bool
	malformed bool   // could not be decoded: keep the host's previous state
	problem   string // why it is malformed (with malformed)
}

// handler consumes what a watcher reads. Calls come from the watcher's goroutine.
type handler interface {
	reset(kvs []kv) // a full read: every host not in kvs is gone
	apply(kvs []kv) // the events of one watch response, in order
	failed(err error)
}

// revisionHandler is a handler that wants the etcd revision its state reflects, after
// each full read and each watch response.
type revisionHandler interface {
	at(rev int64)
}

// errCompacted: the watch's start revision was compacted away; a full read is needed.
var errCompacted = errors.New("watch revision compacted")

// errUnhealthy wraps a failed liveness probe (etcd unreachable, no leader).
type errUnhealthy struct{ err error }

func (e errUnhealthy) Error() string { return "etcd unreachable: " + e.err.Error() }
func (e errUnhealthy) Unwrap() error { return e.err }

// watcher reads a key prefix, then watches it from the next revision. On compaction it
// re-reads at once; on an etcd failure it reports it, keeps the last state (it simply
// does not call reset) and re-reads with exponential backoff until etcd answers.
type watcher struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
	m      *Metrics

	readTimeout   time.Duration
	healthEvery   time.Duration
	healthTimeout time.Duration
	backoffMin    time.Duration
	backoffMax    time.Duration
	now           func() time.Time
	afterRead     func(rev int64) // test hook: runs between the full read and the watch

	// bad is the set of keys whose current value is malformed (host -> problem);
	// report, when set, receives it whenever it changes.
	bad    map[string]string
	report func(map[string]string)
}

// track keeps the malformed-key set current: a full read replaces it, an event for a
// host sets or clears its entry.
func (w *watcher) track(kvs []kv, full bool) {
	next := map[string]string{}
	if !full {
		maps.Copy(next, w.bad)
	}
	for _, k := range kvs {
		if k.malformed {
			next[k.host] = k.problem
		} else {
			delete(next, k.host)
		}
	}
	if maps.Equal(next, w.bad) {
		return
	}
	w.bad = next
	if w.report != nil {
		w.report(maps.Clone(next))
	}
}

func newWatcher(cli *clientv3.Client, prefix string, log *slog.Logger, m *Metrics) *watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &watcher{
		cli: cli, prefix: prefix, log: log.With("prefix", prefix), m: m,
		readTimeout:   defaultReadTimeout,
		healthEvery:   defaultHealthEvery,
		healthTimeout: defaultHealthTimeout,
		backoffMin:    defaultBackoffMin,
		backoffMax:    defaultBackoffMax,
		now:           time.Now,
	}
}

func (w *watcher) run(ctx context.Context, h handler) {
	var failing error // the failure last reported to h, nil when healthy
	fail := func(err error) {
		w.m.setConnected(w.prefix, false)
		if failing == nil || failing.Error() != err.Error() {
			w.log.Warn("conftool: etcd failing, keeping the last known servers", "err", err)
			h.failed(err)
		}
		failing = err
	}
	w.m.setConnected(w.prefix, false)
	defer w.m.setConnected(w.prefix, false)
	attempt := 0
	quickEnds := 0 // watches that ended (not by compaction) soon after they started
	reason := ""   // why the next read is a resync; "" for the first read
	for ctx.Err() == nil {
		rev, err := w.read(ctx, h)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fail(err)
			if !sleep(ctx, w.backoff(attempt)) {
				return
			}
			attempt++
			continue
		}
		if reason != "" {
			w.m.resync(w.prefix, reason)
			w.log.Info("conftool: full re-read", "reason", reason, "revision", rev)
		}
		if failing != nil {
			w.log.Info("conftool: etcd back", "revision", rev)
			failing = nil
			h.failed(nil)
		}
		attempt = 0
		w.m.setConnected(w.prefix, true)
		started := w.now()
		err = w.watch(ctx, h, rev+1)
		if ctx.Err() != nil {
			return
		}
		var unhealthy errUnhealthy
		switch {
		case errors.Is(err, errCompacted):
			reason = "compacted"
			w.log.Info("conftool: watch revision compacted, re-reading", "err", err)
		case errors.As(err, &unhealthy):
			reason = "reconnect"
			fail(err)
		default:
			// A watch cancelled by the server (e.g. leader lost): re-read at once; the
			// read reports a failure if etcd really is unavailable.
			reason = "reconnect"
			w.log.Info("conftool: watch ended, re-reading", "err", err)
			// A watch that keeps failing right away must not turn into a read loop.
			if w.now().Sub(started) < w.healthEvery {
				quickEnds++
				if !sleep(ctx, w.backoff(quickEnds-1)) {
					return
				}
			} else {
				quickEnds = 0
			}
		}
	}
}

func (w *watcher) backoff(attempt int) time.Duration {
	d := w.backoffMin
	for i := 0; i < attempt && d < w.backoffMax; i++ {
		d *= 2
	}
	d = min(d, w.backoffMax)
	// Jitter (0.5..1.0 of d) so many LVS hosts do not hammer a recovering etcd together.
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// read gets every key under the prefix and hands them to h.reset.
func (w *watcher) read(ctx context.Context, h handler) (int64, error) {
	rctx, cancel := context.WithTimeout(ctx, w.readTimeout)
	defer cancel()
	resp, err := w.cli.Get(rctx, w.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", w.prefix, err)
	}
	kvs := make([]kv, 0, len(resp.Kvs))
	for _, it := range resp.Kvs {
		if k, ok := w.decode(it); ok {
			kvs = append(kvs, k)
		}
	}
	w.track(kvs, true)
	h.reset(kvs)
	w.m.event(w.prefix, w.now())
	rev := resp.Header.Revision
	if rh, ok := h.(revisionHandler); ok {
		rh.at(rev)
	}
	if w.afterRead != nil {
		w.afterRead(rev)
	}
	return rev, nil
}

// decode turns a key-value into a kv. Keys deeper than the prefix's immediate children
// are not servers (PyBal uses only the immediate children) and are skipped.
func (w *watcher) decode(it *mvccpb.KeyValue) (kv, bool) {
	host, ok := strings.CutPrefix(string(it.Key), w.prefix)
	if !ok || host == "" || strings.Contains(host, "/") {
		return kv{}, false
	}
	e, err := decodeEntry(it.Value)
	if err != nil {
		w.m.malformedValue(w.prefix)
		w.log.Warn("conftool: malformed value, the server keeps its previous state",
			"key", string(it.Key), "value", truncate(string(it.Value), 200), "err", err)
		return kv{host: host, malformed: true, problem: fmt.Sprintf("malformed conftool value at %s: %v", it.Key, err)}, true
	}
	return kv{host: host, e: e}, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// watch follows the prefix from revision from until the watch fails, the revision is
// compacted or the liveness probe fails. It returns only with an error.
func (w *watcher) watch(ctx context.Context, h handler, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := w.cli.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(from))

	// The client retries a broken watch stream forever without telling its user, so a
	// probe (a linearizable read, which also needs a leader) detects an outage.
	unhealthy := make(chan error, 1)
	go w.probe(wctx, unhealthy)

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-unhealthy:
			return errUnhealthy{err}
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch channel closed")
			}
			if resp.CompactRevision != 0 {
				return fmt.Errorf("%w: from %d, compacted at %d", errCompacted, from, resp.CompactRevision)
			}
			if err := resp.Err(); err != nil {
				return fmt.Errorf("watch %s: %w", w.prefix, err)
			}
			if len(resp.Events) == 0 {
				continue // progress notification or created response
			}
			kvs := make([]kv, 0, len(resp.Events))
			for _, ev := range resp.Events {
				switch ev.Type {
				case mvccpb.PUT:
					if k, ok := w.decode(ev.Kv); ok {
						kvs = append(kvs, k)
					}
				case mvccpb.DELETE:
					host, ok := strings.CutPrefix(string(ev.Kv.Key), w.prefix)
					if ok && host != "" && !strings.Contains(host, "/") {
						kvs = append(kvs, kv{host: host, deleted: true})
					}
				}
			}
			w.m.event(w.prefix, w.now())
			if len(kvs) > 0 {
				w.track(kvs, false)
				h.apply(kvs)
			}
			if rh, ok := h.(revisionHandler); ok {
				rh.at(resp.Header.Revision)
			}
		}
	}
}

func (w *watcher) probe(ctx context.Context, out chan<- error) {
	t := time.NewTicker(w.healthEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, w.healthTimeout)
		// One key that is not a server (the prefix itself): cheap whatever the pool size.
		_, err := w.cli.Get(pctx, w.prefix, clientv3.WithCountOnly())
		cancel()
		if err != nil && ctx.Err() == nil {
			out <- err
			return
		}
	}
}
