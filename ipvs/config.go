package ipvs

import (
	"slices"

	"github.com/kubal/kubal/config"
)

// PoolOf builds the desired Pool of a configured service: its IPVS settings from the
// config section, and dests (address, port, weight from the pool state) each given
// the service's forwarding method. The daemon sets KeepExtra itself after a restart.
func PoolOf(s *config.Service, dests []Destination) Pool {
	fwd := Forwarding(s.Forwarding)
	if fwd == "" {
		fwd = DR
	}
	ds := make([]Destination, len(dests))
	for i, d := range dests {
		d.Forwarding = fwd
		ds[i] = d
	}
	return Pool{
		Service: Service{
			ServiceKey: ServiceKey{Protocol: Protocol(s.Protocol), Addr: s.IP, Port: s.Port},
			Scheduler:  s.Scheduler,
			Flags:      slices.Clone(s.SchedulerFlags),
			OPS:        s.OPS,
		},
		Destinations: ds,
		Drain:        s.DepoolMode == config.DepoolDrain,
		DrainTimeout: s.DrainTimeout,
	}
}

// VIPOf is the address a configured service needs on the director.
func VIPOf(s *config.Service) VIP { return VIP{Addr: s.IP, Interface: s.VIPInterface} }
