package api

import "github.com/prometheus/client_golang/prometheus"

// NewServiceCollector exports PyBal's per-service metrics (SPEC §7) from the
// coordinators' snapshots at scrape time: pybal_service_servers, _servers_enabled,
// _servers_up, _servers_pooled, _can_depool, _pooled_down_servers, _depool_threshold
// (gauges) and pybal_service_could_not_depool_total (counter), all labelled service.
func NewServiceCollector(st State) prometheus.Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("pybal_service_"+name, help, []string{"service"}, nil)
	}
	return &serviceCollector{
		st:             st,
		servers:        d("servers", "Number of servers in the service"),
		enabled:        d("servers_enabled", "Number of enabled servers"),
		up:             d("servers_up", "Number of servers whose monitors all report up"),
		pooled:         d("servers_pooled", "Number of servers pooled in IPVS"),
		canDepool:      d("can_depool", "1 if one more server can be depooled without going below the depool threshold"),
		pooledDown:     d("pooled_down_servers", "Number of servers down but kept pooled by the depool threshold"),
		threshold:      d("depool_threshold", "The service's depool-threshold"),
		couldNotDepool: d("could_not_depool_total", "Times a down server could not be depooled because of the depool threshold"),
	}
}

type serviceCollector struct {
	st                                                                             State
	servers, enabled, up, pooled, canDepool, pooledDown, threshold, couldNotDepool *prometheus.Desc
}

func (c *serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.servers, c.enabled, c.up, c.pooled, c.canDepool, c.pooledDown, c.threshold, c.couldNotDepool} {
		ch <- d
	}
}

func (c *serviceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range c.st.Pools() {
		snap, ok := c.st.Snapshot(name)
		if !ok {
			continue
		}
		var enabled, up, pooled int
		for i := range snap.Servers {
			s := &snap.Servers[i]
			if s.Enabled {
				enabled++
			}
			if s.Up {
				up++
			}
			if s.Pooled {
				pooled++
			}
		}
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, name)
		}
		g(c.servers, float64(len(snap.Servers)))
		g(c.enabled, float64(enabled))
		g(c.up, float64(up))
		g(c.pooled, float64(pooled))
		g(c.canDepool, boolFloat(snap.CanDepool))
		g(c.pooledDown, float64(len(snap.PooledDown)))
		g(c.threshold, snap.Threshold)
		ch <- prometheus.MustNewConstMetric(c.couldNotDepool, prometheus.CounterValue, float64(snap.CouldNotDepool), name)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
