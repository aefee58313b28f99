package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// baseService is a valid service; conf() edits it.
var baseService = []string{
	"protocol = tcp",
	"ip = 10.0.0.1",
	"port = 80",
	"scheduler = wrr",
	"config = file:///etc/pybal/pools/svc",
	"monitors = ['IdleConnection']",
}

// conf renders "[global]" with global lines (if any), then section("svc", edits...).
func conf(global []string, edits ...string) string {
	var b strings.Builder
	if global != nil {
		b.WriteString("[global]\n" + strings.Join(global, "\n") + "\n\n")
	}
	b.WriteString(section("svc", edits...))
	return b.String()
}

// section renders [name] with baseService edited by edits: "key = v" replaces or adds
// that key, "-key" removes it.
func section(name string, edits ...string) string {
	lines := append([]string(nil), baseService...)
	for _, e := range edits {
		if strings.HasPrefix(e, "-") {
			k := e[1:]
			for i, l := range lines {
				if keyOf(l) == k {
					lines = append(lines[:i], lines[i+1:]...)
					break
				}
			}
			continue
		}
		replaced := false
		for i, l := range lines {
			if keyOf(l) == keyOf(e) {
				lines[i], replaced = e, true
			}
		}
		if !replaced {
			lines = append(lines, e)
		}
	}
	return "[" + name + "]\n" + strings.Join(lines, "\n") + "\n"
}

func keyOf(line string) string {
	i := strings.IndexAny(line, ":=")
	if i < 0 {
		return line
	}
	return strings.TrimSpace(line[:i])
}

// lineOf returns the line number of the first line of text that starts with prefix.
func lineOf(t *testing.T, text, prefix string) int {
	t.Helper()
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return i + 1
		}
	}
	t.Fatalf("no line starts with %q in:\n%s", prefix, text)
	return 0
}

// finding is one expected diagnostic: on the line starting with at, for key, with a
// message containing msg.
type finding struct{ at, key, msg string }

