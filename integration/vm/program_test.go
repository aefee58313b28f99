package vm

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kubal/kubal/ipvs"
)

func svc(proto ipvs.Protocol, addr string, port uint16, sched string, flags ...string) ipvs.Service {
	return ipvs.Service{ServiceKey: ipvs.ServiceKey{Protocol: proto, Addr: netip.MustParseAddr(addr), Port: port}, Scheduler: sched, Flags: flags}
}

func dst(addr string, port uint16, w int, fwd ipvs.Forwarding) ipvs.Destination {
	return ipvs.Destination{Addr: netip.MustParseAddr(addr), Port: port, Weight: w, Forwarding: fwd}
}

// Every scheduler, forwarding method and flag, programmed by the Reconciler through
// netlink and read back with ipvsadm -Ln (an independent reader), then changed in
// place and read back again.
func TestProgrammingMatchesIpvsadm(t *testing.T) {
	requireVM(t)
	const ns = "prog"
	run(t, "ip", "netns", "add", ns)
	// lo up creates the local routing table; without it the kernel rejects every
	// destination (inet_addr_type answers RTN_BROADCAST).
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	b, err := ipvs.NewNetlink("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// A service kubal does not own: must survive everything below.
	run(t, "ip", "netns", "exec", ns, "ipvsadm", "-A", "-t", "10.9.9.9:9", "-s", "rr")

	var pools []ipvs.Pool
	var want []string
	for i, sched := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"} {
		port := uint16(8001 + i)
		pools = append(pools, ipvs.Pool{Service: svc(ipvs.TCP, "10.1.0.1", port, sched), Destinations: []ipvs.Destination{dst("10.2.0.1", 0, i, ipvs.DR)}})
		want = append(want, fmt.Sprintf("TCP 10.1.0.1:%d %s", port, sched), fmt.Sprintf("-> 10.2.0.1:%d Route %d", port, i))
	}
	pools = append(pools,
		ipvs.Pool{Service: svc(ipvs.TCP, "10.1.0.2", 80, "sh", "sh-port", "sh-fallback"), Destinations: []ipvs.Destination{dst("10.2.0.1", 0, 1, ipvs.DR)}},
		ipvs.Pool{Service: svc(ipvs.TCP, "10.1.0.2", 81, "mh", "mh-fallback", "mh-port"), Destinations: []ipvs.Destination{dst("10.2.0.1", 0, 1, ipvs.DR)}},
		ipvs.Pool{Service: svc(ipvs.TCP, "10.1.0.2", 82, "mh", "mh-port"), Destinations: []ipvs.Destination{dst("10.2.0.1", 0, 1, ipvs.DR)}},
		ipvs.Pool{Service: func() ipvs.Service { s := svc(ipvs.UDP, "10.1.0.3", 53, "rr"); s.OPS = true; return s }(),
			Destinations: []ipvs.Destination{dst("10.2.0.1", 0, 1, ipvs.DR), dst("10.2.0.2", 5353, 2, ipvs.DR)}},
		ipvs.Pool{Service: svc(ipvs.TCP, "10.1.0.4", 80, "wrr"), Destinations: []ipvs.Destination{
			dst("10.2.0.1", 0, 5, ipvs.DR), dst("10.2.0.2", 0, 0, ipvs.Tunnel), dst("10.2.0.3", 8080, 3, ipvs.NAT)}},
		ipvs.Pool{Service: svc(ipvs.TCP, "2001:db8::1", 443, "mh", "mh-port"), Destinations: []ipvs.Destination{
			dst("2001:db8::10", 0, 2, ipvs.DR), dst("2001:db8::11", 8443, 1, ipvs.Tunnel)}},
	)
	want = append(want,
		"TCP 10.1.0.2:80 sh (sh-fallback,sh-port)", "-> 10.2.0.1:80 Route 1",
		"TCP 10.1.0.2:81 mh (mh-fallback,mh-port)", "-> 10.2.0.1:81 Route 1",
		"TCP 10.1.0.2:82 mh (mh-port)", "-> 10.2.0.1:82 Route 1",
		"UDP 10.1.0.3:53 rr ops", "-> 10.2.0.1:53 Route 1", "-> 10.2.0.2:5353 Route 2",
		"TCP 10.1.0.4:80 wrr", "-> 10.2.0.1:80 Route 5", "-> 10.2.0.2:80 Tunnel 0", "-> 10.2.0.3:8080 Masq 3",
		"TCP [2001:db8::1]:443 mh (mh-port)", "-> [2001:db8::10]:443 Route 2", "-> [2001:db8::11]:8443 Tunnel 1",
		"TCP 10.9.9.9:9 rr",
	)
	r := ipvs.NewReconciler(b, testLog(t), nil)
	ctx := context.Background()
	r.Set(pools)
	if err := r.Reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	check := func(stage string, want []string) {
		t.Helper()
		got := ipvsadmTable(t, ns)
		if !slices.Equal(got, sortedTable(want)) {
			t.Errorf("%s: ipvsadm -Ln:\n%s\nwant:\n%s", stage, strings.Join(got, "\n"), strings.Join(sortedTable(want), "\n"))
		}
	}
	check("programmed", want)

	// The netlink backend reads back what it wrote (scheduler flags included).
	got, err := b.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(pools)+1 {
		t.Errorf("netlink dump: %d services, want %d", len(got), len(pools)+1)
	}
	for _, s := range got {
		for _, p := range pools {
			if p.Service.ServiceKey == s.ServiceKey && (s.Scheduler != p.Service.Scheduler || s.OPS != p.Service.OPS || len(s.Flags) != len(p.Service.Flags)) {
				t.Errorf("netlink read back %+v, programmed %+v", s, p.Service)
			}
		}
	}

	// Change in place: scheduler and flags, a weight to 0, forwarding, a removal.
	last := len(pools) - 1
	pools[last-1].Service = svc(ipvs.TCP, "10.1.0.4", 80, "sh", "sh-port")
	pools[last-1].Destinations = []ipvs.Destination{dst("10.2.0.1", 0, 0, ipvs.DR), dst("10.2.0.2", 0, 7, ipvs.DR)}
	pools = pools[:last] // the IPv6 service leaves the config
	r.Set(pools)
	if err := r.Reconcile(ctx, false); err != nil {
		t.Fatal(err)
	}
	want = dropServices(want, "TCP 10.1.0.4:80 wrr", "TCP [2001:db8::1]:443 mh (mh-port)")
	want = append(want, "TCP 10.1.0.4:80 sh (sh-port)", "-> 10.2.0.1:80 Route 0", "-> 10.2.0.2:80 Route 7")
	check("changed", want)
}

// sortedTable orders hand-written expectations like ipvsadmTable does.
func sortedTable(lines []string) []string {
	var blocks [][]string
	for _, l := range lines {
		if strings.HasPrefix(l, "->") {
			blocks[len(blocks)-1] = append(blocks[len(blocks)-1], l)
		} else {
			blocks = append(blocks, []string{l})
		}
	}
	for _, b := range blocks {
		slices.Sort(b[1:])
	}
	slices.SortFunc(blocks, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	var out []string
	for _, b := range blocks {
		out = append(out, b...)
	}
	return out
}

// dropServices removes services (header line and their destinations) from an expectation.
func dropServices(lines []string, headers ...string) []string {
	var out []string
	skip := false
	for _, l := range lines {
		if !strings.HasPrefix(l, "->") {
			skip = slices.Contains(headers, l)
		}
		if !skip {
			out = append(out, l)
		}
	}
	return out
}
