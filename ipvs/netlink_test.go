//go:build linux

package ipvs

import (
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
