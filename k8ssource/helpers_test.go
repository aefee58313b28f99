package k8ssource

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	k8srig "github.com/kubal/kubal/integration/k8s"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// gauge reads one metric's value (the only series of that name in reg).
func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	v, _ := metricValue(t, reg, name)
	return v
}

func metricValue(t testing.TB, reg *prometheus.Registry, name string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		sum := 0.0
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
		return sum, true
	}
	return 0, false
}

func counterSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	return gauge(t, reg, name)
}

func waitGauge(t testing.TB, reg *prometheus.Registry, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, ok := metricValue(t, reg, name)
		if ok && v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v (present %v), want %v", name, v, ok, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// applyManifest creates every object of a multi-document YAML file (existing ones
// are left as they are): the rig's ApplyManifest, failing the test on an error.
func applyManifest(t testing.TB, c kubernetes.Interface, path string) {
	t.Helper()
	if err := k8srig.ApplyManifest(context.Background(), c, path); err != nil {
		t.Fatal(err)
	}
}
