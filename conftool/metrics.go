package conftool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the conftool metrics. A nil *Metrics records nothing.
type Metrics struct {
	connected *prometheus.GaugeVec
	lastEvent *prometheus.GaugeVec
	resyncs   *prometheus.CounterVec
	malformed *prometheus.CounterVec
	writes    *prometheus.CounterVec
	conflicts prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
//
//   - kubal_conftool_watch_connected{prefix}: 1 while the key prefix is read and watched.
//   - kubal_conftool_last_event_timestamp_seconds{prefix}: unix time of the last full
//     read or watch event (age = time() - this).
//   - kubal_conftool_resyncs_total{prefix,reason}: full re-reads after the first one;
//     reason is "compacted" (watch revision compacted away) or "reconnect".
//   - kubal_conftool_malformed_values_total{prefix}: values that could not be decoded.
//   - kubal_conftool_writes_total{result}: admin writes, result ok|noop|conflict|error.
//   - kubal_conftool_write_conflicts_total: compare-and-swap misses that were retried.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubal_conftool_watch_connected",
			Help: "1 while the conftool key prefix is read and watched in etcd, 0 while disconnected.",
		}, []string{"prefix"}),
		lastEvent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubal_conftool_last_event_timestamp_seconds",
			Help: "Unix time of the last full read or watch event of the conftool key prefix.",
		}, []string{"prefix"}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubal_conftool_resyncs_total",
			Help: "Full re-reads of a conftool key prefix after the first, by reason (compacted, reconnect).",
		}, []string{"prefix", "reason"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubal_conftool_malformed_values_total",
			Help: "Conftool values that could not be decoded (the server kept its previous state).",
		}, []string{"prefix"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubal_conftool_writes_total",
			Help: "Admin writes to conftool keys by result (ok, noop, conflict, error).",
		}, []string{"result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kubal_conftool_write_conflicts_total",
			Help: "Admin writes whose compare-and-swap lost a race and were re-read and retried.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.lastEvent, m.resyncs, m.malformed, m.writes, m.conflicts)
	}
	return m
}

func (m *Metrics) setConnected(prefix string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.connected.WithLabelValues(prefix).Set(v)
}

func (m *Metrics) event(prefix string, t time.Time) {
	if m == nil {
		return
	}
	m.lastEvent.WithLabelValues(prefix).Set(float64(t.UnixNano()) / 1e9)
}

func (m *Metrics) resync(prefix, reason string) {
	if m == nil {
		return
	}
	m.resyncs.WithLabelValues(prefix, reason).Inc()
}

func (m *Metrics) malformedValue(prefix string) {
	if m == nil {
		return
	}
	m.malformed.WithLabelValues(prefix).Inc()
}

func (m *Metrics) write(result string) {
	if m == nil {
		return
	}
	m.writes.WithLabelValues(result).Inc()
}

func (m *Metrics) conflict() {
	if m == nil {
		return
	}
	m.conflicts.Inc()
}
