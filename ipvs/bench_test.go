package ipvs

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
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

// The Reconciler's own cost (in-memory backend) for one weight change in a 1,000 x
// 100 table: Set plus one pass, no dump.
func BenchmarkIncrementalWeightChange(b *testing.B) {
	ctx := context.Background()
	f := NewFake()
	r := NewReconciler(f, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	pools := benchTable(1000, 100)
	r.Set(pools)
	if err := r.Reconcile(ctx, false); err != nil {
		b.Fatal(err)
	}
	f.ResetCalls()
	b.ResetTimer()
	for i := range b.N {
		idx := i % len(pools)
		ds := slices.Clone(pools[idx].Destinations)
		ds[i%100].Weight = 2 + i%7
		pools = slices.Clone(pools)
		pools[idx].Destinations = ds
		r.Set(pools)
		if err := r.Reconcile(ctx, false); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if c := f.Calls(); c[OpDumpServices] != 0 || c[OpUpdateDestination] != b.N {
		b.Fatalf("calls %v for %d changes", c, b.N)
	}
}

// A full resync pass of the same table (dump and compare), for scale.
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
