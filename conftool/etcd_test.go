package conftool

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"

	"github.com/kubal/kubal/internal/testutil"
)

// Real etcd servers for the tests: go.etcd.io/etcd/server/v3/embed, in-process, on
// loopback ports, data in t.TempDir(). A 3-member cluster is three embed servers.

type member struct {
	name      string
	dir       string
	clientURL url.URL
	peerURL   url.URL
	cluster   string // initial-cluster
	noFsync   bool
	tls       *transport.TLSInfo // client TLS (the client URL must be https)
	e         *embed.Etcd
}

func newMembers(tb testing.TB, n int) []*member {
	tb.Helper()
	ms := make([]*member, n)
	var cluster []string
	ports := testutil.FreePorts(tb, 2*n)
	for i := range ms {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       tb.TempDir(),
			clientURL: url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i])},
			peerURL:   url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])},
		}
		ms[i] = m
		cluster = append(cluster, m.name+"="+m.peerURL.String())
	}
	for _, m := range ms {
		m.cluster = strings.Join(cluster, ",")
	}
	return ms
}

// start starts (or restarts, on the same data dir and ports) the member; it does not
// wait for readiness (a cluster member is ready only once a quorum runs).
func (m *member) start(tb testing.TB) {
	tb.Helper()
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.InitialCluster = m.cluster
	cfg.InitialClusterToken = "kubal-conftool-test"
	cfg.ClusterState = embed.ClusterStateFlagNew
	// Faster elections than the 100 ms / 1 s defaults keep the fault tests short, while
	// staying well above scheduling noise on a shared 2-core machine.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.UnsafeNoFsync = m.noFsync
	if m.tls != nil {
		cfg.ClientTLSInfo = *m.tls
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	var err error
	m.e, err = embed.StartEtcd(cfg)
	if err != nil {
		tb.Fatalf("start etcd %s: %v", m.name, err)
	}
}

func (m *member) waitReady(tb testing.TB) {
	tb.Helper()
	select {
	case <-m.e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		tb.Fatalf("etcd %s not ready after 20s", m.name)
	}
}

func (m *member) stop() {
	if m.e != nil {
		m.e.Close()
		m.e = nil
	}
}

func (m *member) isLeader() bool {
	return m.e != nil && m.e.Server.Leader() == m.e.Server.MemberID()
}

// startCluster starts n members and waits until all are ready.
func startCluster(tb testing.TB, n int) []*member {
	tb.Helper()
	ms := newMembers(tb, n)
	for _, m := range ms {
		m.start(tb)
		tb.Cleanup(m.stop)
	}
	for _, m := range ms {
		m.waitReady(tb)
	}
	return ms
}

// startEtcd starts one embedded server.
func startEtcd(tb testing.TB) *member {
	tb.Helper()
	return startCluster(tb, 1)[0]
}

func newClient(tb testing.TB, ms ...*member) *clientv3.Client {
	tb.Helper()
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.clientURL.Host)
	}
	cli, err := NewClient(config.Global{}, eps, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

func testLog(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// recorder is a source.Events that keeps everything it is told.
type recorder struct {
	mu      sync.Mutex
	sets    []source.Set
	setAt   []time.Time
	errs    []error
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Update(s source.Set) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, s)
	r.setAt = append(r.setAt, time.Now())
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) Failed(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) snapshot() (sets []source.Set, errs []error, changed chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]source.Set(nil), r.sets...), append([]error(nil), r.errs...), r.changed
}

func (r *recorder) last() (source.Set, bool) {
	sets, _, _ := r.snapshot()
	if len(sets) == 0 {
		return nil, false
	}
	return sets[len(sets)-1], true
}

// waitSet waits until the latest set satisfies ok and returns it.
func (r *recorder) waitSet(tb testing.TB, timeout time.Duration, what string, ok func(source.Set) bool) source.Set {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		sets, _, changed := r.snapshot()
		if len(sets) > 0 && ok(sets[len(sets)-1]) {
			return sets[len(sets)-1]
		}
		select {
		case <-changed:
		case <-deadline:
			var last source.Set
			if len(sets) > 0 {
				last = sets[len(sets)-1]
			}
			tb.Fatalf("after %v: no set with %s; last set: %v", timeout, what, last)
		}
	}
}

// waitErr waits until the latest Failed report satisfies ok.
func (r *recorder) waitErr(tb testing.TB, timeout time.Duration, what string, ok func(error) bool) {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		_, errs, changed := r.snapshot()
		if len(errs) > 0 && ok(errs[len(errs)-1]) {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("after %v: no Failed report with %s; reports: %v", timeout, what, errs)
		}
	}
}

// run starts src in the background; the test's cleanup stops it and waits.
func run(tb testing.TB, src source.Source, ev source.Events) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := src.Run(ctx, ev); err != nil {
			tb.Errorf("Run: %v", err)
		}
	}()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			tb.Errorf("source did not stop within 10s of cancel")
		}
	})
}

func put(tb testing.TB, cli *clientv3.Client, key, val string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, val); err != nil {
		tb.Fatalf("put %s: %v", key, err)
	}
}

func del(tb testing.TB, cli *clientv3.Client, key string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Delete(ctx, key); err != nil {
		tb.Fatalf("delete %s: %v", key, err)
	}
}

// fastWatcher shortens a source's timing for tests.
func fastWatcher(w *watcher) {
	w.healthEvery = 200 * time.Millisecond
	w.healthTimeout = 300 * time.Millisecond
	w.backoffMin = 50 * time.Millisecond
	w.backoffMax = 400 * time.Millisecond
	w.readTimeout = 2 * time.Second
}

func srv(host string, enabled bool, weight int) source.Server {
	s := source.Server{Host: host, Enabled: enabled, Weight: weight}
	if !enabled {
		s.Reason = "conftool: pooled=no"
	}
	return s
}
