package monitor

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are PyBal's monitor metrics (SPEC §7), same names and labels.
type metrics struct {
	status                          *prometheus.GaugeVec
	upTransitions, downTransitions  *prometheus.CounterVec
	upResults, downResults          *prometheus.CounterVec
	proxyfetchDuration              *prometheus.GaugeVec
	idleconnFailed, idleconnLost    *prometheus.CounterVec
	runcommandDuration, dnsDuration *prometheus.GaugeVec
}

var baseLabels = []string{"service", "host", "monitor"}

func labels(extra ...string) []string { return append(append([]string{}, baseLabels...), extra...) }

func newMetrics(reg prometheus.Registerer) *metrics {
	opts := func(name, help string) (prometheus.GaugeOpts, prometheus.CounterOpts) {
		return prometheus.GaugeOpts{Namespace: "pybal", Subsystem: "monitor", Name: name, Help: help},
			prometheus.CounterOpts{Namespace: "pybal", Subsystem: "monitor", Name: name, Help: help}
	}
	gauge := func(name, help string, l []string) *prometheus.GaugeVec {
		g, _ := opts(name, help)
		return register(reg, prometheus.NewGaugeVec(g, l))
	}
	counter := func(name, help string, l []string) *prometheus.CounterVec {
		_, c := opts(name, help)
		return register(reg, prometheus.NewCounterVec(c, l))
	}
	return &metrics{
		status:             gauge("status", "Monitor up status", labels()),
		upTransitions:      counter("up_transitions_total", "Monitor up transition count", labels()),
		downTransitions:    counter("down_transitions_total", "Monitor down transition count", labels()),
		upResults:          counter("up_results_total", "Monitor up result count", labels()),
		downResults:        counter("down_results_total", "Monitor down result count", labels()),
		proxyfetchDuration: gauge("proxyfetch_request_duration_seconds", "ProxyFetch request duration", labels("result", "url")),
		idleconnFailed:     counter("idleconnection_connections_failed_total", "IdleConnection failed connection attempts", labels("reason")),
		idleconnLost:       counter("idleconnection_connections_lost_total", "IdleConnection lost connections", labels("reason")),
		runcommandDuration: gauge("runcommand_run_duration_seconds", "RunCommand run duration", labels("result", "exitcode")),
		dnsDuration:        gauge("dnsquery_request_duration_seconds", "DNSQuery request duration", labels("result")),
	}
}

// register registers c, or reuses the collector already registered under the same
// name (a second Manager on one registry, e.g. across a reload).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

func resultLabel(up bool) string {
	if up {
		return "successful"
	}
	return "failed"
}