func TestValidation(t *testing.T) {
	etcd := []string{"etcd-endpoints = http://127.0.0.1:2379"}
	bgpOn := []string{"bgp = yes", "bgp-local-asn = 64600", "bgp-peer-address = 192.0.2.254",
		"bgp-nexthop-ipv4 = 192.0.2.1"}
	tests := []struct {
		name   string
		text   string
		errs   []finding
		warns  []finding
		global []string
	}{
		{name: "valid base", text: conf(nil)},
		{name: "missing protocol", text: conf(nil, "-protocol"), errs: []finding{{"[svc]", "protocol", "required key missing in [svc]"}}},
		{name: "missing every required key", text: "[svc]\nmonitors = []\n", errs: []finding{
			{"[svc]", "protocol", "required"}, {"[svc]", "ip", "required"}, {"[svc]", "port", "required"},
			{"[svc]", "scheduler", "required"}, {"[svc]", "config", "required"}},
			warns: []finding{{"monitors", "monitors", "empty list"}}},
		{name: "protocol sctp", text: conf(nil, "protocol = sctp"), errs: []finding{{"protocol", "protocol", `"sctp" is not one of tcp, udp`}}},
		{name: "protocol is case-sensitive", text: conf(nil, "protocol = TCP"), errs: []finding{{"protocol", "protocol", `write "tcp"`}}},
		{name: "unknown scheduler", text: conf(nil, "scheduler = maglev"), errs: []finding{{"scheduler", "scheduler", `"maglev" is not one of rr, wrr`}}},
		{name: "every scheduler is known", text: conf(nil, "scheduler = lblcr")},
		{name: "mh scheduler (SPEC §12)", text: conf(nil, "scheduler = mh")},
		{name: "ops with tcp", text: conf(nil, "ops = yes"), errs: []finding{{"ops", "ops", "only for udp"}}},
		{name: "ops with udp", text: conf(nil, "protocol = udp", "ops = true")},
		{name: "bad ip", text: conf(nil, "ip = 10.0.0.300"), errs: []finding{{"ip", "ip", "not an IP address"}}},
		{name: "hostname as ip", text: conf(nil, "ip = text-lb.example.org"), errs: []finding{{"ip", "ip", "not an IP address"}}},
		{name: "unspecified ip", text: conf(nil, "ip = 0.0.0.0"), errs: []finding{{"ip", "ip", "cannot be a service address"}}},
		{name: "v4-mapped ip", text: conf(nil, "ip = ::ffff:10.0.0.1"), errs: []finding{{"ip", "ip", "IPv4-mapped"}}},
		{name: "ipv6 ip", text: conf(nil, "ip = 2001:db8::1")},
		{name: "port 0", text: conf(nil, "port = 0"), errs: []finding{{"port", "port", "out of range [1, 65535]"}}},
		{name: "port 65536", text: conf(nil, "port = 65536"), errs: []finding{{"port", "port", "out of range"}}},
		{name: "port not a number", text: conf(nil, "port = http"), errs: []finding{{"port", "port", `not an integer: "http"`}}},
		{name: "threshold 1.1", text: conf(nil, "depool-threshold = 1.1"), errs: []finding{{"depool-threshold", "depool-threshold", "outside [0, 1]"}}},
		{name: "threshold -0.1", text: conf(nil, "depool-threshold = -0.1"), errs: []finding{{"depool-threshold", "depool-threshold", "outside [0, 1]"}}},
		{name: "threshold nan", text: conf(nil, "depool-threshold = nan"), errs: []finding{{"depool-threshold", "depool-threshold", "not a number"}}},
		{name: "threshold bounds are allowed", text: conf(nil, "depool-threshold = 1")},
		{name: "unknown monitor", text: conf(nil, "monitors = ['ProxyFetch', 'HTTP']"), errs: []finding{{"monitors", "monitors", `unknown monitor "HTTP"`}},
			warns: []finding{}},
		{name: "monitor names are case-sensitive", text: conf(nil, "monitors = ['proxyfetch']"), errs: []finding{{"monitors", "monitors", `write "ProxyFetch"`}}},
		{name: "monitors does not parse", text: conf(nil, "monitors = [ProxyFetch"), errs: []finding{{"monitors", "monitors", "does not parse"}}},
		{name: "monitors is not a list of strings", text: conf(nil, "monitors = [1]"), errs: []finding{{"monitors", "monitors", "not a string"}}},
		{name: "monitors missing", text: conf(nil, "-monitors"), warns: []finding{{"[svc]", "monitors", "never health-checked"}}},
		{name: "monitor listed twice", text: conf(nil, "monitors = ['TCP', 'TCP']"), warns: []finding{{"monitors", "monitors", "listed twice"}}},
		{name: "unsupported config scheme", text: conf(nil, "config = ftp://x/y"), errs: []finding{{"config", "config", "unsupported URL"}}},
		{name: "file config without absolute path", text: conf(nil, "config = file://pools/x"), errs: []finding{{"config", "config", "absolute path"}}},
		{name: "http config without host", text: conf(nil, "config = http:///x"), errs: []finding{{"config", "config", "no host"}}},
		{name: "etcd config without key", text: conf(nil, "config = etcd://conf1001:4001/"), errs: []finding{{"config", "config", "etcd://host"}}},
		{name: "https and k8s config", text: conf(nil, "config = https://config-master/pybal/eqiad/text") + "\n[k]\nprotocol = tcp\nip = 10.0.0.2\nport = 80\nscheduler = rr\nconfig = k8s://?nodes=a%%3Db&endpoints=ns/svc\nmonitors = []\n",
			warns: []finding{{"monitors = []", "monitors", "empty list"}}},
		{name: "bad boolean", text: conf(nil, "bgp = maybe"), errs: []finding{{"bgp", "bgp", `not a boolean: "maybe"`}}},
		{name: "bad bgp-med", text: conf(nil, "bgp-med = -1"), errs: []finding{{"bgp-med", "bgp-med", "out of range"}}},
		{name: "bgp on without asn", global: []string{"bgp = yes", "bgp-peer-address = 192.0.2.254", "bgp-nexthop-ipv4 = 192.0.2.1"},
			errs: []finding{{"[global]", "bgp-local-asn", "required when bgp = yes"}}},
		{name: "bgp on without v4 next hop", global: bgpOn[:3],
			errs: []finding{{"[global]", "bgp-nexthop-ipv4", "required"}}},
		// bgp.New needs an IPv4 router ID even without IPv4 announcements (issue 12: this
		// passed --check-config and then the daemon refused to start).
		{name: "no v4 service: the router ID is still needed", global: bgpOn[:3], text: conf(bgpOn[:3], "bgp = no"),
			errs: []finding{{"[global]", "bgp-nexthop-ipv4", "needed as the BGP router ID"}}},
		{name: "no v4 service: router ID from bgp-local-ips", global: append(bgpOn[:3:3], "bgp-local-ips = ['192.0.2.9']"),
			text: conf(append(bgpOn[:3:3], "bgp-local-ips = ['192.0.2.9']"), "bgp = no")},
		{name: "unspecified next hop", global: []string{"bgp-nexthop-ipv4 = 0.0.0.0"},
			errs: []finding{{"bgp-nexthop-ipv4", "bgp-nexthop-ipv4", "cannot be a next hop"}}},
		{name: "duplicate and unspecified peers", global: []string{"bgp-peer-address = ['192.0.2.1', '::ffff:192.0.2.1', '::']"},
			errs: []finding{{"bgp-peer-address", "bgp-peer-address", "peer 192.0.2.1 listed twice"},
				{"bgp-peer-address", "bgp-peer-address", ":: cannot be a BGP peer"}}},
		{name: "well-known communities", global: []string{"bgp-communities = no-export, BLACKHOLE, 64496:1"},
			warns: []finding{{"bgp-communities", "bgp-communities", "has no effect: bgp = no"}}},
		// Issue 19: kubal keys without an effect warn consistently.
		{name: "bgp keys with bgp off", global: []string{"bgp-hold-time = 90", "bgp-graceful-restart = yes", "admin_port = 9191", "kubeconfig = /k"},
			text: conf([]string{"bgp-hold-time = 90", "bgp-graceful-restart = yes", "admin_port = 9191", "kubeconfig = /k"}, "bgp-withdraw-when-empty = yes"),
			warns: []finding{{"bgp-hold-time", "bgp-hold-time", "has no effect: bgp = no"},
				{"bgp-graceful-restart", "bgp-graceful-restart", "has no effect: bgp = no"},
				{"admin_port", "admin_port", "admin API starts only with"},
				{"kubeconfig", "kubeconfig", "no service has config = k8s://"},
				{"bgp-withdraw-when-empty", "bgp-withdraw-when-empty", "has no effect: bgp is off in [global]"}}},
		{name: "service bgp = no", global: bgpOn, text: conf(bgpOn, "bgp-communities = 1:2", "bgp-withdraw-when-empty = yes", "bgp = no", "ip = 10.0.0.9") +
			section("svc2", "port = 81", "bgp-withdraw-when-empty = yes"),
			warns: []finding{{"bgp-communities", "bgp-communities", "has no effect: bgp = no for [svc]"},
				{"bgp-withdraw-when-empty", "bgp-withdraw-when-empty", "has no effect: bgp = no for [svc]"}}},
		{name: "vip-interface without vip-addresses", text: conf(nil, "vip-interface = dummy0"),
			warns: []finding{{"vip-interface", "vip-interface", "only with vip-addresses = yes"}}},
		// Issue 18: active-active needs the same real server for a flow on every director.
		{name: "active-active needs mh", text: conf(nil, "active-active = yes"),
			errs: []finding{{"active-active", "active-active", "[svc] is active-active and needs scheduler = mh, not wrr"}}},
		{name: "active-active with mh", text: conf(nil, "active-active = yes", "scheduler = mh")},
		{name: "active-active from [global]", global: []string{"active-active = yes"}, text: conf([]string{"active-active = yes"}) + "\n" + section("svc2", "port = 81", "scheduler = mh"),
			errs: []finding{{"[svc]", "active-active", "active-active (active-active = yes in [global]) and needs scheduler = mh"}}},
		{name: "a service opts out of [global] active-active", text: conf([]string{"active-active = yes"}, "active-active = no")},
		{name: "vip-interface with vip-addresses", global: []string{"vip-addresses = yes"}, text: conf([]string{"vip-addresses = yes"}, "vip-interface = dummy0")},
		{name: "bfd timers without bfd", global: append(bgpOn[:4:4], "bgp-bfd-min-rx = 100"), text: conf(append(bgpOn[:4:4], "bgp-bfd-min-rx = 100")),
			warns: []finding{{"bgp-bfd-min-rx", "bgp-bfd-min-rx", "unless bgp-bfd = yes"}}},
		// PyBal stops with CRITICAL when monitors is not a list (SPEC §1.3).
		// Issue 13: passed the check and panicked on a Prometheus label at start.
		{name: "section name not UTF-8", text: section("text\xff80"),
			errs: []finding{{"[text\xff80]", "", `section name "text\xff80" is not valid UTF-8`}}},
		{name: "section name with a control character", text: section("text\x1b80"),
			errs: []finding{{"[text\x1b80]", "", "control character"}}},
		{name: "monitors is a bare string", text: conf(nil, "monitors = 'IdleConnection'"),
			errs: []finding{{"monitors", "monitors", `a string, not a list: write ["IdleConnection"]`}}},
		{name: "bgp on without v6 next hop", global: bgpOn, text: conf(bgpOn, "ip = 2001:db8::1"),
			errs: []finding{{"[global]", "bgp-nexthop-ipv6", "required"}}},
		{name: "next hop of the wrong family", global: []string{"bgp-nexthop-ipv4 = 2001:db8::1", "bgp-nexthop-ipv6 = 192.0.2.1"},
			errs: []finding{{"bgp-nexthop-ipv4", "bgp-nexthop-ipv4", "not an IPv4"}, {"bgp-nexthop-ipv6", "bgp-nexthop-ipv6", "not an IPv6"}}},
		{name: "bgp on without peers", global: []string{"bgp = yes", "bgp-local-asn = 64600", "bgp-nexthop-ipv4 = 192.0.2.1"},
			warns: []finding{{"[global]", "bgp-peer-address", "no peer"}}},
		{name: "asn 0", global: []string{"bgp-local-asn = 0"}, errs: []finding{{"bgp-local-asn", "bgp-local-asn", "out of range [1, 4294967295]"}}},
		{name: "asn 2^32", global: []string{"bgp-local-asn = 4294967296"}, errs: []finding{{"bgp-local-asn", "bgp-local-asn", "out of range"}}},
		{name: "4-byte asn", global: []string{"bgp-local-asn = 4200000000"}},
		{name: "bad as path", global: []string{"bgp-as-path = 64600 x 0"}, errs: []finding{
			{"bgp-as-path", "bgp-as-path", `"x" is not an AS number`}, {"bgp-as-path", "bgp-as-path", `"0" is not an AS number`}}},
		{name: "bad peer address", global: []string{"bgp-peer-address = ['192.0.2.1', 'router1']"},
			errs: []finding{{"bgp-peer-address", "bgp-peer-address", `not an IP address: "router1"`}}},
		{name: "peer list does not parse", global: []string{"bgp-peer-address = ['192.0.2.1'"},
			errs: []finding{{"bgp-peer-address", "bgp-peer-address", "does not parse"}}},
		{name: "bad community", global: []string{"bgp-communities = 64496:100, 65536:1, nope"}, errs: []finding{
			{"bgp-communities", "bgp-communities", `"65536:1" is not a standard community`},
			{"bgp-communities", "bgp-communities", `"nope" is not a standard community`}}},
		{name: "bad service community", text: conf(nil, "bgp-communities = ['1:2:3']"),
			errs: []finding{{"bgp-communities", "bgp-communities", "not a standard community"}}},
		{name: "instrumentation_ips does not parse", global: []string{"instrumentation_ips = 127.0.0.1, ::1"},
			errs: []finding{{"instrumentation_ips", "instrumentation_ips", "does not parse"}}},
		{name: "bad instrumentation ip", global: []string{"instrumentation_ips = ['localhost']"},
			errs: []finding{{"instrumentation_ips", "instrumentation_ips", "not an IP address"}}},
		{name: "bad ports in global", global: []string{"instrumentation_port = 0", "admin_port = 70000", "bgp-local-port = x"}, errs: []finding{
			{"instrumentation_port", "instrumentation_port", "out of range"}, {"admin_port", "admin_port", "out of range"},
			{"bgp-local-port", "bgp-local-port", "not an integer"}}},
		{name: "hold time 2", global: []string{"bgp-hold-time = 2"}, errs: []finding{{"bgp-hold-time", "bgp-hold-time", "at least 3"}}},
		{name: "bfd values", global: []string{"bgp-bfd-min-rx = 0", "bgp-bfd-min-tx = fast", "bgp-bfd-multiplier = 256"}, errs: []finding{
			{"bgp-bfd-min-rx", "bgp-bfd-min-rx", "out of range"}, {"bgp-bfd-min-tx", "bgp-bfd-min-tx", "not an integer"},
			{"bgp-bfd-multiplier", "bgp-bfd-multiplier", "out of range [1, 255]"}}},
		{name: "tls halves", global: []string{"etcd-cert = /c", "admin-tls-key = /k", "admin-client-ca = /ca"}, errs: []finding{
			{"etcd-cert", "etcd-cert", "set without etcd-key"}, {"admin-tls-key", "admin-tls-key", "set without admin-tls-cert"},
			{"admin-client-ca", "admin-client-ca", "need TLS"}}},
		{name: "etcd endpoints", global: []string{"etcd-endpoints = http://127.0.0.1:2379, etcd1:2379, ftp://x, nope"},
			errs: []finding{{"etcd-endpoints", "etcd-endpoints", `"ftp://x" is not an etcd endpoint`},
				{"etcd-endpoints", "etcd-endpoints", `"nope" is not an etcd endpoint`}},
			warns: []finding{{"etcd-endpoints", "etcd-endpoints", `"etcd1:2379" is reached without TLS`}}},
		{name: "relative paths", global: []string{"state-file = state.json", "conftool-prefix = conftool/v1"}, errs: []finding{
			{"state-file", "state-file", "absolute path"}, {"conftool-prefix", "conftool-prefix", "absolute"}}},
		{name: "tunneling = true", text: conf(nil, "tunneling = true")},
		{name: "tunneling conflicts with forwarding", text: conf(nil, "tunneling = yes", "forwarding = nat"),
			errs: []finding{{"forwarding", "forwarding", "conflicts with tunneling = yes"}}},
		{name: "tunneling = no conflicts with forwarding = tunnel", text: conf(nil, "tunneling = no", "forwarding = tunnel"),
			errs: []finding{{"forwarding", "forwarding", "conflicts"}}},
		{name: "tunneling agrees with forwarding", text: conf(nil, "tunneling = yes", "forwarding = tunnel")},
		{name: "bad forwarding", text: conf(nil, "forwarding = masq"), errs: []finding{{"forwarding", "forwarding", "not one of dr, tunnel, nat"}}},
		{name: "bad depool-mode", text: conf(nil, "depool-mode = weight0"), errs: []finding{{"depool-mode", "depool-mode", "not one of delete, drain"}}},
		{name: "drain-timeout without drain", text: conf(nil, "drain-timeout = 5"), warns: []finding{{"drain-timeout", "drain-timeout", "no effect unless depool-mode = drain"}}},
		{name: "bad drain-timeout", text: conf(nil, "depool-mode = drain", "drain-timeout = -1"), errs: []finding{{"drain-timeout", "drain-timeout", "not a number of seconds"}}},
		{name: "scheduler flag for another scheduler", text: conf(nil, "scheduler = sh", "scheduler-flags = mh-port"),
			errs: []finding{{"scheduler-flags", "scheduler-flags", `"mh-port" is for scheduler mh, not sh`}}},
		{name: "scheduler flag with wrr", text: conf(nil, "scheduler-flags = ['sh-port']"),
			errs: []finding{{"scheduler-flags", "scheduler-flags", "not wrr"}}},
		{name: "unknown scheduler flag", text: conf(nil, "scheduler = sh", "scheduler-flags = sh-persist"),
			errs: []finding{{"scheduler-flags", "scheduler-flags", "unknown flag"}}},
		{name: "bad conftool", global: etcd, text: conf(etcd, "conftool = eqiad/text"), errs: []finding{{"conftool", "conftool", "not dc/cluster/service"}}},
		{name: "conftool with ..", global: etcd, text: conf(etcd, "conftool = eqiad/../x"), errs: []finding{{"conftool", "conftool", "not dc/cluster/service"}}},
		{name: "conftool without etcd", text: conf(nil, "conftool = eqiad/text/varnish"), errs: []finding{{"conftool", "conftool", "set etcd-endpoints"}}},
		{name: "conftool with etcd", global: etcd, text: conf(etcd, "conftool = eqiad/text/varnish")},
		{name: "k8s-taints are keys", text: conf(nil, "config = k8s://?nodes=x", "k8s-taints = a, b=c:NoSchedule"),
			errs: []finding{{"k8s-taints", "k8s-taints", `"b=c:NoSchedule" is not a taint key`}}},
		{name: "bad vip-interface", text: conf(nil, "vip-interface = a/b"), errs: []finding{{"vip-interface", "vip-interface", "not a network interface name"}}},
		{name: "bad k8s-cordoned", text: conf(nil, "config = k8s://?nodes=x", "k8s-cordoned = drop"), errs: []finding{{"k8s-cordoned", "k8s-cordoned", "not one of depool, keep"}}},
		{name: "k8s keys without k8s://", text: conf(nil, "k8s-taints = a, b"), warns: []finding{{"k8s-taints", "k8s-taints", "no effect"}}},
		{name: "unknown service key", text: conf(nil, "schedular = wrr"), warns: []finding{{"schedular", "schedular", `unknown key in [svc]; ignored (did you mean "scheduler"?)`}}},
		{name: "global key in a service", text: conf(nil, "bgp-local-asn = 1"), warns: []finding{{"bgp-local-asn", "bgp-local-asn", "it is a [global] key"}}},
		{name: "unknown global key", global: []string{"instrumentation_ip = ['::1']"}, warns: []finding{{"instrumentation_ip", "instrumentation_ip", `did you mean "instrumentation_ips"?`}}},
		{name: "service key in global", global: []string{"scheduler = wrr"}, warns: []finding{{"scheduler", "scheduler", "per-service key"}}},
		{name: "unknown monitor option", text: conf(nil, "idleconnection.maxdelay = 300"), warns: []finding{{"idleconnection.maxdelay", "idleconnection.maxdelay", `unknown IdleConnection option "maxdelay"`}}},
		{name: "option of an unused monitor", text: conf(nil, "proxyfetch.url = ['http://x/']"), warns: []finding{{"proxyfetch.url", "proxyfetch.url", "not in this service's monitors"}}},
		{name: "kubal monitor options", text: conf(nil, "monitors = ['ProxyFetch', 'TCP']", "proxyfetch.url = ['http://x/']", "proxyfetch.port = 15021", "proxyfetch.rise = 2", "tcp.fall = 3")},
		{name: "cli keys are ignored with a warning", text: conf(nil, "debug = yes", "dryrun = yes", "conffile = /x"), warns: []finding{
			{"debug", "debug", "-d/--debug"}, {"dryrun", "dryrun", "-n/--dryrun"}, {"conffile", "conffile", "-c"}}},
		{name: "[Global] is a service", text: "[Global]\nbgp = yes\n", errs: []finding{
			{"[Global]", "protocol", "required"}, {"[Global]", "ip", "required"}, {"[Global]", "port", "required"},
			{"[Global]", "scheduler", "required"}, {"[Global]", "config", "required"}},
			warns: []finding{{"[Global]", "", "only [global] (lower case)"}, {"[Global]", "monitors", "never health-checked"}}},
		{name: "same virtual service twice", text: conf(nil) + section("svc2"),
			errs: []finding{{"[svc2]", "", "same virtual service (tcp 10.0.0.1:80) as [svc]"}}},
		{name: "MED disagreement on one IP", text: conf(nil, "bgp-med = 10") + section("svc443", "port = 443", "bgp-med = 20"),
			errs: []finding{{"bgp-med = 20", "bgp-med", "MED 20 but [svc]"}}},
		{name: "MED set vs unset on one IP", text: conf(nil, "bgp-med = 10") + section("svc443", "port = 443"),
			errs: []finding{{"[svc443]", "bgp-med", "MED unset"}}},
		{name: "MED disagreement ignored when bgp is off for one", text: conf(nil, "bgp-med = 10") + section("svc443", "port = 443", "bgp = no")},
		{name: "inline # comment in a value", text: conf(nil, "scheduler = wrr # round robin"),
			errs: []finding{{"scheduler", "scheduler", "inline '# comment'"}}},
		{name: "inline ; comment in a value", text: conf(nil, "scheduler = wrr ; round robin")},
		{name: "[DEFAULT] values reach every section", text: "[DEFAULT]\nscheduler = rr\nconfig = file:///p/%(__name__)s\nmonitors = []\nbogus = 1\n" +
			"[a]\nprotocol = tcp\nip = 10.0.0.1\nport = 80\n[b]\nprotocol = tcp\nip = 10.0.0.1\nport = 81\n",
			warns: []finding{{"monitors", "monitors", "servers of [a]"}, {"monitors", "monitors", "servers of [b]"},
				{"bogus", "bogus", "unknown key in [DEFAULT]"}}},
		{name: "a bad [DEFAULT] value is reported once", text: "[DEFAULT]\nport = x\n[a]\nprotocol = tcp\nip = 10.0.0.1\nscheduler = rr\nconfig = file:///a\n" +
			"[b]\nprotocol = tcp\nip = 10.0.0.2\nscheduler = rr\nconfig = file:///b\n",
			errs:  []finding{{"port", "port", "not an integer"}},
			warns: []finding{{"[a]", "monitors", "never"}, {"[b]", "monitors", "never"}}},
		{name: "helper variables used in %(name)s are not unknown", text: "[DEFAULT]\nsite = eqiad\n" + conf([]string{"vip-addresses = yes"}, "config = file:///p/%(site)s/svc", "pool = text", "vip-interface = %(pool)s0")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := tt.text
			if text == "" {
				text = conf(tt.global)
			}
			cfg, err := Parse("t.conf", []byte(text))
			var errs Diagnostics
			if err != nil {
				if !errors.As(err, &errs) {
					t.Fatalf("error is %T, want Diagnostics", err)
				}
			}
			expect(t, "error", text, errs, tt.errs)
			if tt.warns != nil || cfg != nil {
				expect(t, "warning", text, cfg.Warnings, tt.warns)
			}
		})
	}
}

