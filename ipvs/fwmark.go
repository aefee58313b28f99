package ipvs

import (
	"fmt"
	"net/netip"
)

// Firewall-mark services. kubal creates them as helpers of forwarded probes (see
// plan.ProbePools): a probe socket marked with SO_MARK connects to the VIP, and IPVS,
// which looks firewall-mark services up before address services, sends it to the one
// destination of the helper service with that mark, through the same forwarding
// method as the traffic.

// FWMarkKey is the key of the firewall-mark service mark of the family v6 or IPv4.
func FWMarkKey(mark uint32, v6 bool) ServiceKey {
	a := netip.IPv4Unspecified()
	if v6 {
		a = netip.IPv6Unspecified()
	}
	return ServiceKey{Addr: a, FWMark: mark}
}

// IsFWMark reports whether k is a firewall-mark service.
func (k ServiceKey) IsFWMark() bool { return k.FWMark != 0 }

func validFWMark(k ServiceKey) error {
	if k.Protocol != "" || k.Port != 0 || !k.Addr.IsValid() || !k.Addr.IsUnspecified() {
		return fmt.Errorf("%w: firewall-mark service %d with protocol %q, address %s, port %d (want FWMarkKey)",
			ErrInvalidArgument, k.FWMark, k.Protocol, k.Addr, k.Port)
	}
	return nil
}

// fwmarkSpec is ipvsadm's `-f 1258291201` (`-f N -6` for IPv6).
func fwmarkSpec(k ServiceKey) string {
	if k.Addr.Is6() {
		return fmt.Sprintf("-f %d -6", k.FWMark)
	}
	return fmt.Sprintf("-f %d", k.FWMark)
}

// Forwarded-probe marks are ProbeMarkBase | a 24-bit hash, so `ipvsadm -Ln` shows
// kubal's helper services as FWM 1258291200..1275068415 (0x4b000000..0x4bffffff,
// 0x4b = 'K').
const (
	ProbeMarkBase uint32 = 0x4b000000
	ProbeMarkMask uint32 = 0x00ffffff
)

// ProbeMark is the firewall mark of the forwarded probes of the service k to the
// real server at addr: a pure function of the two, so a restart finds the same marks
// in the kernel and adopts them. Two pairs may collide (1 in 2^24 per pair);
// plan.ProbePools then creates neither helper.
func ProbeMark(k ServiceKey, server netip.Addr) uint32 {
	// FNV-1a over the service key and the server address.
	h := uint32(2166136261)
	add := func(b ...byte) {
		for _, c := range b {
			h ^= uint32(c)
			h *= 16777619
		}
	}
	add([]byte(k.Protocol)...)
	a := k.Addr.As16()
	add(a[:]...)
	add(byte(k.Port>>8), byte(k.Port))
	s := server.As16()
	add(s[:]...)
	return ProbeMarkBase | h&ProbeMarkMask
}

// IsProbeMark reports whether mark is in kubal's forwarded-probe range.
func IsProbeMark(mark uint32) bool { return mark&^ProbeMarkMask == ProbeMarkBase }
