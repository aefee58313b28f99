package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// fullSnapshot is Snapshot built from scratch (every map copied, every reason
// recomputed): the reference the incremental Snapshot must equal.
func fullSnapshot(c *Coordinator) Snapshot {
	snap := Snapshot{
		Name: c.name, Threshold: c.threshold, CanDepool: c.canDepool(), CouldNotDepool: c.couldNotDepool,
		Servers: []ServerState{}, PooledDown: []string{},
	}
	for _, h := range slices.Sorted(maps.Keys(c.servers)) {
		s := c.servers[h]
		snap.Servers = append(snap.Servers, ServerState{
			Host: s.host, Addr: s.addr, Weight: s.weight, Enabled: s.enabled, Ready: s.ready,
			Up: s.up, Pooled: s.pooled, Monitors: maps.Clone(s.results), Why: c.why(s),
		})
		if s.results == nil {
			snap.Servers[len(snap.Servers)-1].Monitors = map[string]MonitorResult{}
		}
	}
	snap.PooledDown = append(snap.PooledDown, slices.Sorted(maps.Keys(c.pooledDown))...)
	return snap
}

// deepCopy copies a snapshot so that a later change to the original shows.
func deepCopy(s Snapshot) Snapshot {
	out := s
	out.Servers = slices.Clone(s.Servers)
	for i := range out.Servers {
		out.Servers[i].Monitors = maps.Clone(s.Servers[i].Monitors)
	}
	out.PooledDown = slices.Clone(s.PooledDown)
	return out
}

// TestSnapshotIncremental: SnapshotShared (and Snapshot, built on it) reuse the state of
// servers that did not change (their Monitors map and Why), so after random events -
// taken one or several at a time between snapshots - both must equal a snapshot built
// from scratch, and no snapshot handed out may change afterwards (they share maps).
func TestSnapshotIncremental(t *testing.T) {
	const seeds, events = 150, 300
	thresholds := []float64{0, 0.5, 0.75, 1}
	monitorSets := [][]string{nil, {"ProxyFetch"}, {"ProxyFetch", "IdleConnection"}, {"IdleConnection", "ProxyFetch", "RunCommand"}}
	reasons := []string{"", "503", "timeout"}
	unchanged := 0
	for seed := range uint64(seeds) {
		rng := rand.New(rand.NewPCG(seed, 0x736e6170))
		hosts := make([]string, 1+rng.IntN(10))
		for i := range hosts {
			hosts[i] = fmt.Sprintf("h%02d", i)
		}
		c := New("svc", thresholds[rng.IntN(len(thresholds))], monitorSets[rng.IntN(len(monitorSets))], slog.New(slog.DiscardHandler))
		var trace []string
		type handed struct{ got, copy Snapshot }
		var out []handed
		for range events {
			switch p := rng.IntN(100); {
			case p < 12:
				var cfgs []ServerConfig
				for _, h := range hosts {
					if rng.IntN(5) == 0 {
						continue
					}
					cfg := ServerConfig{Host: h, Weight: rng.IntN(3), Enabled: rng.IntN(4) != 0, Reason: reasons[rng.IntN(len(reasons))]}
					if rng.IntN(3) != 0 {
						cfg.Addr = netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(3))})
					}
					cfgs = append(cfgs, cfg)
				}
				trace = append(trace, fmt.Sprintf("Update(%v)", cfgs))
				c.Update(cfgs)
			case p < 20:
				h := hosts[rng.IntN(len(hosts))]
				trace = append(trace, "Resolved("+h+")")
				c.Resolved(h, netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(3))}))
			case p < 25:
				h := hosts[rng.IntN(len(hosts))]
				msg := reasons[rng.IntN(len(reasons))]
				trace = append(trace, "ResolveFailed("+h+", "+msg+")")
				c.ResolveFailed(h, errors.New(msg))
			case p < 95:
				if len(c.monitors) == 0 {
					continue
				}
				h := hosts[rng.IntN(len(hosts))]
				m := c.monitors[rng.IntN(len(c.monitors))]
				r := MonitorResult{Up: rng.IntN(2) == 0, Reason: reasons[rng.IntN(len(reasons))]}
				trace = append(trace, fmt.Sprintf("Result(%s, %s, %+v)", h, m, r))
				c.Result(h, m, r)
			default:
				th := thresholds[rng.IntN(len(thresholds))]
				ms := monitorSets[rng.IntN(len(monitorSets))]
				trace = append(trace, fmt.Sprintf("Reconfigure(%v, %v)", th, ms))
				c.Reconfigure(th, ms)
			}
			if rng.IntN(3) != 0 {
				continue // several events between two snapshots
			}
			got, want := c.SnapshotShared(), fullSnapshot(c)
			if deep := c.Snapshot(); !reflect.DeepEqual(deep, want) {
				t.Fatalf("seed %d: snapshot differs from a full one\n got %+v\nwant %+v\ntrace:\n%s",
					seed, deep, want, strings.Join(trace, "\n"))
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d: incremental snapshot differs from a full one\n got %+v\nwant %+v\ntrace:\n%s",
					seed, got, want, strings.Join(trace, "\n"))
			}
			if len(out) > 0 {
				prev := out[len(out)-1]
				if Unchanged(&prev.got, &got) && !reflect.DeepEqual(prev.copy, want) {
					t.Fatalf("seed %d: Unchanged, but the state changed\nthen %+v\n now %+v\ntrace:\n%s", seed, prev.copy, want, strings.Join(trace, "\n"))
				}
				if Unchanged(&prev.got, &got) {
					unchanged++
				}
			}
			out = append(out, handed{got, deepCopy(got)})
		}
		for i, h := range out {
			if !reflect.DeepEqual(h.got, h.copy) {
				t.Fatalf("seed %d: snapshot %d changed after it was handed out\n now %+v\nthen %+v", seed, i, h.got, h.copy)
			}
		}
	}
	if unchanged < 100 {
		t.Errorf("only %d snapshots read as Unchanged: the walk does not exercise it", unchanged)
	}
}

