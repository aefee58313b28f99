package conftool

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"

	"github.com/kubal/kubal/internal/testutil"
)

const benchServers = 10000

// fillPool writes n server keys in transactions of 128 puts (etcd's default limit).
func fillPool(b *testing.B, cli *clientv3.Client, n int) {
	b.Helper()
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range n {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%sserver%05d.eqiad.wmnet", testPrefix, i), `{"pooled": "yes", "weight": 10}`))
		if len(ops) == 128 {
			flush()
		}
	}
	flush()
}

// chanEvents forwards Updates to a channel.
type chanEvents chan source.Set

func (c chanEvents) Update(s source.Set) { c <- s }
func (c chanEvents) Failed(error)        {}

// BenchmarkInitialLoad: a new client and source on a pool of 10,000 server keys,
// until the first Update holds all of them (what a kubal start costs per service).
func BenchmarkInitialLoad(b *testing.B) {
	m := startEtcd(b)
	fillPool(b, newClient(b, m), benchServers)
	log := slog.New(slog.DiscardHandler)
	b.ResetTimer()
	for b.Loop() {
		cli, err := NewClient(config.Global{}, []string{m.clientURL.Host}, log)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ev := make(chanEvents, 1)
		done := make(chan struct{})
		go func() { defer close(done); _ = NewSource(cli, testPrefix, log, nil).Run(ctx, ev) }()
		if s := <-ev; len(s) != benchServers {
			b.Fatalf("first update has %d servers, want %d", len(s), benchServers)
		}
		b.StopTimer()
		cancel()
		<-done
		cli.Close()
		b.StartTimer()
	}
}

// BenchmarkChangeToEvent: on a pool of 10,000 (and 100) servers, one admin write (a Put
// of one host's value) until the source delivers the Update that shows it. Reports
// p50/p99/max. fsync=true is etcd's default durability, fsync=false takes the disk out;
// etcd=embedded runs the server in the benchmark process (one GC for both),
// etcd=process in its own process, as in production.
func BenchmarkChangeToEvent(b *testing.B) {
	for _, c := range []struct {
		servers int
		fsync   bool
		process bool
	}{
		{benchServers, true, false}, {benchServers, false, false}, {100, true, false},
		{benchServers, true, true}, {benchServers, false, true},
	} {
		where := "embedded"
		if c.process {
			where = "process"
		}
		b.Run(fmt.Sprintf("servers=%d/fsync=%v/etcd=%s", c.servers, c.fsync, where), func(b *testing.B) {
			var endpoint string
			if c.process {
				endpoint = startEtcdProcess(b, c.fsync)
			} else {
				m := newMembers(b, 1)[0]
				m.noFsync = !c.fsync
				m.start(b)
				b.Cleanup(m.stop)
				m.waitReady(b)
				endpoint = m.clientURL.Host
			}
			log := slog.New(slog.DiscardHandler)
			cli := func() *clientv3.Client {
				cli, err := NewClient(config.Global{}, []string{endpoint}, log)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { cli.Close() })
				return cli
			}
			admin := cli()
			fillPool(b, admin, c.servers)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ev := make(chanEvents, 1)
			src := NewSource(cli(), testPrefix, log, nil)
			go func() { _ = src.Run(ctx, ev) }()
			select {
			case <-ev:
			case <-time.After(10 * time.Second):
				b.Fatal("no first update after 10s")
			}
			host := fmt.Sprintf("server%05d.eqiad.wmnet", c.servers/2)
			key := testPrefix + host
			var lat []time.Duration
			i := 0
			b.ResetTimer()
			for b.Loop() {
				i++
				pooled := []string{"yes", "no"}[i%2] // a real change each time: no, yes, no...
				start := time.Now()
				if _, err := admin.Put(ctx, key, `{"pooled": "`+pooled+`", "weight": 10}`); err != nil {
					b.Fatal(err)
				}
				var s source.Set
				select {
				case s = <-ev:
				case <-time.After(10 * time.Second):
					b.Fatalf("write %d: no update after 10s", i)
				}
				lat = append(lat, time.Since(start))
				if s[host].Enabled != (pooled == "yes") {
					b.Fatalf("update does not show pooled=%s", pooled)
				}
			}
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
		})
	}
}

// startEtcdProcess builds conftool/internal/etcdserver with the go tool running the
// benchmark and starts it in its own process; it skips when the build is impossible.
func startEtcdProcess(b *testing.B, fsync bool) string {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "etcdserver")
	gotool, err := exec.LookPath("go")
	if err != nil {
		b.Skipf("no go tool in PATH to build the etcd server binary: %v", err)
	}
	if out, err := exec.Command(gotool, "build", "-o", bin, "github.com/kubal/kubal/conftool/internal/etcdserver").CombinedOutput(); err != nil {
		b.Skipf("cannot build the etcd server binary: %v\n%s", err, out)
	}
	ports := testutil.FreePorts(b, 2)
	client := fmt.Sprintf("127.0.0.1:%d", ports[0])
	args := []string{"-dir", filepath.Join(dir, "data"), "-client", client, "-peer", fmt.Sprintf("127.0.0.1:%d", ports[1])}
	if !fsync {
		args = append(args, "-nofsync")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		b.Fatalf("etcd process: %q, %v", line, err)
	}
	return client
}
