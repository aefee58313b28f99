package vm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubal/kubal/ipvs"
)

const (
	perfDests   = 100
	perfChanges = 1000
)

// perfServices is 1,000 (the table); KUBAL_VM_PERF_SERVICES scales it down for
// a quick look.
var perfServices = func() int {
	if n, err := strconv.Atoi(os.Getenv("KUBAL_VM_PERF_SERVICES")); err == nil && n > 0 {
		return n
	}
	return 1000
}()

// progress prints a phase's time at once (the benchmark's summary comes at the end).
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "perf: "+format+"\n", args...)
}

// perfTable is 1,000 TCP wrr services with 100 DR destinations each.
func perfTable() []ipvs.Pool {
	pools := make([]ipvs.Pool, perfServices)
	for i := range pools {
		k := ipvs.ServiceKey{Protocol: ipvs.TCP, Addr: netip.AddrFrom4([4]byte{10, 10, byte(i / 250), byte(i%250 + 1)}), Port: 80}
		ds := make([]ipvs.Destination, perfDests)
		for j := range ds {
			ds[j] = ipvs.Destination{Addr: netip.AddrFrom4([4]byte{10, 20, byte(j / 250), byte(j%250 + 1)}), Weight: 1}
		}
		pools[i] = ipvs.Pool{Service: ipvs.Service{ServiceKey: k, Scheduler: "wrr"}, Destinations: ds}
	}
	return pools
}

// restoreLines is the same table as PyBal feeds it to `ipvsadm -R`.
func restoreLines(pools []ipvs.Pool) string {
	var b strings.Builder
	for _, p := range pools {
		b.WriteString(ipvs.AddServiceCommand(p.Service) + "\n")
		for _, d := range p.Destinations {
			b.WriteString(ipvs.AddDestinationCommand(p.Service.ServiceKey, d) + "\n")
		}
	}
	return b.String()
}

// ipvsadmR runs `ipvsadm -R` in a namespace (forked from a thread inside it).
func ipvsadmR(ns, input string) error {
	return inNS(ns, func() error {
		cmd := exec.Command("ipvsadm", "-R")
		cmd.Stdin = strings.NewReader(input)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			return fmt.Errorf("ipvsadm -R: %v: %s", err, out)
		}
		return nil
	})
}

// dumpCounter counts full dumps, to prove incremental changes need none.
type dumpCounter struct {
	ipvs.Backend
	dumps atomic.Int64
}

func (d *dumpCounter) Services(ctx context.Context) ([]ipvs.Service, error) {
	d.dumps.Add(1)
	return d.Backend.Services(ctx)
}

func tableSize(b *testing.B, ns string) (svcs, dsts int) {
	out := run(b, "ip", "netns", "exec", ns, "ipvsadm", "-Ln")
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "TCP "):
			svcs++
		case strings.HasPrefix(strings.TrimSpace(l), "-> 10.20."):
			dsts++
		}
	}
	return svcs, dsts
}

func newNS(b *testing.B, name string) {
	run(b, "ip", "netns", "add", name)
	run(b, "ip", "-n", name, "link", "set", "lo", "up")
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
}

