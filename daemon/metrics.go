package daemon

import "github.com/prometheus/client_golang/prometheus"

// daemonMetrics are kubal's own daemon-level metrics.
type daemonMetrics struct {
	reloadSuccess prometheus.Gauge
	reloadTime    prometheus.Gauge
	reloads       *prometheus.CounterVec
	sourceHealthy *prometheus.GaugeVec
}

func newDaemonMetrics(reg prometheus.Registerer) *daemonMetrics {
	m := &daemonMetrics{
		reloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubal_config_reload_success", Help: "1 if the last config load or reload succeeded.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kubal_config_last_reload_success_timestamp_seconds", Help: "Time of the last successful config load.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubal_config_reloads_total", Help: "Config reloads by result.",
		}, []string{"result"}),
		sourceHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubal_source_healthy", Help: "1 if the service's server-list source is reading fine (0: last known servers in use).",
		}, []string{"service"}),
	}
	reg.MustRegister(m.reloadSuccess, m.reloadTime, m.reloads, m.sourceHealthy)
	return m
}
