package ipvs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"
)

func benchTable(services, dests int) []Pool {
	pools := make([]Pool, services)
	for i := range pools {
		k := ServiceKey{Protocol: TCP, Addr: netip.AddrFrom4([4]byte{10, 10, byte(i / 250), byte(i%250 + 1)}), Port: 80}
		ds := make([]Destination, dests)
		for j := range ds {
			ds[j] = Destination{Addr: netip.AddrFrom4([4]byte{10, 20, byte(j / 250), byte(j%250 + 1)}), Weight: 1}
		}
		pools[i] = Pool{Service: Service{ServiceKey: k, Scheduler: "wrr"}, Destinations: ds}
	}
	return pools
}

// nullUpdates is the Fake, except that destination updates only count: the benchmark
// measures the Reconciler, not the in-memory table's linear search (nor the kernel).
type nullUpdates struct {
	*Fake
	updates int
}

func (n *nullUpdates) UpdateDestination(context.Context, ServiceKey, Destination) error {
	n.updates++
	return nil
}

// The cost of one destination weight change, Update plus the pass that applies it, must
// not depend on the size of the table (issue 12): 1,000 services x 100 destinations
// against 10 x 10. "flap": one server of one pool flaps (the case); "spread":
// each change hits the next pool, so every change works on memory that is cold in the
// CPU caches (a harsher case, dominated by cache misses, not by the algorithm). The new
// pools are built before the timer: building them is the caller's (plan's) cost.
// cpu-ns/op is the process's CPU time per change (GC included).
//
//	go test -run '^$' -bench 'BenchmarkOneChange$' -benchmem -count 6 ./ipvs
func BenchmarkOneChange(b *testing.B) {
	for _, mode := range []string{"flap", "spread"} {
		for _, size := range []struct{ services, dests int }{{10, 10}, {1000, 100}} {
			b.Run(fmt.Sprintf("%s/%dx%d", mode, size.services, size.dests), func(b *testing.B) {
				benchOneChange(b, size.services, size.dests, mode == "spread")
			})
		}
	}
}

func benchOneChange(b *testing.B, services, dests int, spread bool) {
	ctx := context.Background()
	nb := &nullUpdates{Fake: NewFake()}
	r := NewReconciler(nb, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	pools := benchTable(services, dests)
	r.Set(pools)
	if err := r.Reconcile(ctx, false); err != nil {
		b.Fatal(err)
	}
	// Each pool alternates between its original and a variant with one weight changed
	// (a different destination per pool).
	variants := make([]Pool, len(pools))
	for i, p := range pools {
		ds := slices.Clone(p.Destinations)
		ds[i%len(ds)].Weight = 2
		variants[i] = p
		variants[i].Destinations = ds
	}
	nb.ResetCalls()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := range b.N {
		idx, round := len(pools)/2, i
		if spread {
			idx, round = i%len(pools), i/len(pools)
		}
		p := variants[idx]
		if round%2 == 1 {
			p = pools[idx]
		}
		r.Update(p)
		if err := r.Reconcile(ctx, false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
	if c := nb.Calls(); c[OpDumpServices] != 0 || nb.updates != b.N {
		b.Fatalf("calls %v, %d updates for %d changes", c, nb.updates, b.N)
	}
}

// The same change through Set (the whole world each time): the cost grows with the
// number of pools (a pointer comparison each), for scale.
func BenchmarkOneChangeViaSet(b *testing.B) {
	for _, size := range []struct{ services, dests int }{{10, 10}, {1000, 100}} {
		b.Run(fmt.Sprintf("%dx%d", size.services, size.dests), func(b *testing.B) {
			ctx := context.Background()
			nb := &nullUpdates{Fake: NewFake()}
			r := NewReconciler(nb, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
			pools := benchTable(size.services, size.dests)
			r.Set(pools)
			if err := r.Reconcile(ctx, false); err != nil {
				b.Fatal(err)
			}
			orig := slices.Clone(pools)
			variants := make([][]Destination, len(pools))
			for i, p := range pools {
				variants[i] = slices.Clone(p.Destinations)
				variants[i][i%len(p.Destinations)].Weight = 2
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				idx := i % len(pools)
				if (i/len(pools))%2 == 1 {
					pools[idx].Destinations = orig[idx].Destinations
				} else {
					pools[idx].Destinations = variants[idx]
				}
				r.Set(pools)
				if err := r.Reconcile(ctx, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A full resync pass of the 1,000 x 100 table (dump and compare), for scale.
func BenchmarkFullResync(b *testing.B) {
	ctx := context.Background()
	f := NewFake()
	r := NewReconciler(f, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	r.Set(benchTable(1000, 100))
	if err := r.Reconcile(ctx, false); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := r.Reconcile(ctx, true); err != nil {
			b.Fatal(err)
		}
	}
}

// cpuTime is the CPU time (user + system) the process used so far: on a shared host it
// is steadier than ns/op, which counts the time other processes held the CPU.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
