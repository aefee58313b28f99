package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// counts summarises the state the threshold properties talk about.
type counts struct {
	n, pooled, enabledReady int
	need                    float64
}

func countsOf(c *Coordinator) counts {
	k := counts{n: len(c.servers), need: float64(len(c.servers)) * c.threshold}
	for _, s := range c.servers {
		if s.pooled {
			k.pooled++
		}
		if s.enabled && s.ready && !c.awaiting(s) { // awaiting: not forcible (check-first)
			k.enabledReady++
		}
	}
	return k
}

// TestRandomEvents drives coordinators with random event sequences and checks after
// every event:
//   - the invariants (P0 pooled => enabled && ready, P1, pooled-down set == pooled && !up,
//     counters);
//   - health checks (Result) never take the pooled count below ceil(N x threshold);
//   - once no new server is waiting for its address, if at least ceil(N x threshold)
//     servers are enabled and ready (and not awaiting a first check) then at least
//     that many are pooled;
//   - with check-first pooling (pool-unchecked = no, half the seeds), a server only
//     goes from not pooled to pooled once every monitor has reported on it.
func TestRandomEvents(t *testing.T) {
	const seeds, events = 200, 300
	thresholds := []float64{0, 0.25, 0.5, 0.66, 0.75, 1}
	monitorSets := [][]string{nil, {"ProxyFetch"}, {"ProxyFetch", "IdleConnection"}, {"ProxyFetch", "IdleConnection", "RunCommand"}}
	var pooledDownSeen, forcedSeen, depooledSeen int
	for seed := range uint64(seeds) {
		rng := rand.New(rand.NewPCG(seed, 0x6b7562616c))
		hosts := make([]string, 1+rng.IntN(12))
		for i := range hosts {
			hosts[i] = fmt.Sprintf("h%02d", i)
		}
		monitors := monitorSets[rng.IntN(len(monitorSets))]
		c := New("svc", thresholds[rng.IntN(len(thresholds))], monitors, slog.New(slog.DiscardHandler))
		checkFirst := seed%2 == 1
		c.SetPoolUnchecked(!checkFirst)
		var trace []string
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d after %d events: %s\ntrace:\n%s", seed, len(trace), fmt.Sprintf(format, args...), strings.Join(trace, "\n"))
		}
		for range events {
			before := countsOf(c)
			wasPooled := map[*server]bool{}
			for _, s := range c.servers {
				wasPooled[s] = s.pooled
			}
			isResult := false
			switch p := rng.IntN(100); {
			case p < 12: // a new full server set
				var cfgs []ServerConfig
				for _, h := range hosts {
					if rng.IntN(5) == 0 {
						continue // absent: removed
					}
					cfg := ServerConfig{Host: h, Weight: rng.IntN(20), Enabled: rng.IntN(4) != 0}
					if rng.IntN(3) != 0 {
						cfg.Addr = netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(250))})
					}
					cfgs = append(cfgs, cfg)
				}
				trace = append(trace, fmt.Sprintf("Update(%v)", cfgs))
				c.Update(cfgs)
			case p < 20:
				h := hosts[rng.IntN(len(hosts))]
				trace = append(trace, "Resolved("+h+")")
				c.Resolved(h, netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(250))}))
			case p < 24:
				h := hosts[rng.IntN(len(hosts))]
				trace = append(trace, "ResolveFailed("+h+")")
				c.ResolveFailed(h, errors.New("no such host"))
			case p < 98:
				if len(c.monitors) == 0 {
					continue
				}
				isResult = true
				h := hosts[rng.IntN(len(hosts))]
				m := c.monitors[rng.IntN(len(c.monitors))]
				up := rng.IntN(2) == 0
				trace = append(trace, fmt.Sprintf("Result(%s, %s, up=%v)", h, m, up))
				c.Result(h, m, MonitorResult{Up: up, Reason: "r"})
			default:
				th := thresholds[rng.IntN(len(thresholds))]
				ms := monitorSets[rng.IntN(len(monitorSets))]
				trace = append(trace, fmt.Sprintf("Reconfigure(%v, %v)", th, ms))
				c.Reconfigure(th, ms)
			}
			if err := invariants(c); err != nil {
				fail("%v", err)
			}
			after := countsOf(c)
			if checkFirst && len(c.monitors) > 0 {
				for h, s := range c.servers {
					if s.pooled && !wasPooled[s] && !c.allReported(s) {
						fail("check-first: %s pooled without a verdict from every monitor (%v)", h, s.results)
					}
				}
			}
			if isResult && after.pooled < before.pooled && float64(after.pooled) < after.need {
				fail("a health check took pooled from %d to %d, below %d x %v", before.pooled, after.pooled, after.n, c.threshold)
			}
			if len(c.waiting) == 0 && float64(after.enabledReady) >= after.need && float64(after.pooled) < after.need {
				fail("%d of %d pooled, below %v, with %d enabled and ready", after.pooled, after.n, after.need, after.enabledReady)
			}
			if len(c.pooledDown) > 0 {
				pooledDownSeen++
			}
			if !isResult && after.pooled > before.pooled && len(c.pooledDown) > 0 {
				forcedSeen++
			}
			if isResult && after.pooled < before.pooled {
				depooledSeen++
			}
		}
		snap := c.Snapshot()
		if snap.CanDepool != c.canDepool() || len(snap.Servers) != len(c.servers) || len(snap.PooledDown) != len(c.pooledDown) {
			t.Fatalf("seed %d: snapshot disagrees: %+v", seed, snap)
		}
	}
	// The walk must reach the interesting states, or the properties above prove little.
	t.Logf("events with a pooled-down set: %d, threshold force-pools: %d, health depools: %d", pooledDownSeen, forcedSeen, depooledSeen)
	if pooledDownSeen < 100 || forcedSeen < 10 || depooledSeen < 100 {
		t.Errorf("random walk too tame: pooled-down %d, forced %d, depooled %d", pooledDownSeen, forcedSeen, depooledSeen)
	}
}