func expect(t *testing.T, kind, text string, got Diagnostics, want []finding) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d %ss, want %d:\n%v\n--- config:\n%s", len(got), kind, len(want), got.Error(), text)
	}
	for i, w := range want {
		d := got[i]
		line := lineOf(t, text, w.at)
		if d.Pos.Line != line || d.Pos.File != "t.conf" || d.Key != w.key || !strings.Contains(d.Msg, w.msg) {
			t.Errorf("%s %d = %q\nwant t.conf:%d key %q containing %q", kind, i, d.String(), line, w.key, w.msg)
		}
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("t.conf", []byte(conf(nil)))
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Global
	wantG := Global{
		BGPLocalIPs:         []string{""},
		BGPLocalPort:        179,
		InstrumentationPort: 9090,
		InstrumentationIPs:  []string{"127.0.0.1", "::1"},
		ConftoolPrefix:      "/conftool/v1/pools",
		AdminPort:           9091,
		AdminIPs:            []string{"127.0.0.1", "::1"},
		StateFile:           "/var/lib/kubal/state.json",
		BGPHoldTime:         180 * time.Second,
		BGPBFDMinRx:         300 * time.Millisecond,
		BGPBFDMinTx:         300 * time.Millisecond,
		BGPBFDMultiplier:    3,
		Options:             Options{},
	}
	if !reflect.DeepEqual(g, wantG) {
		t.Errorf("Global defaults:\n got %+v\nwant %+v", g, wantG)
	}
	s := cfg.Services[0]
	want := &Service{
		Name: "svc", Pos: Pos{"t.conf", 1},
		Protocol: "tcp", IP: netip.MustParseAddr("10.0.0.1"), Port: 80, Scheduler: "wrr",
		ConfigURL: "file:///etc/pybal/pools/svc", BGP: true, DepoolThreshold: 0.5,
		Monitors: []string{"IdleConnection"}, Forwarding: ForwardDR, DepoolMode: DepoolDelete,
		DrainTimeout: 60 * time.Second, VIPInterface: "lo", K8sCordoned: "depool",
		PoolUnchecked: true, Options: s.Options,
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("Service defaults:\n got %+v\nwant %+v", s, want)
	}
	if got := s.Options["port"]; got != (Value{Raw: "80", Pos: Pos{"t.conf", 4}}) {
		t.Errorf("Options[port] = %+v", got)
	}
}

