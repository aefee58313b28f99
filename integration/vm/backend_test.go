package vm

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kubal/kubal/ipvs"
)

// The in-memory Fake that the unit tests and the daemon's tests rely on must behave
// like the kernel: the same operations succeed or fail on both, and both end with
// the same table.
func TestFakeBehavesLikeTheKernel(t *testing.T) {
	requireVM(t)
	const ns = "conformance"
	run(t, "ip", "netns", "add", ns)
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	nl, err := ipvs.NewNetlink("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	fake := ipvs.NewFake()
	ctx := context.Background()

	web := svc(ipvs.TCP, "10.1.0.1", 80, "wrr")
	dns := svc(ipvs.UDP, "10.1.0.2", 53, "rr")
	dns.OPS = true
	a, b := dst("10.2.0.1", 0, 1, ipvs.DR), dst("10.2.0.2", 8080, 0, ipvs.Tunnel)
	steps := []struct {
		name string
		op   func(ipvs.Backend) error
	}{
		{"add service", func(be ipvs.Backend) error { return be.AddService(ctx, web) }},
		{"add service again", func(be ipvs.Backend) error { return be.AddService(ctx, web) }},
		{"add udp ops service", func(be ipvs.Backend) error { return be.AddService(ctx, dns) }},
		{"ops on tcp", func(be ipvs.Backend) error {
			s := svc(ipvs.TCP, "10.1.0.3", 80, "rr")
			s.OPS = true
			return be.AddService(ctx, s)
		}},
		{"add destination", func(be ipvs.Backend) error { return be.AddDestination(ctx, web.ServiceKey, a) }},
		{"add destination again", func(be ipvs.Backend) error { return be.AddDestination(ctx, web.ServiceKey, a) }},
		{"same destination by explicit port", func(be ipvs.Backend) error {
			d := a
			d.Port = 80
			return be.AddDestination(ctx, web.ServiceKey, d)
		}},
		{"add tunnel destination on another port", func(be ipvs.Backend) error { return be.AddDestination(ctx, web.ServiceKey, b) }},
		{"add destination to a missing service", func(be ipvs.Backend) error {
			return be.AddDestination(ctx, svc(ipvs.TCP, "10.9.9.9", 1, "rr").ServiceKey, a)
		}},
		{"update destination weight 0", func(be ipvs.Backend) error {
			d := a
			d.Weight = 0
			return be.UpdateDestination(ctx, web.ServiceKey, d)
		}},
		{"update missing destination", func(be ipvs.Backend) error {
			return be.UpdateDestination(ctx, web.ServiceKey, dst("10.2.0.9", 0, 1, ipvs.DR))
		}},
		{"update service scheduler and flags", func(be ipvs.Backend) error {
			s := web
			s.Scheduler, s.Flags = "sh", []string{"sh-port"}
			return be.UpdateService(ctx, s)
		}},
		{"update missing service", func(be ipvs.Backend) error { return be.UpdateService(ctx, svc(ipvs.TCP, "10.9.9.9", 1, "rr")) }},
		{"delete missing destination", func(be ipvs.Backend) error {
			return be.DeleteDestination(ctx, web.ServiceKey, dst("10.2.0.9", 0, 1, ipvs.DR))
		}},
		{"delete destination", func(be ipvs.Backend) error { return be.DeleteDestination(ctx, web.ServiceKey, b) }},
		{"delete missing service", func(be ipvs.Backend) error {
			return be.DeleteService(ctx, svc(ipvs.TCP, "10.9.9.9", 1, "rr").ServiceKey)
		}},
		{"delete service", func(be ipvs.Backend) error { return be.DeleteService(ctx, dns.ServiceKey) }},
	}
	for _, s := range steps {
		kerr, ferr := s.op(nl), s.op(fake)
		if (kerr == nil) != (ferr == nil) {
			t.Errorf("%s: kernel error %v, fake error %v", s.name, kerr, ferr)
		}
	}
	if got, want := dumpTable(t, nl), dumpTable(t, fake); !slices.Equal(got, want) {
		t.Errorf("kernel table:\n%s\nfake table:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func dumpTable(t *testing.T, be ipvs.Backend) []string {
	t.Helper()
	ctx := context.Background()
	svcs, err := be.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range svcs {
		out = append(out, ipvs.AddServiceCommand(s))
		ds, err := be.Destinations(ctx, s.ServiceKey)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			out = append(out, fmt.Sprintf("%s conns=%d/%d", ipvs.AddDestinationCommand(s.ServiceKey, d), d.ActiveConns, d.InactiveConns))
		}
	}
	slices.Sort(out)
	return out
}
