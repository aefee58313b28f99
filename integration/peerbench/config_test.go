package peerbench

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
)

// Both configurations come from one description: kubal's must load with no error and
// no warning (an unknown key would silently fall back to a default and the two daemons
// would not do the same work), keepalived's must pass `keepalived --config-test`, and
// both must describe the same services, real servers, check port and interval.
func TestConfigsFromOneDescription(t *testing.T) {
	for _, check := range []string{"http", "tcp"} {
		t.Run(check, func(t *testing.T) {
			d := layout(3, 4, true, check, 2)
			dir := t.TempDir()
			kconf, err := kubalFiles(d, dir)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(kconf, config.WithServiceCheck(monitor.Validate))
			if err != nil {
				t.Fatalf("kubal config: %v", err)
			}
			if len(cfg.Warnings) > 0 {
				t.Fatalf("kubal config warnings: %v", cfg.Warnings)
			}
			if len(cfg.Services) != len(d.services) {
				t.Fatalf("kubal config: %d services, want %d", len(cfg.Services), len(d.services))
			}
			wantMon := map[string]string{"http": "ProxyFetch", "tcp": "TCP"}[check]
			for i, s := range cfg.Services {
				if s.IP.String() != d.services[i].vip || int(s.Port) != d.services[i].port || !slices.Equal(s.Monitors, []string{wantMon}) {
					t.Errorf("kubal service %d: %s:%d monitors %v, want %s:%d [%s]", i, s.IP, s.Port, s.Monitors, d.services[i].vip, d.services[i].port, wantMon)
				}
				m := s.Monitor(wantMon)
				iv, err1 := m.Seconds("interval", 0)
				port, err2 := m.Int("port", 0)
				if err1 != nil || err2 != nil || iv != 2*time.Second || port != healthPort {
					t.Errorf("kubal service %d: %s interval %s port %d (%v %v), want 2s %d", i, wantMon, iv, port, err1, err2, healthPort)
				}
			}

			kaconf, err := keepalivedFile(d, dir)
			if err != nil {
				t.Fatal(err)
			}
			text, _ := os.ReadFile(kaconf)
			for _, want := range []string{"virtual_server 10.100.0.3 80 {", "real_server 10.0.1.12 80 {", "connect_port 8081", "delay_loop 2", "lb_kind DR"} {
				if !strings.Contains(string(text), want) {
					t.Errorf("keepalived.conf lacks %q", want)
				}
			}
			if got, want := strings.Count(string(text), "real_server "), 12; got != want {
				t.Errorf("keepalived.conf: %d real servers, want %d", got, want)
			}
			ka, err := exec.LookPath("keepalived")
			if err != nil {
				ka = "/usr/sbin/keepalived"
			}
			if _, err := os.Stat(ka); err != nil {
				if os.Getenv("KUBAL_REQUIRE_RIGS") == "1" {
					t.Fatalf("keepalived not installed (run integration/peerbench/setup.sh): %v", err)
				}
				t.Skip("SKIPPED: keepalived --config-test: keepalived not installed (integration/peerbench/setup.sh installs it)")
			}
			log := filepath.Join(dir, "config-test.log")
			out, err := exec.Command(ka, "--config-test="+log, "-f", kaconf).CombinedOutput()
			logText, _ := os.ReadFile(log)
			if err != nil {
				t.Fatalf("keepalived --config-test: %v\n%s%s", err, out, logText)
			}
		})
	}
}

func TestParseTable(t *testing.T) {
	in := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A640001:0050 wrr
  -> 0A000102:0050      Route   10     0          0
  -> 0A000101:0050      Route   0      3          1
TCP  0A640002:0050 wlc
`
	tb, err := parseTable([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if !tb.in("10.100.0.1:80", "10.0.1.2") || tb.in("10.100.0.1:80", "10.0.1.1") || tb["10.100.0.2:80"].sched != "wlc" || len(tb) != 2 {
		t.Fatalf("parsed %+v", tb)
	}
	d := desc{services: []service{{vip: "10.100.0.1", port: 80, servers: []string{"10.0.1.2"}}}}
	if !tb.complete(d) {
		t.Error("complete: want true for the weight-10 server")
	}
	d.services[0].servers = append(d.services[0].servers, "10.0.1.1")
	if tb.complete(d) {
		t.Error("complete: want false with a weight-0 server")
	}
	if _, err := parseTable([]byte("TCP  zz:0050 wrr\n")); err == nil {
		t.Error("bad hex address: want an error")
	}
}