func TestAllKeys(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "kubal-full.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("unexpected warnings:\n%v", cfg.Warnings.Error())
	}
	g := cfg.Global
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	wantG := Global{
		BGP: true, BGPLocalASN: 4200000001, BGPASPath: []uint32{4200000001, 64511}, BGPMED: 10,
		BGPNextHopIPv4: netip.MustParseAddr("192.0.2.100"), BGPNextHopIPv6: netip.MustParseAddr("2001:db8:1:1::100"),
		BGPPeerAddresses: addrs("192.0.2.254", "2001:db8::254"), BGPLocalIPs: []string{"192.0.2.100"}, BGPLocalPort: 1179,
		Instrumentation: true, InstrumentationPort: 9190, InstrumentationIPs: []string{"0.0.0.0"},
		EtcdEndpoints: []string{"https://etcd1.eqiad.wmnet:2379", "https://etcd2.eqiad.wmnet:2379"},
		EtcdCA:        "/etc/ssl/etcd-ca.pem", EtcdCert: "/etc/ssl/kubal.pem", EtcdKey: "/etc/ssl/kubal.key",
		ConftoolPrefix: "/conftool/v2/pools", Kubeconfig: "/etc/kubal/kubeconfig",
		AdminPort: 9191, AdminIPs: []string{"::1"}, AdminTokenFile: "/etc/kubal/tokens",
		AdminTLSCert: "/etc/kubal/admin.pem", AdminTLSKey: "/etc/kubal/admin.key", AdminClientCA: "/etc/kubal/clients-ca.pem",
		StateFile: "/srv/kubal/state.json", BGPHoldTime: 90 * time.Second, BGPCommunities: []string{"64496:100", "64496:200"},
		BGPBFD: true, BGPBFDMinRx: 150 * time.Millisecond, BGPBFDMinTx: 200 * time.Millisecond, BGPBFDMultiplier: 5,
		BGPGracefulRestart: true,
		VIPAddresses:       true,
		Options:            g.Options,
	}
	if !reflect.DeepEqual(g, wantG) {
		t.Errorf("Global:\n got %+v\nwant %+v", g, wantG)
	}
	if len(cfg.Services) != 2 {
		t.Fatalf("got %d services", len(cfg.Services))
	}
	med := uint32(20)
	in := cfg.Services[0]
	wantIn := &Service{
		Name: "ingress_443", Pos: in.Pos, Protocol: "tcp", IP: netip.MustParseAddr("2001:db8::443"), Port: 443,
		Scheduler: "mh", ConfigURL: "k8s://prod?nodes=role%3Dingress&endpoints=istio-system/ingressgateway",
		BGP: true, BGPMED: &med, DepoolThreshold: 0.66, Monitors: []string{"ProxyFetch", "TCP"},
		Forwarding: ForwardTunnel, SchedulerFlags: []string{"mh-port", "mh-fallback"}, DepoolMode: DepoolDrain,
		DrainTimeout: 30500 * time.Millisecond, BGPCommunities: []string{"64496:443"}, BGPWithdrawWhenEmpty: true,
		VIPInterface: "vip0", K8sCordoned: "keep",
		K8sTaints: []string{"node.kubernetes.io/unschedulable", "example.com/maintenance"},
		Options:   in.Options, // pool-unchecked = no

	}
	if !reflect.DeepEqual(in, wantIn) {
		t.Errorf("ingress_443:\n got %+v\nwant %+v", in, wantIn)
	}
	if !in.IPv6() {
		t.Error("ingress_443 should be IPv6")
	}
	dns := cfg.Services[1]
	wantDNS := &Service{
		Name: "dns_53_udp", Pos: dns.Pos, Protocol: "udp", IP: netip.MustParseAddr("192.0.2.53"), Port: 53,
		Scheduler: "sh", OPS: true, ConfigURL: "file:///etc/pybal/pools/dns_53_udp", BGP: false,
		DepoolThreshold: 0.5, Monitors: []string{"DNSQuery", "UDP"}, Forwarding: ForwardNAT,
		SchedulerFlags: []string{"sh-port"}, DepoolMode: DepoolDelete, DrainTimeout: 60 * time.Second,
		Conftool: "eqiad/dns/recursor", VIPInterface: "lo", K8sCordoned: "depool", PoolUnchecked: true, Options: dns.Options,
	}
	if !reflect.DeepEqual(dns, wantDNS) {
		t.Errorf("dns_53_udp:\n got %+v\nwant %+v", dns, wantDNS)
	}
	// [DEFAULT] monitor options reach every section, with their own position.
	v := dns.Options["idleconnection.max-delay"]
	if v.Raw != "120" || v.Pos.Line != 4 {
		t.Errorf("inherited option = %+v", v)
	}
	if got, err := in.Monitor("ProxyFetch").Int("port", 0); err != nil || got != 15021 {
		t.Errorf("proxyfetch.port = %d, %v", got, err)
	}
}

