package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/ipvs"

	"github.com/kubal/kubal/internal/testutil"
)

// startEtcd runs a real single-member etcd on loopback.
func startEtcd(t *testing.T) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	ports := testutil.FreePorts(t, 2)
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(10 * time.Second):
		t.Fatal("etcd not ready")
	}
	return client.Host
}

// Two kubal daemons (primary and backup LVS) on one etcd: an admin depool through the
// primary is written to the conftool key (compare-and-swap, audited) and both pools
// follow it.
func TestConftoolDepoolSeenByBackupLVS(t *testing.T) {
	r := newRig(t)
	endpoint := startEtcd(t)
	prefix := "/conftool/v1/pools/dc1/ingress/web/"
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, h := range []string{"127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"} {
		if _, err := cli.Put(ctx, prefix+h, `{"pooled": "yes", "weight": 10}`); err != nil {
			t.Fatal(err)
		}
	}
	conf, err := os.ReadFile(r.conf)
	if err != nil {
		t.Fatal(err)
	}
	etcdConf := strings.Replace(string(conf), "config = file://"+r.list, "config = etcd://"+endpoint+prefix, 1)
	if err := os.WriteFile(r.conf, []byte(etcdConf), 0o644); err != nil {
		t.Fatal(err)
	}
	primary, _ := startDaemon(t, r)
	// The backup LVS: same pools, its own admin port and state file.
	backupConf := r.conf + ".backup"
	bc := regexp.MustCompile(`admin_port = \d+`).ReplaceAllString(etcdConf, fmt.Sprintf("admin_port = %d", testutil.FreePort(t)))
	bc = strings.Replace(bc, "state.json", "backup-state.json", 1)
	if err := os.WriteFile(backupConf, []byte(bc), 0o644); err != nil {
		t.Fatal(err)
	}
	backupIPVS := ipvs.NewFake()
	backup, _ := startDaemonWith(t, backupConf, backupIPVS)

	for _, d := range []*Daemon{primary, backup} {
		testutil.Eventually(t, 10*time.Second, "etcd servers pooled", func() bool {
			snap, _ := d.Snapshot("web_80")
			n := 0
			for _, s := range snap.Servers {
				if s.Pooled {
					n++
				}
			}
			return n == 4
		})
	}
	start := time.Now()
	if _, err := primary.Apply(ctx, api.Action{Pool: "web_80", Host: "127.0.0.23", Op: api.OpDepool, Actor: "sre", Reason: "kernel upgrade"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 2*time.Second, "backup LVS sees the depool", func() bool {
		s := server(t, backup, "127.0.0.23")
		return !s.Enabled && !s.Pooled
	})
	t.Logf("depool through the primary seen by the backup after %v", time.Since(start))
	if s := server(t, primary, "127.0.0.23"); s.Enabled || s.Pooled {
		t.Errorf("primary %+v", s)
	}
	resp, err := cli.Get(ctx, prefix+"127.0.0.23")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v", err)
	}
	var v struct {
		Pooled string `json:"pooled"`
		Weight int    `json:"weight"`
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil || v.Pooled != "no" || v.Weight != 10 {
		t.Errorf("etcd value %s (%v)", resp.Kvs[0].Value, err)
	}
	audit, err := cli.Get(ctx, strings.TrimSuffix(prefix, "/")+".audit/", clientv3.WithPrefix())
	if err != nil || len(audit.Kvs) != 1 || !strings.Contains(string(audit.Kvs[0].Value), "kernel upgrade") {
		t.Errorf("audit records: %v %v", audit, err)
	}
	testutil.Eventually(t, 2*time.Second, "backup IPVS follows", func() bool {
		for _, p := range backupIPVS.Table() {
			return len(p.Destinations) == 3
		}
		return false
	})

	// A malformed value: the server keeps its state, /alerts says which key and why,
	// and fixing the value clears it.
	if _, err := cli.Put(ctx, prefix+"127.0.0.22", `{"pooled": yes`); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 2*time.Second, "malformed value in alerts", func() bool {
		a := primary.Alerts()
		return len(a) == 1 && strings.Contains(a[0].Msg, "127.0.0.22") && strings.Contains(a[0].Msg, prefix+"127.0.0.22")
	})
	if s := server(t, primary, "127.0.0.22"); !s.Enabled || !s.Pooled {
		t.Errorf("a malformed value changed the server: %+v", s)
	}
	if _, err := cli.Put(ctx, prefix+"127.0.0.22", `{"pooled": "yes", "weight": 10}`); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 2*time.Second, "alert cleared", func() bool { return len(primary.Alerts()) == 0 })

	// Weight through the API lands in etcd too.
	if _, err := primary.Apply(ctx, api.Action{Pool: "web_80", Host: "127.0.0.21", Op: api.OpWeight, Weight: 3, Actor: "sre"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 2*time.Second, "backup sees the weight", func() bool { return server(t, backup, "127.0.0.21").Weight == 3 })
}