// After one change, SnapshotShared rebuilds only that server: the others' maps are the very
// maps of the previous snapshot.
func TestSnapshotSharesUnchangedServers(t *testing.T) {
	c := New("svc", 0.5, []string{"ProxyFetch"}, nil)
	var cfgs []ServerConfig
	for i := range 4 {
		cfgs = append(cfgs, ServerConfig{Host: fmt.Sprintf("h%d", i), Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), Weight: 10, Enabled: true})
	}
	c.Update(cfgs)
	for _, sc := range cfgs {
		c.Result(sc.Host, "ProxyFetch", MonitorResult{Up: true})
	}
	before := c.SnapshotShared()
	c.Result("h2", "ProxyFetch", MonitorResult{Up: false, Reason: "503"})
	after := c.SnapshotShared()
	for i := range after.Servers {
		same := reflect.ValueOf(before.Servers[i].Monitors).UnsafePointer() == reflect.ValueOf(after.Servers[i].Monitors).UnsafePointer()
		if changed := after.Servers[i].Host == "h2"; same == changed {
			t.Errorf("%s: map shared = %v after a change to h2 only", after.Servers[i].Host, same)
		}
	}
	if before.Servers[2].Monitors["ProxyFetch"] != (MonitorResult{Up: true}) || after.Servers[2].Why != "ProxyFetch: 503" {
		t.Errorf("h2 before %+v, after %+v", before.Servers[2], after.Servers[2])
	}
	if Unchanged(&before, &after) {
		t.Error("Unchanged after a depool")
	}
	// A repeated verdict changes nothing: the same map, the same snapshot.
	c.Result("h2", "ProxyFetch", MonitorResult{Up: false, Reason: "503"})
	again := c.SnapshotShared()
	if !Unchanged(&after, &again) {
		t.Error("a repeated verdict reads as a change")
	}
	if reflect.ValueOf(after.Servers[2].Monitors).UnsafePointer() != reflect.ValueOf(again.Servers[2].Monitors).UnsafePointer() {
		t.Error("a repeated verdict copied the map")
	}
	// Snapshot stays a deep copy: nothing shared with SnapshotShared.
	deep := c.Snapshot()
	for i := range deep.Servers {
		if reflect.ValueOf(deep.Servers[i].Monitors).UnsafePointer() == reflect.ValueOf(again.Servers[i].Monitors).UnsafePointer() {
			t.Errorf("%s: Snapshot shares its map", deep.Servers[i].Host)
		}
	}
}

// One monitor transition then a snapshot, as the service actor does per change: the
// deep copy (Snapshot) against the shared one (SnapshotShared), by pool size.
//
//	go test -run '^$' -bench 'BenchmarkSnapshotAfterChange' -benchmem ./pool
func BenchmarkSnapshotAfterChange(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		for _, shared := range []bool{false, true} {
			name := fmt.Sprintf("%d/deep", n)
			if shared {
				name = fmt.Sprintf("%d/shared", n)
			}
			b.Run(name, func(b *testing.B) {
				c, hosts := benchPool(b, n, slog.New(slog.DiscardHandler))
				h := hosts[n/2]
				down, up := MonitorResult{Up: false, Reason: "503"}, MonitorResult{Up: true}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					if i%2 == 0 {
						c.Result(h, "ProxyFetch", down)
					} else {
						c.Result(h, "ProxyFetch", up)
					}
					if shared {
						_ = c.SnapshotShared()
					} else {
						_ = c.Snapshot()
					}
				}
			})
		}
	}
}