func TestFixtures(t *testing.T) {
	tests := []struct {
		file     string
		services []string
		keys     []string
		warns    int
	}{
		{"debian-sample.conf", nil, nil, 0},
		{"debian-sample-uncommented.conf", []string{"text", "images", "dns"},
			[]string{"tcp 192.0.2.11:80", "tcp 192.0.2.21:80", "udp 192.0.2.22:53"}, 2},
		{"production-textlb.conf", []string{"textlb_443"}, []string{"tcp 208.80.154.224:443"}, 0},
		{"kubal-full.conf", []string{"ingress_443", "dns_53_udp"}, []string{"tcp [2001:db8::443]:443", "udp 192.0.2.53:53"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cfg, err := Load(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			var names, keys []string
			for _, s := range cfg.Services {
				names = append(names, s.Name)
				keys = append(keys, s.Key())
			}
			if !reflect.DeepEqual(names, tt.services) || !reflect.DeepEqual(keys, tt.keys) {
				t.Errorf("services %v %v, want %v %v", names, keys, tt.services, tt.keys)
			}
			if len(cfg.Warnings) != tt.warns {
				t.Errorf("got %d warnings, want %d:\n%v", len(cfg.Warnings), tt.warns, cfg.Warnings.Error())
			}
		})
	}
}

func TestDebianSample(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "debian-sample-uncommented.conf"))
	if err != nil {
		t.Fatal(err)
	}
	text, _ := cfg.Service("text")
	if text.BGP || text.DepoolThreshold != 0.5 || text.Scheduler != "wlc" {
		t.Errorf("text = %+v", text)
	}
	args, ok, err := text.Monitor("RunCommand").Literal("arguments")
	if err != nil || !ok {
		t.Fatalf("runcommand.arguments: %v %v", ok, err)
	}
	if !reflect.DeepEqual(args.List[1], Literal{Kind: LitName, Str: "server.host"}) {
		t.Errorf("arguments[1] = %v", args.List[1])
	}
	if lo, _ := text.Monitor("RunCommand").Bool("log-output", false); !lo {
		t.Error("runcommand.log-output should be true")
	}
	// The duplicated keys of [images] warn at the second occurrence (last wins).
	if w := cfg.Warnings[0]; w.Pos.Line != 37 || w.Key != "depool-threshold" {
		t.Errorf("warning 0 = %v", w)
	}
	if _, ok := cfg.Service("nope"); ok {
		t.Error("Service(nope) found")
	}
	dns, _ := cfg.Service("dns")
	if fail, err := dns.Monitor("DNSQuery").Bool("fail-on-nxdomain", true); err != nil || fail {
		t.Errorf("dnsquery.fail-on-nxdomain = %v, %v", fail, err)
	}
}

