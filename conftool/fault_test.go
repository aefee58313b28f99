package conftool

import (
	"context"
	"maps"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/source"
)

// outageDuration is how long etcd stays down in TestOutage. The scenario is
// 30 s; the unit test keeps it at 3 s (the source's probe detects the loss in < 1 s
// with the test timing, so 3 s is many probe and backoff rounds). Set
// KUBAL_CONFTOOL_OUTAGE=30s to run the full-length variant.
func outageDuration(t *testing.T) time.Duration {
	if v := os.Getenv("KUBAL_CONFTOOL_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("KUBAL_CONFTOOL_OUTAGE=%q: %v", v, err)
		}
		return d
	}
	return 3 * time.Second
}

// The etcd member an LVS host talks to stops (embed server closed) while the other two
// keep the cluster up and admins change the pool; it comes back on the same data dir
// and ports. The source keeps its last known servers throughout (no Update while
// down), reports Failed(err) and watch_connected 0, then converges on the changes made
// during the outage and reports Failed(nil).
func TestOutage(t *testing.T) {
	ms := startCluster(t, 3)
	admin := newClient(t, ms[1], ms[2])
	for _, h := range []string{"a", "b", "c"} {
		put(t, admin, testPrefix+h, `{"pooled": "yes", "weight": 10}`)
	}
	reg := prometheus.NewRegistry()
	rec := newRecorder()
	s := NewSource(newClient(t, ms[0]), testPrefix, testLog(t), NewMetrics(reg)).(*Source)
	fastWatcher(s.w)
	run(t, s, rec)
	before := rec.waitSet(t, 5*time.Second, "a, b, c", func(s source.Set) bool { return len(s) == 3 })
	nBefore := len(must(rec.snapshot()))

	down := time.Now()
	ms[0].stop()
	t.Logf("embed server closed in %v", time.Since(down))
	// A bound on a hang (the report takes ~1-3 s; 5 s ran out once with 4 test
	// packages and two VMs on 2 cores).
	rec.waitErr(t, 15*time.Second, "an error", func(err error) bool { return err != nil })
	t.Logf("outage reported after %v", time.Since(down))
	if got := metricValue(t, reg, "kubal_conftool_watch_connected", "prefix", testPrefix); got != 0 {
		t.Errorf("watch_connected during the outage = %v, want 0", got)
	}
	// Changes made while this LVS host cannot see etcd.
	put(t, admin, testPrefix+"a", `{"pooled": "no", "weight": 10}`)
	del(t, admin, testPrefix+"b")
	put(t, admin, testPrefix+"d", `{"pooled": "yes", "weight": 7}`)
	time.Sleep(time.Until(down.Add(outageDuration(t))))
	if sets := must(rec.snapshot()); len(sets) != nBefore {
		t.Fatalf("Update during the outage (last known servers must stay): %v", sets[nBefore:])
	}
	if last, _ := rec.last(); !maps.Equal(last, before) {
		t.Fatalf("servers changed during the outage: %v", last)
	}

	ms[0].start(t)
	back := time.Now()
	ms[0].waitReady(t)
	t.Logf("member ready %v after the restart", time.Since(back))
	want := source.Set{"a": srv("a", false, 10), "c": srv("c", true, 10), "d": srv("d", true, 7)}
	rec.waitSet(t, 15*time.Second, "the changes made during the outage", func(s source.Set) bool { return maps.Equal(s, want) })
	rec.waitErr(t, 5*time.Second, "recovery (nil)", func(err error) bool { return err == nil })
	t.Logf("converged %v after the restart", time.Since(back))
	if got := metricValue(t, reg, "kubal_conftool_watch_connected", "prefix", testPrefix); got != 1 {
		t.Errorf("watch_connected after recovery = %v, want 1", got)
	}
	if got := metricValue(t, reg, "kubal_conftool_resyncs_total", "reason", "reconnect"); got < 1 {
		t.Errorf("resyncs_total{reason=reconnect} = %v, want >= 1", got)
	}
	// And the watch is live again.
	put(t, admin, testPrefix+"c", `{"pooled": "no", "weight": 10}`)
	rec.waitSet(t, 5*time.Second, "c depooled after recovery", func(s source.Set) bool { return !s["c"].Enabled })
}

func must[A, B, C any](a A, _ B, _ C) A { return a }

// Leader loss in a 3-member cluster: the source (a client with every endpoint) keeps
// its servers, and a write accepted by the new leader is seen.
func TestLeaderLoss(t *testing.T) {
	ms := startCluster(t, 3)
	var eps []*member
	eps = append(eps, ms...)
	cli := newClient(t, eps...)
	for _, h := range []string{"a", "b"} {
		put(t, cli, testPrefix+h, `{"pooled": "yes", "weight": 10}`)
	}
	rec := newRecorder()
	s := NewSource(newClient(t, eps...), testPrefix, testLog(t), nil).(*Source)
	fastWatcher(s.w)
	run(t, s, rec)
	rec.waitSet(t, 5*time.Second, "a, b", func(s source.Set) bool { return len(s) == 2 })

	var leader *member
	deadline := time.Now().Add(5 * time.Second)
	for leader == nil && time.Now().Before(deadline) {
		for _, m := range ms {
			if m.isLeader() {
				leader = m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if leader == nil {
		t.Fatal("no leader found")
	}
	lost := time.Now()
	leader.stop()
	t.Logf("stopped leader %s", leader.name)

	// Admin write through the surviving members; retried while they elect a new leader.
	w := NewWriter(cli, testLog(t), nil)
	no := PooledNo
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _, err := w.Apply(ctx, testPrefix, "a", Change{Pooled: &no}, "test", "leader loss")
		cancel()
		if err == nil {
			break
		}
		// A bound on a hang, not on speed: election plus the client's failover took
		// over 10 s once under a CI run's load (go test -p 4 beside the rigs).
		if time.Since(lost) > 30*time.Second {
			t.Fatalf("no write accepted 30s after leader loss: %v", err)
		}
	}
	t.Logf("write accepted %v after leader loss", time.Since(lost))
	rec.waitSet(t, 10*time.Second, "a depooled", func(s source.Set) bool { return !s["a"].Enabled })
	t.Logf("source saw it %v after leader loss", time.Since(lost))
	for i, set := range must(rec.snapshot()) {
		if len(set) != 2 {
			t.Errorf("update %d lost servers: %v", i, set)
		}
	}
	if _, errs, _ := rec.snapshot(); len(errs) > 0 && errs[len(errs)-1] != nil {
		rec.waitErr(t, 10*time.Second, "recovery", func(err error) bool { return err == nil })
	}
}
