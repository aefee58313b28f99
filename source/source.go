// Package source defines how kubal learns real servers (the Source interface and its
// Server/Set types) and implements PyBal's file:// and http(s):// server lists.
// Other sources live in their own packages: conftool (etcd://) and k8ssource (k8s://).
package source

import (
	"context"
	"net/netip"
)

// Server is one real server as a source describes it.
type Server struct {
	Host    string     // the name shown in /pools and metrics
	Addr    netip.Addr // zero: resolve Host by DNS (same family as the VIP)
	Weight  int        // PyBal default 10
	Enabled bool       // PyBal default true
	// Reason says why a source marks a server disabled (e.g. "node NotReady"); shown in
	// logs and /pools. Empty when enabled or when the source gives no reason.
	Reason string
	// Down is a health signal from the source (e.g. "node NotReady"), "" for none. It
	// is held to the depool threshold like a failing monitor, unlike Enabled=false.
	Down string
}

// Set is a full server list, keyed by Host.
type Set map[string]Server

// Clone returns a copy of s.
func (s Set) Clone() Set {
	c := make(Set, len(s))
	for k, v := range s {
		c[k] = v
	}
	return c
}

// Events receives what a source learns. Calls come from the source's own goroutine.
type Events interface {
	// Update delivers the full server set: after the first successful read and then
	// whenever it changes.
	Update(Set)
	// Failed reports that the source cannot currently read its servers (nil: recovered).
	// The last Set delivered stays in force: a failing source never empties a pool.
	Failed(err error)
}

// Source is a running server-list source.
type Source interface {
	// Run reads and watches until ctx is done, reporting to ev. It returns only when ctx
	// is done (errors are reported through ev.Failed and retried).
	Run(ctx context.Context, ev Events) error
}

// ProblemReporter is implemented by Events receivers that want per-server data
// problems a source found, such as a malformed conftool value: the server keeps its
// previous state, and the problem is shown (in /alerts) until it is fixed. Sources
// check for it with a type assertion; the map (host -> description) is the full
// current set, empty when everything is fine again.
type ProblemReporter interface {
	Problems(map[string]string)
}