func TestProductionStyle(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "production-textlb.conf"))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services[0]
	if s.Scheduler != "mh" || s.Forwarding != ForwardTunnel || s.DepoolThreshold != 0.66 || s.OPS ||
		!reflect.DeepEqual(s.Monitors, []string{"IdleConnection", "ProxyFetch"}) ||
		s.ConfigURL != "etcd://conf1007.eqiad.wmnet:4001/conftool/v1/pools/eqiad/cache_text/cdn/" {
		t.Errorf("textlb_443 = %+v", s)
	}
	urls, err := s.Monitor("ProxyFetch").Strings("url", nil)
	if err != nil || !reflect.DeepEqual(urls, []string{"https://healthcheck.wikimedia.org/varnish-fe"}) {
		t.Errorf("proxyfetch.url = %q, %v", urls, err)
	}
	g := cfg.Global
	if !g.BGP || g.BGPLocalASN != 64600 || !reflect.DeepEqual(g.BGPASPath, []uint32{64600}) ||
		!reflect.DeepEqual(g.AdvertisedInstrumentationIPs, []string{"10.64.0.11"}) || g.DryRun {
		t.Errorf("global = %+v", g)
	}

	// The same section with SPEC's inline "# needs a newer PyBal" annotations fails,
	// as in PyBal, and the errors say why.
	_, err = Load(filepath.Join("testdata", "production-annotated-errors.conf"))
	var ds Diagnostics
	if !errors.As(err, &ds) || len(ds) != 2 || ds[0].Key != "scheduler" || ds[1].Key != "tunneling" ||
		!strings.Contains(ds[0].Msg, "inline '# comment'") || !strings.Contains(ds[1].Msg, "inline '# comment'") {
		t.Errorf("annotated: %v", err)
	}
}

