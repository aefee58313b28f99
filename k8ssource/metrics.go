package k8ssource

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connected prometheus.Gauge
	events    *prometheus.CounterVec
	lastSync  prometheus.Gauge
	delay     prometheus.Histogram
}

// newMetrics registers the source's metrics, labelled with the service (pool) name so
// several k8s:// services share one registry. A nil Registerer keeps them private.
func newMetrics(reg prometheus.Registerer, service string) (*metrics, error) {
	cl := prometheus.Labels{"service": service}
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "kubal_k8s_source_connected",
			Help:        "1 when every informer of the k8s source is answered by the API server, 0 while it is unreachable or refuses (the last known servers stay in force).",
			ConstLabels: cl,
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "kubal_k8s_events_total",
			Help:        "Informer events received by the k8s source, by resource (node, endpointslice) and type (add, update, delete).",
			ConstLabels: cl,
		}, []string{"resource", "type"}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "kubal_k8s_last_sync_timestamp_seconds",
			Help:        "Unix time at which the k8s source last recomputed its servers from caches in sync with a reachable API server.",
			ConstLabels: cl,
		}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "kubal_k8s_event_delay_seconds",
			Help:        "Time from the first informer event of a batch to the Update it caused (coalescing window plus recomputation).",
			ConstLabels: cl,
			Buckets:     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connected, m.events, m.lastSync, m.delay} {
		if err := reg.Register(c); err != nil {
			// A reload re-creating the source for the same service: reuse the
			// registered collectors so the series continue.
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			switch existing := are.ExistingCollector.(type) {
			case *prometheus.CounterVec:
				m.events = existing
			case prometheus.Histogram:
				m.delay = existing
			case prometheus.Gauge:
				if c == prometheus.Collector(m.connected) {
					m.connected = existing
				} else {
					m.lastSync = existing
				}
			}
		}
	}
	return m, nil
}
