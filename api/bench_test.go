package api

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kubal/kubal/pool"
)

func benchPool(n int) *fakeState {
	sn := pool.Snapshot{Name: "perf_pool", Threshold: 0.5, CanDepool: true, Servers: make([]pool.ServerState, n)}
	for i := range sn.Servers {
		sn.Servers[i] = srv(fmt.Sprintf("mw%04d.eqiad.wmnet", i), "EUP", 10)
	}
	return newFakeState(sn)
}

func benchEndpoint(b *testing.B, path, accept string) {
	h := NewInstrumentation(benchPool(1000), nil, discard())
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// In-process cost of /pools/<pool> with 1,000 servers (no network).
func BenchmarkPoolText1000(b *testing.B) { benchEndpoint(b, "/pools/perf_pool", "") }
func BenchmarkPoolJSON1000(b *testing.B) {
	benchEndpoint(b, "/pools/perf_pool", "application/json")
}
func BenchmarkServerJSON(b *testing.B) {
	benchEndpoint(b, "/pools/perf_pool/mw0500.eqiad.wmnet", "application/json")
}
func BenchmarkV1Pool1000(b *testing.B) { benchEndpoint(b, "/v1/pools/perf_pool", "") }

// Rendering cost without the per-snapshot cache (every request after a state change).
func BenchmarkPoolText1000Uncached(b *testing.B) {
	h := &instrumentation{read: reader{st: benchPool(1000)}, log: discard()}
	req := httptest.NewRequest(http.MethodGet, "/pools/perf_pool", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
	}
}

func BenchmarkPoolJSON1000Uncached(b *testing.B) {
	h := &instrumentation{read: reader{st: benchPool(1000)}, log: discard()}
	req := httptest.NewRequest(http.MethodGet, "/pools/perf_pool", nil)
	req.Header.Set("Accept", "application/json")
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
	}
}
