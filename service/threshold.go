package service

import (
	"fmt"
	"math"
	"strconv"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/source"
)

// ThresholdCheck returns the admin check for a change on host: it refuses an intent
// that takes host out of service (depooled, or weight 0: a depool too) when that would
// leave fewer than depool-threshold x servers up, enabled and weighted. Health comes
// from the service's current State; admin intent from the store's own read, so with
// etcd every LVS host and SRE checks against the same keys.
func (s *Service) ThresholdCheck(host string) admin.Check {
	return func(before, after admin.Intent) error { return Threshold(s.State(), host, before, after) }
}

// Threshold is ThresholdCheck over a given State: pure.
func Threshold(st *State, host string, before, after admin.Intent) error {
	if !serving(st, before, host) || serving(st, after, host) {
		return nil // the change does not lower the count
	}
	n, up := count(st, after)
	need := float64(n) * st.Config.DepoolThreshold
	if float64(up) >= need {
		return nil
	}
	what := "depooling " + host
	if a := after.Overrides[host]; !a.Depooled && a.Weight != nil && *a.Weight == 0 {
		what = "weight 0 on " + host
	}
	return fmt.Errorf("%s would leave %d of %d servers up, enabled and weighted, below threshold %s x %d = %s",
		what, up, n, fmtFloat(st.Config.DepoolThreshold), n, fmtFloat(need))
}

// serving: host is in the pool, enabled, weighted and up under intent in.
func serving(st *State, in admin.Intent, host string) bool {
	src, ok := st.Source[host]
	if !ok {
		return false
	}
	g := in.Gate(source.Set{host: src})[host]
	if !g.Enabled || g.Weight <= 0 {
		return false
	}
	sv, ok := st.Snapshot.Server(host)
	return ok && sv.Up
}

// count returns the pool size and the servers serving under intent in.
func count(st *State, in admin.Intent) (n, up int) {
	for host, g := range in.Gate(st.Source) {
		n++
		if !g.Enabled || g.Weight <= 0 {
			continue
		}
		if sv, ok := st.Snapshot.Server(host); ok && sv.Up {
			up++
		}
	}
	return n, up
}

func fmtFloat(f float64) string { return strconv.FormatFloat(math.Round(f*1e6)/1e6, 'f', -1, 64) }
