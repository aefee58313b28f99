package conftool

import (
	"context"
	"log/slog"
	"maps"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/source"
)

// Source is the etcd:// server-list source: the immediate children of a key prefix,
// one per server, with PyBal's semantics (SPEC §2.3).
type Source struct {
	w *watcher
}

// NewSource returns the source of the servers under keyPrefix (which ends with "/").
// Semantics (SPEC §2.3): pooled yes = enabled, no = disabled but known, inactive or
// deleted = removed; weight from the value. It reads the prefix, then watches from the
// next revision; a compaction forces a full re-read; a disconnect keeps the last known
// servers, reports Failed(err), re-reads with backoff and reports Failed(nil) once back.
// A malformed value is logged with its key and that server keeps its previous state.
func NewSource(cli *clientv3.Client, keyPrefix string, log *slog.Logger, m *Metrics) source.Source {
	return &Source{w: newWatcher(cli, keyPrefix, log, m)}
}

// Run implements source.Source.
func (s *Source) Run(ctx context.Context, ev source.Events) error {
	if pr, ok := ev.(source.ProblemReporter); ok {
		s.w.report = pr.Problems
	}
	s.w.run(ctx, &serverSet{ev: ev, servers: map[string]source.Server{}})
	return nil
}

// serverSet turns watcher callbacks into Events: it merges values into the servers and
// sends Update only when the set changed (and always after the first read). Changes
// are tracked per server, so an event costs O(1) plus one copy of the set when it
// changed something (the copy is what Update hands over).
type serverSet struct {
	ev      source.Events
	servers map[string]source.Server
	sent    bool // an Update went out
	dirty   bool // servers changed since the last Update
}

func (s *serverSet) reset(kvs []kv) {
	next := make(map[string]source.Server, len(kvs))
	for _, k := range kvs {
		prev, known := s.servers[k.host]
		if k.malformed {
			if known {
				next[k.host] = prev
			}
			continue
		}
		if srv, keep := merge(prev, known, k.host, k.e); keep {
			next[k.host] = srv
		}
	}
	if !maps.Equal(next, s.servers) {
		s.dirty = true
	}
	s.servers = next
	s.publish()
}

func (s *serverSet) apply(kvs []kv) {
	for _, k := range kvs {
		prev, known := s.servers[k.host]
		switch {
		case k.malformed:
		case k.deleted:
			s.remove(k.host, known)
		default:
			srv, keep := merge(prev, known, k.host, k.e)
			switch {
			case !keep:
				s.remove(k.host, known)
			case !known || srv != prev:
				s.servers[k.host] = srv
				s.dirty = true
			}
		}
	}
	s.publish()
}

func (s *serverSet) remove(host string, known bool) {
	if known {
		delete(s.servers, host)
		s.dirty = true
	}
}

func (s *serverSet) failed(err error) { s.ev.Failed(err) }

func (s *serverSet) publish() {
	if s.sent && !s.dirty {
		return
	}
	s.sent, s.dirty = true, false
	// maps.Clone copies the table wholesale: ~10x faster than source.Set.Clone on 10k servers.
	s.ev.Update(source.Set(maps.Clone(s.servers)))
}
