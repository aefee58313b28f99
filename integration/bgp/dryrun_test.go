package bgpit

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubal/kubal/daemon"
	"github.com/kubal/kubal/logging"

	"github.com/kubal/kubal/internal/testutil"
)

// Issue 19: `kubal -n` with a production config (bgp = yes, vip-addresses = yes)
// changes nothing outside the process: BIRD sees no session and no route, and the VIP
// is not added; with --dryrun-bgp (DryRunBGP) the session opens and the VIP is
// announced, which shows the test can see a session.
func TestDryRunOpensNoBGPSession(t *testing.T) {
	needRig(t)
	for _, tt := range []struct {
		name      string
		dryRunBGP bool
	}{{"kubal -n", false}, {"kubal -n --dryrun-bgp", true}} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6})
			dir := t.TempDir()
			list := filepath.Join(dir, "servers.json")
			if err := os.WriteFile(list, []byte(`{"10.0.0.50": {}}`), 0o644); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "pybal.conf")
			if err := os.WriteFile(conf, fmt.Appendf(nil, `[global]
bgp = yes
bgp-local-asn = %d
bgp-peer-address = %s
bgp-local-ips = ['%s']
bgp-nexthop-ipv4 = %s
vip-addresses = yes
state-file = %s/state.json

[web_80]
protocol = tcp
ip = 192.0.2.77
port = 80
scheduler = wrr
config = file://%s
monitors = []
`, localASN, r.addr, speakerAddr, speakerAddr, dir, list), 0o644); err != nil {
				t.Fatal(err)
			}
			var out testutil.SyncBuffer // read below while the daemon writes
			d, err := daemon.New(daemon.Options{ConfigPath: conf, DryRun: true, DryRunBGP: tt.dryRunBGP,
				Log: logging.Discard(), DryRunOutput: &out})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()
			vip := pfx("192.0.2.77")
			if tt.dryRunBGP {
				r.mustHave(vip, 10*time.Second)
				return
			}
			// BIRD connects within a second and retries; give it several attempts.
			if _, ok := testutil.Poll(6*time.Second, time.Millisecond, func() bool { return strings.Contains(r.protoState(), "Established") || r.has(vip) }); ok {
				t.Fatalf("a dry run opened a BGP session:\n%s", r.debug())
			}
			addrs, err := exec.Command("ip", "-o", "addr", "show", "dev", "lo").CombinedOutput()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(addrs), "192.0.2.77") {
				t.Errorf("a dry run added the VIP:\n%s", addrs)
			}
			if !strings.Contains(out.String(), "-A -t 192.0.2.77:80 -s wrr") {
				t.Errorf("the dry run printed no ipvsadm lines:\n%s", out.String())
			}
		})
	}
}
