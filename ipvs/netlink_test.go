//go:build linux

package ipvs

import (
	"net/netip"
	"strings"
	"testing"
)

// moby/ipvs fails silently on a kernel without IPVS (empty dumps); NewNetlink must
// refuse loudly. The development and CI kernels have no IPVS; where one does, the
// netlink backend is exercised in the VM tests (integration/vm) instead.
func TestNewNetlinkWithoutIPVS(t *testing.T) {
	if CheckKernel() == nil {
		t.Skip("this kernel has IPVS: the failure path cannot be shown here (integration/vm covers the backend)")
	}
	_, err := NewNetlink("")
	if err == nil || !strings.Contains(err.Error(), "the kernel has no IPVS") {
		t.Fatalf("NewNetlink on a kernel without IPVS: %v", err)
	}
	t.Logf("as expected: %v", err)
}

// A firewall-mark service goes to the kernel as AF + mark (no protocol, address or
// port) and comes back from a dump as the same key.
func TestKernelFWMarkService(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		k := FWMarkKey(ProbeMarkBase|9, v6)
		ks, err := toKernelService(Service{ServiceKey: k, Scheduler: "rr"})
		if err != nil {
			t.Fatal(err)
		}
		if ks.FWMark != k.FWMark || ks.Protocol != 0 || ks.Address != nil || ks.Port != 0 {
			t.Errorf("v6=%v: kernel service %+v", v6, ks)
		}
		back, ok := fromKernelService(ks)
		if !ok || back.ServiceKey != k || back.Scheduler != "rr" {
			t.Errorf("v6=%v: back %+v %v, want key %+v", v6, back, ok, k)
		}
	}
	if _, err := toKernelService(Service{ServiceKey: ServiceKey{FWMark: 3, Addr: netip.MustParseAddr("10.0.0.1")}}); err == nil {
		t.Error("a firewall-mark key with an address must be refused")
	}
}
