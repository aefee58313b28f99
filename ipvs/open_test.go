package ipvs

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// overlapWriter counts Write calls that overlap another: a bytes.Buffer (the tests'
// dry-run output) corrupts or drops lines on such calls.
type overlapWriter struct {
	busy     atomic.Bool
	overlaps atomic.Int32
	writes   atomic.Int32
}

func (w *overlapWriter) Write(p []byte) (int, error) {
	if !w.busy.CompareAndSwap(false, true) {
		w.overlaps.Add(1)
		return len(p), nil
	}
	time.Sleep(20 * time.Microsecond) // widen the window
	w.writes.Add(1)
	w.busy.Store(false)
	return len(p), nil
}

// The dry run's IPVS and address printers run on different goroutines (the IPVS and
// the VIP reconcilers) and share one output: Open serialises their writes. A CI run
// lost the "-A" line of integration/bgp TestDryRunOpensNoBGPSession to two
// unserialised writes into its bytes.Buffer.
func TestDryRunOutputWritesDoNotOverlap(t *testing.T) {
	w := &overlapWriter{}
	b, a, err := Open(true, false, w, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 300
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the IPVS reconciler's side
		defer wg.Done()
		svc := Service{ServiceKey: ServiceKey{Protocol: TCP, Addr: netip.MustParseAddr("192.0.2.1"), Port: 80}, Scheduler: "wrr"}
		for range n {
			if err := b.AddService(ctx, svc); err != nil {
				t.Error(err)
				return
			}
			if err := b.DeleteService(ctx, svc.ServiceKey); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // the VIP reconciler's side
		defer wg.Done()
		vip := []VIP{{Addr: netip.MustParseAddr("192.0.2.1")}}
		for i := range 2 * n {
			if i%2 == 0 {
				a.Set(vip)
			} else {
				a.Set(nil)
			}
			if err := a.Pass(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	if o := w.overlaps.Load(); o != 0 {
		t.Errorf("%d of %d dry-run writes overlapped another", o, o+w.writes.Load())
	}
	if got := w.writes.Load(); got != 4*n {
		t.Errorf("%d lines written, want %d (2 x %d IPVS + 2 x %d address lines)", got, 4*n, n, n)
	}
}