func TestFiveErrors(t *testing.T) {
	path := filepath.Join("testdata", "five-errors.conf")
	_, err := Load(path)
	var ds Diagnostics
	if !errors.As(err, &ds) {
		t.Fatalf("Load: %v, want Diagnostics", err)
	}
	want := []struct {
		line int
		key  string
	}{{9, "protocol"}, {11, "port"}, {12, "scheduler"}, {14, "depool-threshold"}, {15, "monitors"}}
	if len(ds) != len(want) {
		t.Fatalf("got %d errors, want 5:\n%v", len(ds), err)
	}
	for i, w := range want {
		if ds[i].Pos.File != path || ds[i].Pos.Line != w.line || ds[i].Key != w.key {
			t.Errorf("error %d = %v, want %s:%d %s", i, ds[i], path, w.line, w.key)
		}
	}
	if !strings.HasPrefix(err.Error(), path+":9: protocol: ") || strings.Count(err.Error(), "\n") != 4 {
		t.Errorf("Error() =\n%s", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.conf")
	cfg, err := Load(path)
	var ds Diagnostics
	if cfg != nil || !errors.As(err, &ds) || len(ds) != 1 || !strings.HasPrefix(err.Error(), path+": cannot read config") {
		t.Fatalf("Load(missing) = %v, %v", cfg, err)
	}
}

func TestLoadPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pybal.conf")
	if err := os.WriteFile(path, []byte(conf(nil, "port = x")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err == nil || cfg == nil || cfg.Path != path || !strings.HasPrefix(err.Error(), path+":4: port: ") {
		t.Fatalf("Load = %v, %v", cfg, err)
	}
}

func TestKeyAndSummary(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "kubal-full.conf"))
	if err != nil {
		t.Fatal(err)
	}
	sum := cfg.Summary()
	for _, want := range []string{
		"2 service(s); bgp: AS4200000001, peers 192.0.2.254,2001:db8::254; instrumentation: 0.0.0.0 port 9190",
		"POOL", "ingress_443", "tcp [2001:db8::443]:443", "mh(mh-port,mh-fallback)", "tunnel drain", "0.66",
		"ProxyFetch,TCP", "k8s://prod?nodes=role%3Dingress",
		"dns_53_udp", "udp 192.0.2.53:53", "sh(sh-port) ops", "nat", "DNSQuery,UDP", "file:///etc/pybal/pools/dns_53_udp",
	} {
		if !strings.Contains(sum, want) {
			t.Errorf("Summary lacks %q:\n%s", want, sum)
		}
	}
	if n := strings.Count(sum, "\n"); n != 4 {
		t.Errorf("Summary has %d lines, want 4:\n%s", n, sum)
	}
	s := &Service{Protocol: "udp", IP: netip.MustParseAddr("10.0.0.1"), Port: 53}
	if got := s.Key(); got != "udp 10.0.0.1:53" {
		t.Errorf("Key() = %q", got)
	}
}

func TestMonitorNames(t *testing.T) {
	names := MonitorNames()
	names[0] = "mutated"
	if MonitorNames()[0] != "ProxyFetch" {
		t.Error("MonitorNames shares its backing array")
	}
	if got := MonitorOptionNames("udp"); !reflect.DeepEqual(got, []string{"interval", "icmp-timeout", "port", "rise", "fall"}) {
		t.Errorf("MonitorOptionNames(udp) = %v", got)
	}
	if MonitorOptionNames("HeartBeat") != nil {
		t.Error("unknown monitor has options")
	}
}

func TestPosString(t *testing.T) {
	for _, tt := range []struct {
		p    Pos
		want string
	}{{Pos{"a.conf", 3}, "a.conf:3"}, {Pos{"a.conf", 0}, "a.conf"}} {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}
