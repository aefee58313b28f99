package daemon

import (
	"slices"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
)

// LoadConfig parses and validates a config file, including every monitor's options.
// It is what --check-config runs, so a config it accepts starts.
func LoadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	var diags config.Diagnostics
	for _, svc := range cfg.Services {
		diags = append(diags, monitor.Validate(svc)...)
	}
	if len(diags) > 0 {
		return nil, diags
	}
	return cfg, nil
}

// restartOnlyKeys are the [global] settings read once at start (listeners, the BGP
// sessions, the state file). A reload applies everything else - services, sources,
// monitors, thresholds and the announcements' attributes - and reports these as
// needing a restart instead of ignoring them silently.
var restartOnlyKeys = []struct {
	key  string
	same func(a, b *config.Global) bool
}{
	{"bgp-local-asn", func(a, b *config.Global) bool { return a.BGPLocalASN == b.BGPLocalASN }},
	{"bgp-peer-address", func(a, b *config.Global) bool { return slices.Equal(a.BGPPeerAddresses, b.BGPPeerAddresses) }},
	{"bgp-local-ips", func(a, b *config.Global) bool { return slices.Equal(a.BGPLocalIPs, b.BGPLocalIPs) }},
	{"bgp-local-port", func(a, b *config.Global) bool { return a.BGPLocalPort == b.BGPLocalPort }},
	{"bgp-hold-time", func(a, b *config.Global) bool { return a.BGPHoldTime == b.BGPHoldTime }},
	{"bgp-bfd", func(a, b *config.Global) bool {
		return a.BGPBFD == b.BGPBFD && a.BGPBFDMinRx == b.BGPBFDMinRx && a.BGPBFDMinTx == b.BGPBFDMinTx && a.BGPBFDMultiplier == b.BGPBFDMultiplier
	}},
	{"bgp-graceful-restart", func(a, b *config.Global) bool { return a.BGPGracefulRestart == b.BGPGracefulRestart }},
	{"instrumentation", func(a, b *config.Global) bool {
		return a.Instrumentation == b.Instrumentation && a.InstrumentationPort == b.InstrumentationPort && slices.Equal(a.InstrumentationIPs, b.InstrumentationIPs)
	}},
	{"admin", func(a, b *config.Global) bool {
		return a.AdminPort == b.AdminPort && slices.Equal(a.AdminIPs, b.AdminIPs) && a.AdminTokenFile == b.AdminTokenFile &&
			a.AdminTLSCert == b.AdminTLSCert && a.AdminTLSKey == b.AdminTLSKey && a.AdminClientCA == b.AdminClientCA
	}},
	{"state-file", func(a, b *config.Global) bool { return a.StateFile == b.StateFile }},
}

// restartNeeded lists the restart-only [global] settings that differ between the
// config kubal started with and cfg.
func restartNeeded(started, cfg *config.Config) []string {
	var out []string
	for _, k := range restartOnlyKeys {
		if !k.same(&started.Global, &cfg.Global) {
			out = append(out, k.key)
		}
	}
	return out
}
