// Package pool is PyBal's coordinator (SPEC §4) as a pure state machine: servers with
// enabled/ready/up/pooled state, monitor results ANDed, the depool threshold and the
// pooled-down set. It is the only place that decides pooling. It does no I/O: callers
// feed it events and read its Snapshot.
package pool

import "net/netip"

// ServerConfig is what the server list (plus admin overrides) says about one server.
type ServerConfig struct {
	Host    string
	Addr    netip.Addr // zero until resolved (see Coordinator.Resolved)
	Weight  int
	Enabled bool
	Reason  string // why disabled, when a source or an admin says so
	// Override describes the admin override in force, shown as ServerState.Override.
	Override string
}

// ServerState is the coordinator's view of one server.
type ServerState struct {
	Host    string
	Addr    netip.Addr
	Weight  int
	Enabled bool
	Ready   bool // address known
	Up      bool
	Pooled  bool
	// Monitors holds each configured monitor's last result; a monitor with no result
	// yet is absent.
	Monitors map[string]MonitorResult
	// Why is the human reason for the state when not enabled/up/pooled: the disabled
	// reason, the down reasons of failing monitors, or "pooled down: depool threshold".
	Why string
	// Override is the admin override in force (who, when, what, why), "" for none, as
	// ServerConfig.Override said.
	Override string
	// Awaiting: check-first pooling (Coordinator.SetPoolUnchecked(false)) and this
	// server has not had a verdict from every monitor yet. It is not pooled; a kernel
	// destination it already has (a restart) is kept as it is until then.
	Awaiting bool
}

// MonitorResult is one monitor's last verdict on a server.
type MonitorResult struct {
	Up     bool
	Reason string
}

// TextStatus is PyBal's "<enabled|disabled>/<up|partially up|down>/<pooled|not pooled>":
// "partially up" when not up but a monitor is up, or when there is no address yet
// (no monitor instances then, as in PyBal).
func (s ServerState) TextStatus() string {
	en := "disabled"
	if s.Enabled {
		en = "enabled"
	}
	up := "down"
	switch {
	case s.Up:
		up = "up"
	case !s.Ready:
		// PyBal creates a server's monitors only once it is resolved, and with no
		// monitor calcPartialStatus is True (server.py): a server without an address
		// reads "partially up".
		up = "partially up"
	default:
		for _, m := range s.Monitors {
			if m.Up {
				up = "partially up"
				break
			}
		}
	}
	pooled := "not pooled"
	if s.Pooled {
		pooled = "pooled"
	}
	return en + "/" + up + "/" + pooled
}

// Snapshot is an immutable copy of a coordinator's state.
type Snapshot struct {
	Name           string
	Threshold      float64
	Servers        []ServerState // sorted by Host
	PooledDown     []string      // sorted
	CanDepool      bool
	CouldNotDepool uint64 // pybal_service_could_not_depool_total
}

// Server returns the named server's state.
func (s *Snapshot) Server(host string) (ServerState, bool) {
	for _, sv := range s.Servers {
		if sv.Host == host {
			return sv, true
		}
	}
	return ServerState{}, false
}
