package conftool

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/source"
)

// defaultOverlayGrace is how long an overlay holds the inner source's first set while
// waiting for its first etcd read, so admin-depooled servers are not pooled at start.
// After it the inner set goes out ungated (and the etcd failure is reported).
const defaultOverlayGrace = 10 * time.Second

// Overlay gates the servers of another source with conftool keys
// (`conftool = dc/cluster/service` on a service whose servers come from elsewhere).
type Overlay struct {
	inner source.Source
	w     *watcher
	log   *slog.Logger
	grace time.Duration
}

// NewOverlay returns inner's servers gated by the keys under keyPrefix: a missing key
// leaves a server as inner says; pooled=no disables it, pooled=inactive removes it,
// pooled=yes leaves inner's verdict, and a weight in the value overrides inner's.
// Failed is reported while either inner or etcd fails; on an etcd outage the last
// known keys keep gating.
func NewOverlay(inner source.Source, cli *clientv3.Client, keyPrefix string, log *slog.Logger, m *Metrics) source.Source {
	w := newWatcher(cli, keyPrefix, log, m)
	return &Overlay{inner: inner, w: w, log: w.log, grace: defaultOverlayGrace}
}

// gate applies the conftool entries to inner's set.
func gate(inner source.Set, keys map[string]entry) source.Set {
	out := make(source.Set, len(inner))
	for host, srv := range inner {
		e, ok := keys[host]
		if !ok {
			out[host] = srv
			continue
		}
		if e.pooled != nil {
			switch p := *e.pooled; p {
			case PooledInactive:
				continue
			case PooledYes:
			default:
				srv.Enabled, srv.Reason = false, "conftool: pooled="+p
			}
		}
		if e.weight != nil {
			srv.Weight = *e.weight
		}
		out[host] = srv
	}
	return out
}

// mailbox keeps only the latest value put into it and signals that one is waiting.
type mailbox[T any] struct {
	mu    sync.Mutex
	v     T
	full  bool
	ready chan struct{}
}

func newMailbox[T any]() *mailbox[T] { return &mailbox[T]{ready: make(chan struct{}, 1)} }

func (b *mailbox[T]) put(v T) {
	b.mu.Lock()
	b.v, b.full = v, true
	b.mu.Unlock()
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

func (b *mailbox[T]) take() (T, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.v, b.full
	var zero T
	b.v, b.full = zero, false
	return v, ok
}

// optErr carries a Failed report (nil = recovered) through a mailbox.
type optErr struct{ err error }

type boxEvents struct {
	sets *mailbox[source.Set]
	errs *mailbox[optErr]
}

func (e boxEvents) Update(s source.Set) { e.sets.put(s.Clone()) }
func (e boxEvents) Failed(err error)    { e.errs.put(optErr{err}) }

// keyTable keeps the overlay's decoded keys; a malformed value keeps the previous entry.
type keyTable struct {
	keys map[string]entry
	box  *mailbox[map[string]entry] // a copy of keys after each change
	errs *mailbox[optErr]
}

func (k *keyTable) reset(kvs []kv) {
	next := make(map[string]entry, len(kvs))
	for _, x := range kvs {
		if x.malformed {
			if prev, ok := k.keys[x.host]; ok {
				next[x.host] = prev
			}
			continue
		}
		next[x.host] = x.e
	}
	k.keys = next
	k.box.put(maps.Clone(k.keys))
}

func (k *keyTable) apply(kvs []kv) {
	for _, x := range kvs {
		switch {
		case x.deleted:
			delete(k.keys, x.host)
		case x.malformed:
		default:
			k.keys[x.host] = x.e
		}
	}
	k.box.put(maps.Clone(k.keys))
}

func (k *keyTable) failed(err error) { k.errs.put(optErr{err}) }

// Run implements source.Source.
func (o *Overlay) Run(ctx context.Context, ev source.Events) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	inner := boxEvents{sets: newMailbox[source.Set](), errs: newMailbox[optErr]()}
	etcdErrs := newMailbox[optErr]()
	kt := &keyTable{keys: map[string]entry{}, box: newMailbox[map[string]entry](), errs: etcdErrs}
	wg.Go(func() { _ = o.inner.Run(ctx, inner) })
	if pr, ok := ev.(source.ProblemReporter); ok {
		o.w.report = pr.Problems
	}
	wg.Go(func() { o.w.run(ctx, kt) })

	var (
		innerSet          source.Set
		keys              map[string]entry
		innerErr, etcdErr error
		reported          error
		sent              source.Set
	)
	graceUp := time.NewTimer(o.grace)
	defer graceUp.Stop()
	graceOver := false

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-inner.sets.ready:
		case <-inner.errs.ready:
		case <-etcdErrs.ready:
		case <-kt.box.ready:
		case <-graceUp.C:
			graceOver = true
			if keys == nil {
				o.log.Warn("conftool: no etcd read yet, the overlay passes the source's servers ungated", "grace", o.grace)
			}
		}
		if s, ok := inner.sets.take(); ok {
			innerSet = s
		}
		if e, ok := inner.errs.take(); ok {
			innerErr = e.err
		}
		if e, ok := etcdErrs.take(); ok {
			etcdErr = e.err
		}
		if k, ok := kt.box.take(); ok {
			keys = k
		}

		combined := errors.Join(innerErr, etcdErr)
		if (combined == nil) != (reported == nil) || (combined != nil && combined.Error() != reported.Error()) {
			ev.Failed(combined)
			reported = combined
		}
		if innerSet == nil || (keys == nil && !graceOver) {
			continue
		}
		out := gate(innerSet, keys)
		if sent == nil || !maps.Equal(sent, out) {
			sent = out
			ev.Update(out.Clone())
		}
	}
}
