package config

import "slices"

// restartOnlyKeys are the [global] settings read once at start (the BGP sessions, the
// state file). A reload applies everything else - services, sources,
// monitors, thresholds and the announcements' attributes - and reports these as
// needing a restart instead of ignoring them silently.
var restartOnlyKeys = []struct {
	key  string
	same func(a, b *Global) bool
}{
	{"bgp-local-asn", func(a, b *Global) bool { return a.BGPLocalASN == b.BGPLocalASN }},
	{"bgp-peer-address", func(a, b *Global) bool { return slices.Equal(a.BGPPeerAddresses, b.BGPPeerAddresses) }},
	{"bgp-local-ips", func(a, b *Global) bool { return slices.Equal(a.BGPLocalIPs, b.BGPLocalIPs) }},
	{"bgp-local-port", func(a, b *Global) bool { return a.BGPLocalPort == b.BGPLocalPort }},
	{"bgp-hold-time", func(a, b *Global) bool { return a.BGPHoldTime == b.BGPHoldTime }},
	{"bgp-bfd", func(a, b *Global) bool {
		return a.BGPBFD == b.BGPBFD && a.BGPBFDMinRx == b.BGPBFDMinRx && a.BGPBFDMinTx == b.BGPBFDMinTx && a.BGPBFDMultiplier == b.BGPBFDMultiplier
	}},
	{"bgp-graceful-restart", func(a, b *Global) bool { return a.BGPGracefulRestart == b.BGPGracefulRestart }},
	{"state-file", func(a, b *Global) bool { return a.StateFile == b.StateFile }},
}

// RestartNeeded lists the restart-only [global] settings that differ between the
// config kubal started with and cfg.
func RestartNeeded(started, cfg *Config) []string {
	var out []string
	for _, k := range restartOnlyKeys {
		if !k.same(&started.Global, &cfg.Global) {
			out = append(out, k.key)
		}
	}
	return out
}

// listenerKeys are the [global] settings of the HTTP listeners: a reload restarts the
// listeners when one changed (see ListenersChanged).
var listenerKeys = []struct {
	key  string
	same func(a, b *Global) bool
}{
	{"instrumentation", func(a, b *Global) bool {
		return a.Instrumentation == b.Instrumentation && a.InstrumentationPort == b.InstrumentationPort && slices.Equal(a.InstrumentationIPs, b.InstrumentationIPs)
	}},
	{"admin", func(a, b *Global) bool {
		return a.AdminPort == b.AdminPort && slices.Equal(a.AdminIPs, b.AdminIPs) && a.AdminTokenFile == b.AdminTokenFile &&
			a.AdminTLSCert == b.AdminTLSCert && a.AdminTLSKey == b.AdminTLSKey && a.AdminClientCA == b.AdminClientCA
	}},
}

// ListenersChanged reports whether the instrumentation or admin listener settings
// differ between a and b.
func ListenersChanged(a, b *Global) bool {
	for _, k := range listenerKeys {
		if !k.same(a, b) {
			return true
		}
	}
	return false
}
