package conftool

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/source"
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

// BenchmarkChangeToEvent: on a pool of 10,000 (and 100) servers, one admin write (a Put of one
// host's value) until the source delivers the Update that shows it. Reports p50/p99.
// fsync=on is etcd's default durability; fsync=off isolates kubal's and etcd's
// processing from the disk.
func BenchmarkChangeToEvent(b *testing.B) {
	for _, c := range []struct {
		servers int
		fsync   bool
	}{{benchServers, true}, {benchServers, false}, {100, true}} {
		fsync := c.fsync
		b.Run(fmt.Sprintf("servers=%d/fsync=%v", c.servers, c.fsync), func(b *testing.B) {
			m := newMembers(b, 1)[0]
			m.noFsync = !fsync
			m.start(b)
			b.Cleanup(m.stop)
			m.waitReady(b)
			admin := newClient(b, m)
			fillPool(b, admin, c.servers)
			log := slog.New(slog.DiscardHandler)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ev := make(chanEvents, 1)
			go func() { _ = NewSource(newClient(b, m), testPrefix, log, nil).Run(ctx, ev) }()
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
