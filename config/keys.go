package config

import "strings"

// Known keys. Anything else is reported as a warning with its file:line.

// globalKeys are the [global] keys: PyBal's (SPEC §1.2, §12) and kubal's (DESIGN.md).
var globalKeys = map[string]bool{
	// PyBal
	"bgp": true, "bgp-local-asn": true, "bgp-as-path": true, "bgp-med": true,
	"bgp-nexthop-ipv4": true, "bgp-nexthop-ipv6": true, "bgp-peer-address": true,
	"bgp-local-ips": true, "bgp-local-port": true, "instrumentation": true,
	"instrumentation_port": true, "instrumentation_ips": true,
	"advertised_instrumentation_ips": true, "dry-run": true,
	// kubal
	"etcd-endpoints": true, "etcd-ca": true, "etcd-cert": true, "etcd-key": true,
	"conftool-prefix": true, "kubeconfig": true, "admin_port": true, "admin_ips": true,
	"admin-token-file": true, "admin-tls-cert": true, "admin-tls-key": true,
	"admin-client-ca": true, "state-file": true, "bgp-hold-time": true,
	"bgp-communities": true, "bgp-bfd": true, "bgp-bfd-min-rx": true, "bgp-bfd-min-tx": true,
	"bgp-bfd-multiplier": true, "bgp-graceful-restart": true, "vip-addresses": true,
	"active-active": true, "ipvs-expire-nodest-conn": true,
}

// serviceKeys are the per-service keys (SPEC §1.3, §12, DESIGN.md); `<monitor>.<option>`
// keys are checked separately.
var serviceKeys = map[string]bool{
	// PyBal
	"protocol": true, "ip": true, "port": true, "scheduler": true, "ops": true,
	"config": true, "bgp": true, "bgp-med": true, "depool-threshold": true,
	"monitors": true, "tunneling": true,
	// kubal
	"forwarding": true, "scheduler-flags": true, "depool-mode": true, "drain-timeout": true,
	"bgp-communities": true, "bgp-withdraw-when-empty": true, "conftool": true,
	"vip-interface": true, "k8s-cordoned": true, "k8s-taints": true, "active-active": true,
	"pool-unchecked": true,
}

// cliKeys are keys PyBal reads from every section but always overrides with the
// command line (main.py:102-105), so a value in the file never has an effect.
var cliKeys = map[string]string{
	"debug":    "-d/--debug",
	"dryrun":   "-n/--dryrun",
	"conffile": "-c",
}

var schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"}

// schedulerFlags maps each IPVS scheduler flag to the scheduler it belongs to.
var schedulerFlags = map[string]string{
	"sh-port": "sh", "sh-fallback": "sh", "mh-port": "mh", "mh-fallback": "mh",
}

var configSchemes = []string{"file://", "http://", "https://", "etcd://", "k8s://"}

// monitorTable lists the monitors (PyBal's class names, case-sensitive as in PyBal,
// plus kubal's TCP) and their known option names.
var monitorTable = []struct {
	name    string
	options []string
}{
	{"ProxyFetch", []string{"url", "interval", "timeout", "http_status", "check_all", "max_failures",
		"port", "tls-verify", "ca", "expect-status", "rise", "fall", "path"}},
	{"IdleConnection", []string{"timeout-clean-reconnect", "max-delay", "keepalive", "keepalive-idle",
		"keepalive-interval", "keepalive-retries", "port", "rise", "fall", "path"}},
	{"RunCommand", []string{"command", "arguments", "interval", "timeout", "log-output", "rise", "fall"}},
	{"DNSQuery", []string{"hostnames", "interval", "timeout", "fail-on-nxdomain", "port", "rise", "fall"}},
	{"UDP", []string{"interval", "icmp-timeout", "port", "rise", "fall"}},
	{"TCP", []string{"interval", "timeout", "port", "rise", "fall", "path"}},
}

// MonitorNames returns the monitor names a `monitors` list may contain, in PyBal's
// spelling (names are case-sensitive, as in PyBal).
func MonitorNames() []string {
	out := make([]string, len(monitorTable))
	for i, m := range monitorTable {
		out[i] = m.name
	}
	return out
}

// MonitorOptionNames returns the option names (without the `<monitor>.` prefix) that
// the named monitor knows; nil for an unknown monitor. The name is case-insensitive.
func MonitorOptionNames(monitor string) []string {
	for _, m := range monitorTable {
		if strings.EqualFold(m.name, monitor) {
			return append([]string(nil), m.options...)
		}
	}
	return nil
}

// monitorByPrefix returns the canonical monitor name for a lower-cased key prefix.
func monitorByPrefix(prefix string) (string, bool) {
	for _, m := range monitorTable {
		if strings.ToLower(m.name) == prefix {
			return m.name, true
		}
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
