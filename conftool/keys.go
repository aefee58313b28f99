package conftool

import (
	"context"
	"log/slog"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// KeySet is the state of a pool's keys at one etcd revision. Err is the current read
// failure (nil when healthy): Keys are then the last known ones.
type KeySet struct {
	Revision int64
	Loaded   bool // the keys were read at least once (else Keys is empty and Err says why)
	Keys     map[string]Key
	Err      error
	// Problems maps a host whose value is malformed to why (it keeps its previous key).
	Problems map[string]string
}

// Keys watches a pool's keys for their admin meaning (pooled, weight), reporting each
// new state with the revision it reflects, so a writer can wait for its own write.
type Keys struct {
	w *watcher
}

// NewKeys returns a watcher of the keys under keyPrefix.
func NewKeys(cli *clientv3.Client, keyPrefix string, log *slog.Logger, m *Metrics) *Keys {
	return &Keys{w: newWatcher(cli, keyPrefix, log, m)}
}

// Run reports to out until ctx is done. Calls come from one goroutine; out must not
// block for long.
func (k *Keys) Run(ctx context.Context, out func(KeySet)) {
	h := &keyHandler{out: out, keys: map[string]Key{}}
	k.w.report = func(p map[string]string) { h.problems = p }
	k.w.run(ctx, h)
}

type keyHandler struct {
	out      func(KeySet)
	keys     map[string]Key
	err      error
	problems map[string]string
	rev      int64
	read     bool
}

func (h *keyHandler) reset(kvs []kv) {
	next := make(map[string]Key, len(kvs))
	for _, x := range kvs {
		if x.malformed {
			if prev, ok := h.keys[x.host]; ok {
				next[x.host] = prev
			}
			continue
		}
		next[x.host] = x.e.key()
	}
	h.keys = next
	h.read = true
}

func (h *keyHandler) apply(kvs []kv) {
	for _, x := range kvs {
		switch {
		case x.deleted:
			delete(h.keys, x.host)
		case !x.malformed:
			h.keys[x.host] = x.e.key()
		}
	}
}

func (h *keyHandler) failed(err error) {
	h.err = err
	h.send()
}

func (h *keyHandler) at(rev int64) {
	h.rev = rev
	h.send()
}

func (h *keyHandler) send() {
	h.out(KeySet{Revision: h.rev, Loaded: h.read, Keys: maps.Clone(h.keys), Err: h.err, Problems: maps.Clone(h.problems)})
}
