package ipvs

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	duration   prometheus.Histogram
	ops        *prometheus.CounterVec
	errors     *prometheus.CounterVec
	drift      prometheus.Counter
	draining   prometheus.Gauge
	failing    prometheus.Gauge
	mhRebuilds prometheus.Counter

	byKind, errByKind map[string]prometheus.Counter // resolved once: ops are hot
}

func (m *metrics) op(kind string) prometheus.Counter    { return m.byKind[kind] }
func (m *metrics) opErr(kind string) prometheus.Counter { return m.errByKind[kind] }

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kubal_ipvs_reconcile_duration_seconds",
			Help:    "Duration of IPVS reconcile passes.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		})),
		ops: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubal_ipvs_operations_total",
			Help: "IPVS operations issued, by kind.",
		}, []string{"op"})),
		errors: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubal_ipvs_errors_total",
			Help: "IPVS operations (and dumps) that failed, by kind.",
		}, []string{"op"})),
		drift: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubal_ipvs_drift_repairs_total",
			Help: "Differences between the kernel and kubal's last known state found by a resync (changes made outside kubal), each repaired.",
		})),
		draining: register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubal_ipvs_draining_destinations",
			Help: "Destinations at weight 0 waiting for their connections to end (depool-mode = drain).",
		})),
		failing: register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubal_ipvs_failing_pools",
			Help: "Pools (virtual services) whose last reconcile attempt failed, each retried with its own backoff.",
		})),
		mhRebuilds: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubal_ipvs_mh_readded_destinations_total",
			Help: "Destinations of mh services deleted and re-added to restore the canonical list order (identical Maglev tables on every director).",
		})),
		byKind:    map[string]prometheus.Counter{},
		errByKind: map[string]prometheus.Counter{},
	}
	for _, k := range []string{OpAddService, OpUpdateService, OpDeleteService, OpAddDestination, OpUpdateDestination, OpDeleteDestination} {
		m.byKind[k] = m.ops.WithLabelValues(k)
		m.errByKind[k] = m.errors.WithLabelValues(k)
	}
	return m
}

// register registers c, or returns the collector already registered under the same
// name (a second Reconciler on one registry, e.g. after a reload, shares the series).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if ex, ok := are.ExistingCollector.(T); ok {
				return ex
			}
		}
	}
	return c
}
