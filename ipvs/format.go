package ipvs

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ipvsadm -R line formatting, as PyBal writes it (SPEC §5): the dry-run backend prints
// these, and the VM benchmark feeds them to `ipvsadm -R`.

// serviceSpec is `-t 10.0.0.1:80`, `-u [2001:db8::1]:53`.
func serviceSpec(k ServiceKey) string { return k.String() }

// realSpec is PyBal's `-r <ip>`: no port when the destination uses the virtual port
// (ipvsadm then takes the service port), bare IPv6 in that case as PyBal does;
// `[addr]:port` / `addr:port` otherwise.
func realSpec(k ServiceKey, d Destination) string {
	if d.Port == 0 || d.Port == k.Port {
		return "-r " + d.Addr.String()
	}
	return "-r " + netip.AddrPortFrom(d.Addr, d.Port).String()
}

// serviceOpts is ` -s wrr -b sh-port,sh-fallback -o`.
func serviceOpts(s Service) string {
	var b strings.Builder
	if s.Scheduler != "" {
		b.WriteString(" -s " + s.Scheduler)
	}
	if f := canonicalFlags(s.Flags); len(f) > 0 {
		b.WriteString(" -b " + strings.Join(f, ","))
	}
	if s.OPS {
		b.WriteString(" -o")
	}
	return b.String()
}

// destOpts is ` -w N` plus the forwarding flag. kubal always prints `-w`: its weights
// are real (0 is a real 0), unlike PyBal which omits -w for a 0/None weight and so
// gets ipvsadm's default weight 1. DR prints nothing (ipvsadm's default is -g).
func destOpts(d Destination) string {
	s := " -w " + strconv.Itoa(d.Weight)
	switch d.Forwarding {
	case Tunnel:
		s += " -i"
	case NAT:
		s += " -m"
	}
	return s
}

// AddServiceCommand and the functions below return the ipvsadm -R line of one operation.
func AddServiceCommand(s Service) string { return "-A " + serviceSpec(s.ServiceKey) + serviceOpts(s) }
func UpdateServiceCommand(s Service) string {
	return "-E " + serviceSpec(s.ServiceKey) + serviceOpts(s)
}
func DeleteServiceCommand(k ServiceKey) string {
	return "-D " + serviceSpec(k)
}
func AddDestinationCommand(k ServiceKey, d Destination) string {
	return "-a " + serviceSpec(k) + " " + realSpec(k, d) + destOpts(d)
}
func UpdateDestinationCommand(k ServiceKey, d Destination) string {
	return "-e " + serviceSpec(k) + " " + realSpec(k, d) + destOpts(d)
}
func DeleteDestinationCommand(k ServiceKey, d Destination) string {
	return "-d " + serviceSpec(k) + " " + realSpec(k, d)
}

// flagOrder is the order ipvsadm itself prints scheduler flags in.
var flagOrder = []string{"flag-1", "sh-fallback", "mh-fallback", "flag-2", "sh-port", "mh-port", "flag-3"}

// canonicalFlags sorts and de-duplicates scheduler flags so that two equal sets
// compare equal.
func canonicalFlags(f []string) []string {
	if len(f) == 0 {
		return nil
	}
	out := slices.Clone(f)
	rank := func(s string) int {
		if i := slices.Index(flagOrder, s); i >= 0 {
			return i
		}
		return len(flagOrder)
	}
	slices.SortFunc(out, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
	return slices.Compact(out)
}
