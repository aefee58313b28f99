package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/ipvs"

	"github.com/kubal/kubal/internal/testutil"
)

// The defects of issue 12, each through the daemon's public surface (New, Run, Apply,
// Snapshot, Reload, Alerts) with the fake kernel; the etcd ones with a real etcd.

// firstChecks waits until every server of web_80 has a result from its monitors, so
// the threshold counts real health.
func firstChecks(t *testing.T, d *Daemon) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, "first checks", func() bool {
		snap, _ := d.Snapshot("web_80")
		for _, sv := range snap.Servers {
			if len(sv.Monitors) == 0 {
				return false
			}
		}
		return len(snap.Servers) > 0
	})
}

func rewriteConf(t *testing.T, r *rig, from, to string) string {
	t.Helper()
	b, err := os.ReadFile(r.conf)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), from, to, 1)
	if err := os.WriteFile(r.conf, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func putKeys(t *testing.T, endpoint, prefix string, hosts ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	for _, h := range hosts {
		if _, err := cli.Put(context.Background(), prefix+h, `{"pooled": "yes", "weight": 10}`); err != nil {
			t.Fatal(err)
		}
	}
	return cli
}

// 1. A file:// service with conftool = dc/cluster/service: an acknowledged depool is
// in force (the server leaves IPVS), not only written to etcd.
func TestCoreConftoolOverlayDepoolIsInForce(t *testing.T) {
	r := newRig(t)
	endpoint := startEtcd(t)
	rewriteConf(t, r, "[global]\n", fmt.Sprintf("[global]\netcd-endpoints = ['%s']\n", endpoint))
	rewriteConf(t, r, "depool-threshold", "conftool = dc1/ingress/web\ndepool-threshold")
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 10*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	firstChecks(t, d)
	out, err := d.Apply(context.Background(), api.Action{Pool: "web_80", Host: "127.0.0.23", Op: api.OpDepool, Actor: "sre"})
	if err != nil {
		t.Fatal(err)
	}
	if out.New.Enabled || out.New.Pooled {
		t.Errorf("acknowledged depool not in force in the answer: %+v", out.New)
	}
	testutil.Eventually(t, 2*time.Second, "depooled in IPVS", func() bool { return len(r.ipvsDests()) == 3 })
}

// 2. A reload that switches a service's source scheme (file:// -> etcd://) returns and
// the daemon keeps answering.
func TestCoreReloadSourceSchemeChangeDoesNotHang(t *testing.T) {
	r := newRig(t)
	endpoint := startEtcd(t)
	prefix := "/conftool/v1/pools/dc1/ingress/web/"
	putKeys(t, endpoint, prefix, "127.0.0.21", "127.0.0.22")
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 10*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	rewriteConf(t, r, "config = file://"+r.list, "config = etcd://"+endpoint+prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Reload(ctx); err != nil {
		t.Fatalf("reload: %v", err)
	}
	done := make(chan struct{})
	go func() { d.Pools(); d.Alerts(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the daemon does not answer after the reload")
	}
	testutil.Eventually(t, 10*time.Second, "the etcd servers", func() bool {
		return equal(r.ipvsDests(), "127.0.0.21 w10", "127.0.0.22 w10")
	})
}

// 4. An admin write whose client went away (the request's context ended) is stored
// and in force, and later threshold checks count it.
func TestCoreCutOffAdminWriteIsInForce(t *testing.T) {
	r := newRig(t)
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 5*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	firstChecks(t, d)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the client is gone before the daemon answers
	_, err := d.Apply(ctx, api.Action{Pool: "web_80", Host: "127.0.0.23", Op: api.OpDepool, Actor: "sre"})
	if err != nil && !strings.Contains(err.Error(), "stored") {
		t.Errorf("error does not say what was stored: %v", err)
	}
	testutil.Eventually(t, 2*time.Second, "the stored depool is in force", func() bool { return !server(t, d, "127.0.0.23").Enabled })
	// 4 x 0.5 = 2 must stay: one more depool is allowed, a third is refused.
	bg := context.Background()
	if _, err := d.Apply(bg, api.Action{Pool: "web_80", Host: "127.0.0.22", Op: api.OpDepool, Actor: "sre"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Apply(bg, api.Action{Pool: "web_80", Host: "127.0.0.21", Op: api.OpDepool, Actor: "sre"}); !errors.Is(err, api.ErrThreshold) {
		t.Fatalf("a depool past the threshold: %v, want ErrThreshold", err)
	}
}

// 5. Weight 0 is a depool for the threshold.
func TestCoreWeightZeroHoldsTheThreshold(t *testing.T) {
	r := newRig(t)
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 5*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	firstChecks(t, d)
	var refused int
	for _, h := range []string{"127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"} {
		_, err := d.Apply(context.Background(), api.Action{Pool: "web_80", Host: h, Op: api.OpWeight, Weight: 0, Actor: "sre"})
		if errors.Is(err, api.ErrThreshold) {
			refused++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if refused != 2 {
		t.Errorf("%d of 4 weight-0 writes refused, want 2 (threshold 0.5)", refused)
	}
	testutil.Eventually(t, 2*time.Second, "2 weighted destinations", func() bool {
		weighted := 0
		for _, s := range r.ipvsDests() {
			if !strings.HasSuffix(s, " w0") {
				weighted++
			}
		}
		return weighted == 2
	})
}

// 7. Two LVS hosts on one etcd racing depools cannot both pass the threshold.
func TestCoreThresholdAcrossHosts(t *testing.T) {
	r := newRig(t)
	endpoint := startEtcd(t)
	prefix := "/conftool/v1/pools/dc1/ingress/web/"
	putKeys(t, endpoint, prefix, "127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24")
	conf := rewriteConf(t, r, "config = file://"+r.list, "config = etcd://"+endpoint+prefix)
	primary, _ := startDaemon(t, r)
	backupConf := r.conf + ".backup"
	bc := regexp.MustCompile(`admin_port = \d+`).ReplaceAllString(conf, fmt.Sprintf("admin_port = %d", testutil.FreePort(t)))
	bc = strings.Replace(bc, "state.json", "backup-state.json", 1)
	if err := os.WriteFile(backupConf, []byte(bc), 0o644); err != nil {
		t.Fatal(err)
	}
	backup, _ := startDaemonWith(t, backupConf, ipvs.NewFake())
	firstChecks(t, primary)
	firstChecks(t, backup)
	ctx := context.Background()
	if _, err := primary.Apply(ctx, api.Action{Pool: "web_80", Host: "127.0.0.21", Op: api.OpDepool, Actor: "sre"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 2*time.Second, "backup sees it", func() bool { return !server(t, backup, "127.0.0.21").Enabled })
	// 3 up of 4, threshold 2: one more depool may pass, not two.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, d := range []*Daemon{primary, backup} {
		host := []string{"127.0.0.22", "127.0.0.23"}[i]
		wg.Go(func() {
			_, errs[i] = d.Apply(ctx, api.Action{Pool: "web_80", Host: host, Op: api.OpDepool, Actor: "sre" + host})
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, api.ErrThreshold) && !errors.Is(err, api.ErrConflict) {
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d racing depools passed, want exactly 1: %v", ok, errs)
	}
}

// 10. A reload during admin writes - one that moves the service's source to etcd, the
// kind that deadlocked the old daemon - neither blocks the writes nor fails them with
// a timeout.
func TestCoreReloadDuringAdminWrites(t *testing.T) {
	r := newRig(t)
	r.writeConf(t, "0")
	endpoint := startEtcd(t)
	prefix := "/conftool/v1/pools/dc1/ingress/web/"
	putKeys(t, endpoint, prefix, "127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24")
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 5*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 40 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			start := time.Now()
			op := api.OpDepool
			if i%2 == 1 {
				op = api.OpPool
			}
			_, err := d.Apply(ctx, api.Action{Pool: "web_80", Host: fmt.Sprintf("127.0.0.2%d", 1+i%4), Op: op, Actor: "sre"})
			if took := time.Since(start); took > 2*time.Second {
				err = fmt.Errorf("write took %v: %v", took, err)
			}
			// While the new actor has not read etcd yet its servers are unknown (404);
			// a refusal by a racing writer is a 409. A timeout is the defect.
			if err != nil && !errors.Is(err, api.ErrConflict) && !errors.Is(err, api.ErrNotFound) {
				errs <- err
			}
		})
		if i == 10 {
			rewriteConf(t, r, "config = file://"+r.list, "config = etcd://"+endpoint+prefix)
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := d.Reload(ctx); err != nil {
					errs <- fmt.Errorf("reload: %w", err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Issue 19: an override is visible (who, when, why) and can be cleared, after which a
// later server-list weight is in force again.
func TestOverrideVisibleAndCleared(t *testing.T) {
	r := newRig(t)
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 5*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	ctx := context.Background()
	if _, err := d.Apply(ctx, api.Action{Pool: "web_80", Host: "127.0.0.24", Op: api.OpWeight, Weight: 7, Actor: "sre", Reason: "canary"}); err != nil {
		t.Fatal(err)
	}
	if o := server(t, d, "127.0.0.24").Override; !strings.HasPrefix(o, "weight 7 by sre at ") || !strings.HasSuffix(o, ": canary") {
		t.Errorf("override shown as %q", o)
	}
	// The list's own weight change is hidden by the override ...
	r.writeList(t, `{"127.0.0.21": {}, "127.0.0.22": {}, "127.0.0.23": {}, "127.0.0.24": {"weight": 3}}`)
	time.Sleep(1500 * time.Millisecond)
	if w := server(t, d, "127.0.0.24").Weight; w != 7 {
		t.Fatalf("weight %d under an override of 7", w)
	}
	// ... until the override is cleared.
	out, err := d.Apply(ctx, api.Action{Pool: "web_80", Host: "127.0.0.24", Op: api.OpClear, Actor: "sre"})
	if err != nil {
		t.Fatal(err)
	}
	if out.New.Weight != 3 || out.New.Override != "" {
		t.Errorf("after clear: %+v", out.New)
	}
	testutil.Eventually(t, 2*time.Second, "list weight in IPVS", func() bool {
		return equal(r.ipvsDests(), "127.0.0.21 w10", "127.0.0.22 w10", "127.0.0.23 w10", "127.0.0.24 w3")
	})
}

// Issue 19: adding admin-token-file and reloading starts the admin API (listeners are
// restarted by a reload that changes them).
func TestReloadStartsAdminListener(t *testing.T) {
	r := newRig(t)
	conf := rewriteConf(t, r, "admin-token-file = "+r.dir+"/tokens\n", "")
	port := regexp.MustCompile(`admin_port = (\d+)`).FindStringSubmatch(conf)[1]
	d, _ := startDaemon(t, r)
	testutil.Eventually(t, 5*time.Second, "pooled", func() bool { return len(r.ipvsDests()) == 4 })
	url := "http://127.0.0.1:" + port + "/healthz"
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("admin API answers without a token file")
	}
	rewriteConf(t, r, "[global]\n", "[global]\nadmin-token-file = "+r.dir+"/tokens\n")
	if err := d.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("admin API after the reload: %v", err)
	}
	resp.Body.Close()
	for _, a := range d.Alerts() {
		if strings.Contains(a.Msg, "restart kubal") {
			t.Errorf("alert %q: the listener change needs no restart", a.Msg)
		}
	}
}