// BenchmarkTable: kubal's Reconciler (netlink) against `ipvsadm -R` (PyBal's path), side
// by side in one VM boot: the cold 1,000 x 100 table, then 1,000 single-destination
// weight changes. Run with integration/vm/run-tests.sh --bench.
func BenchmarkTable(b *testing.B) {
	requireVM(b)
	ctx := context.Background()
	for i := range b.N {
		pools := perfTable()
		lines := restoreLines(pools)

		// Cold, ipvsadm -R.
		nsI := fmt.Sprintf("perf-ipvsadm-%d", i)
		newNS(b, nsI)
		start := time.Now()
		if err := ipvsadmR(nsI, lines); err != nil {
			b.Fatal(err)
		}
		coldIpvsadm := time.Since(start)
		progress("cold ipvsadm -R: %v", coldIpvsadm)
		if s, d := tableSize(b, nsI); s != perfServices || d != perfServices*perfDests {
			b.Fatalf("ipvsadm -R programmed %d services, %d destinations", s, d)
		}
		// 1,000 weight changes, one `ipvsadm -R` each (PyBal's minimum per change; it
		// actually re-sends -e for every server of the pool).
		start = time.Now()
		for c := range perfChanges {
			p := pools[c%perfServices]
			d := p.Destinations[c%perfDests]
			d.Weight = 2 + c%7
			if err := ipvsadmR(nsI, ipvs.UpdateDestinationCommand(p.Service.ServiceKey, d)+"\n"); err != nil {
				b.Fatal(err)
			}
		}
		changesIpvsadm := time.Since(start)
		progress("%d changes ipvsadm -R: %v", perfChanges, changesIpvsadm)
		run(b, "ip", "netns", "exec", nsI, "ipvsadm", "-C") // free the kernel's memory

		// Cold, kubal.
		nsK := fmt.Sprintf("perf-kubal-%d", i)
		newNS(b, nsK)
		nl, err := ipvs.NewNetlink("/run/netns/" + nsK)
		if err != nil {
			b.Fatal(err)
		}
		be := &dumpCounter{Backend: nl}
		r := ipvs.NewReconciler(be, testLog(b), nil)
		start = time.Now()
		r.Set(pools)
		if err := r.Reconcile(ctx, false); err != nil {
			b.Fatal(err)
		}
		coldKubal := time.Since(start)
		progress("cold kubal: %v", coldKubal)
		if s, d := tableSize(b, nsK); s != perfServices || d != perfServices*perfDests {
			b.Fatalf("kubal programmed %d services, %d destinations", s, d)
		}
		// 1,000 weight changes: each a new desired state (one pool's destinations
		// replaced) and one pass.
		dumps := be.dumps.Load()
		start = time.Now()
		for c := range perfChanges {
			idx := c % perfServices
			ds := slices.Clone(pools[idx].Destinations)
			ds[c%perfDests].Weight = 2 + c%7
			pools = slices.Clone(pools)
			pools[idx].Destinations = ds
			r.Set(pools)
			if err := r.Reconcile(ctx, false); err != nil {
				b.Fatal(err)
			}
		}
		changesKubal := time.Since(start)
		progress("%d changes kubal: %v", perfChanges, changesKubal)
		if n := be.dumps.Load() - dumps; n != 0 {
			b.Errorf("%d full dumps during incremental changes", n)
		}
		// The kernel holds the last change.
		last := pools[(perfChanges-1)%perfServices]
		want := last.Destinations[(perfChanges-1)%perfDests]
		got, err := nl.Destinations(ctx, last.Service.ServiceKey)
		if err != nil || !slices.ContainsFunc(got, func(d ipvs.Destination) bool { return d.Addr == want.Addr && d.Weight == want.Weight }) {
			b.Errorf("kernel after the changes: %v, %v; want %v at weight %d", got, err, want.Addr, want.Weight)
		}
		nl.Close()
		run(b, "ip", "netns", "exec", nsK, "ipvsadm", "-C")

		b.ReportMetric(coldKubal.Seconds(), "kubal-cold-s")
		b.ReportMetric(coldIpvsadm.Seconds(), "ipvsadm-cold-s")
		b.ReportMetric(changesKubal.Seconds(), "kubal-1000changes-s")
		b.ReportMetric(changesIpvsadm.Seconds(), "ipvsadm-1000changes-s")
		b.Logf("cold %dx%d: kubal %v, ipvsadm -R %v (kubal/ipvsadm = %.2f)", perfServices, perfDests,
			coldKubal.Round(time.Millisecond), coldIpvsadm.Round(time.Millisecond), coldKubal.Seconds()/coldIpvsadm.Seconds())
		b.Logf("%d weight changes: kubal %v (%v each, 0 dumps), ipvsadm -R %v (%v each) (kubal/ipvsadm = %.3f)", perfChanges,
			changesKubal.Round(time.Millisecond), (changesKubal / perfChanges).Round(time.Microsecond),
			changesIpvsadm.Round(time.Millisecond), (changesIpvsadm / perfChanges).Round(time.Microsecond),
			changesKubal.Seconds()/changesIpvsadm.Seconds())
	}
}
