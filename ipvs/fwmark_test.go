package ipvs

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestFWMarkKeyAndFormat(t *testing.T) {
	k4, k6 := FWMarkKey(ProbeMarkBase|1, false), FWMarkKey(ProbeMarkBase|2, true)
	d := Destination{Addr: netip.MustParseAddr("10.0.0.3"), Weight: 1, Forwarding: Tunnel}
	cases := []struct{ got, want string }{
		{k4.String(), "-f 1258291201"},
		{k6.String(), "-f 1258291202 -6"},
		{AddServiceCommand(Service{ServiceKey: k4, Scheduler: "rr"}), "-A -f 1258291201 -s rr"},
		{AddDestinationCommand(k4, d), "-a -f 1258291201 -r 10.0.0.3 -w 1 -i"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	if !k4.IsFWMark() || (ServiceKey{Protocol: TCP, Addr: d.Addr, Port: 80}).IsFWMark() {
		t.Error("IsFWMark wrong")
	}
	if !IsProbeMark(ProbeMarkBase) || !IsProbeMark(ProbeMarkBase|ProbeMarkMask) || IsProbeMark(ProbeMarkBase-1) || IsProbeMark(1) {
		t.Error("IsProbeMark range wrong")
	}
}

// The Fake holds firewall-mark services as the kernel does: keyed by mark (and
// family), next to an address service of the same VIP, with destinations at port 0;
// a malformed firewall-mark key is refused.
func TestFakeFWMark(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	vipSvc := ServiceKey{Protocol: TCP, Addr: netip.MustParseAddr("10.0.0.100"), Port: 80}
	k := FWMarkKey(ProbeMark(vipSvc, netip.MustParseAddr("10.0.0.3")), false)
	must(t, f.AddService(ctx, Service{ServiceKey: vipSvc}))
	must(t, f.AddService(ctx, Service{ServiceKey: k, Scheduler: "rr"}))
	if err := f.AddService(ctx, Service{ServiceKey: k, Scheduler: "rr"}); !errors.Is(err, ErrServiceExists) {
		t.Errorf("second add: %v, want ErrServiceExists", err)
	}
	must(t, f.AddDestination(ctx, k, Destination{Addr: netip.MustParseAddr("10.0.0.3"), Weight: 1}))
	ds, err := f.Destinations(ctx, k)
	if err != nil || len(ds) != 1 || ds[0].Port != 0 || ds[0].Forwarding != DR {
		t.Errorf("destinations %+v %v, want one DR destination at port 0", ds, err)
	}
	svcs, _ := f.Services(ctx)
	if !slices.ContainsFunc(svcs, func(s Service) bool { return s.ServiceKey == k }) || len(svcs) != 2 {
		t.Errorf("services %+v", svcs)
	}
	for _, bad := range []ServiceKey{
		{FWMark: 7}, // no family
		{FWMark: 7, Addr: netip.MustParseAddr("10.0.0.1")}, // an address
		{FWMark: 7, Addr: netip.IPv4Unspecified(), Protocol: TCP},
	} {
		if err := f.AddService(ctx, Service{ServiceKey: bad}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("add %+v: %v, want ErrInvalidArgument", bad, err)
		}
	}
	must(t, f.DeleteService(ctx, k))
	if _, err := f.Destinations(ctx, k); !errors.Is(err, ErrNoService) {
		t.Errorf("after delete: %v", err)
	}
}

// The Reconciler programs, adopts and removes helper services like any other.
func TestReconcilerFWMarkPools(t *testing.T) {
	f := NewFake()
	k := FWMarkKey(ProbeMarkBase|5, false)
	p := Pool{Service: Service{ServiceKey: k, Scheduler: "rr"}, Destinations: []Destination{{Addr: netip.MustParseAddr("10.0.0.3"), Weight: 1, Forwarding: Tunnel}}}
	r, _, _ := newTestReconciler(t, f)
	r.Update(p)
	mustPass(t, r, false)
	want := []string{"-A -f 1258291205 -s rr", "-a -f 1258291205 -r 10.0.0.3 -w 1 -i"}
	if got := table(f); !slices.Equal(got, want) {
		t.Fatalf("table %v, want %v", got, want)
	}
	// A restart: a new Reconciler adopts it without touching it.
	f.ResetCalls()
	r2, _, _ := newTestReconciler(t, f)
	r2.Update(p)
	mustPass(t, r2, false)
	if c := f.Calls(); c[OpAddService]+c[OpDeleteService]+c[OpAddDestination]+c[OpUpdateService] != 0 {
		t.Errorf("adoption changed the kernel: %v", c)
	}
	r2.Remove(k)
	mustPass(t, r2, false)
	if got := table(f); len(got) != 0 {
		t.Errorf("after Remove: %s", strings.Join(got, "\n"))
	}
}

// After a restart with the option removed, the kernel holds helpers nobody desires:
// Sweep(IsProbeHelper) deletes them, and only them (a foreign firewall-mark service
// and the desired pools stay).
func TestSweepProbeHelpers(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	left := FWMarkKey(ProbeMarkBase|7, false)
	kept := FWMarkKey(ProbeMarkBase|8, false)
	foreign := FWMarkKey(42, false)
	for _, k := range []ServiceKey{left, kept, foreign} {
		must(t, f.AddService(ctx, Service{ServiceKey: k, Scheduler: "rr"}))
		must(t, f.AddDestination(ctx, k, Destination{Addr: netip.MustParseAddr("10.0.0.3"), Weight: 1}))
	}
	r, _, _ := newTestReconciler(t, f)
	r.Update(Pool{Service: Service{ServiceKey: kept, Scheduler: "rr"}, Destinations: []Destination{{Addr: netip.MustParseAddr("10.0.0.3"), Weight: 1}}})
	mustPass(t, r, false)
	if _, ok := f.Table()[left]; !ok {
		t.Fatal("a leftover was deleted without Sweep")
	}
	r.Sweep(IsProbeHelper)
	mustPass(t, r, false)
	tab := f.Table()
	if _, ok := tab[left]; ok {
		t.Error("leftover helper not swept")
	}
	if _, ok := tab[kept]; !ok {
		t.Error("desired helper swept")
	}
	if _, ok := tab[foreign]; !ok {
		t.Error("foreign firewall-mark service swept")
	}
}
