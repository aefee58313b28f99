package config

import "strings"

// PathForwarded is the `<monitor>.path` value that sends a monitor's probes along the
// traffic's path (to the VIP, steered to one real server) besides the direct ones.
const PathForwarded = "forwarded"

// Forwarded reports whether the service's monitor name asks for forwarded probes
// (monitor.Validate accepts it only for the monitors that can do them).
func (s *Service) Forwarded(name string) bool {
	return strings.TrimSpace(s.Monitor(name).String("path", "direct")) == PathForwarded
}

// HasForwarded reports whether any monitor of the service asks for forwarded probes.
func (s *Service) HasForwarded() bool {
	for _, m := range s.Monitors {
		if s.Forwarded(m) {
			return true
		}
	}
	return false
}
