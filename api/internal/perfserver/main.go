// Command perfserver serves kubal's instrumentation handler over a synthetic pool for
// load tests (docs/perf/api.md): -servers servers in pool "perf_pool", with a churn
// goroutine that publishes a new snapshot every -churn interval (one server's
// monitor result flips), as health checks would while the API is under load.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/pool"
)

// state publishes immutable snapshots through an atomic pointer, the way a
// coordinator hands its read model to the API without locks.
type state struct {
	name string
	snap atomic.Pointer[pool.Snapshot]
}

func (s *state) Pools() []string { return []string{s.name} }
func (s *state) Snapshot(p string) (pool.Snapshot, bool) {
	if p != s.name {
		return pool.Snapshot{}, false
	}
	return *s.snap.Load(), true
}
func (s *state) Alerts() []api.Alert { return nil }
func (s *state) Ready() error        { return nil }

func build(n int) *pool.Snapshot {
	sn := &pool.Snapshot{Name: "perf_pool", Threshold: 0.5, CanDepool: true, Servers: make([]pool.ServerState, n)}
	for i := range sn.Servers {
		sn.Servers[i] = pool.ServerState{
			Host: fmt.Sprintf("mw%04d.eqiad.wmnet", i), Weight: 10, Enabled: true, Ready: true, Up: true, Pooled: true,
			Addr:     netip.AddrFrom4([4]byte{10, 64, byte(i >> 8), byte(i)}),
			Monitors: map[string]pool.MonitorResult{"ProxyFetch": {Up: true}, "IdleConnection": {Up: true}},
		}
	}
	return sn
}

// latencies is a log-linear histogram of handler durations (1us resolution below
// 1ms, 1% above), cheap enough not to disturb the measurement.
type latencies struct {
	mu     sync.Mutex
	counts [4096]uint64
	n      uint64
}

func bucket(d time.Duration) int {
	us := d.Microseconds()
	if us < 1000 {
		return int(us)
	}
	// 1000 + 100 buckets per decade above 1ms
	b := 1000 + int(100*math.Log10(float64(us)/1000))
	return min(b, 4095)
}

func bucketUpper(b int) time.Duration {
	if b < 1000 {
		return time.Duration(b+1) * time.Microsecond
	}
	return time.Duration(1000*math.Pow(10, float64(b-1000+1)/100)) * time.Microsecond
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.counts[bucket(d)]++
	l.n++
	l.mu.Unlock()
}

func (l *latencies) report() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		return "no requests"
	}
	q := func(p float64) time.Duration {
		want := uint64(math.Ceil(p * float64(l.n)))
		var acc uint64
		for b, c := range l.counts {
			acc += c
			if acc >= want {
				return bucketUpper(b)
			}
		}
		return bucketUpper(len(l.counts) - 1)
	}
	out := fmt.Sprintf("server-side handler latency over %d requests: p50 <= %v, p90 <= %v, p99 <= %v, p99.9 <= %v",
		l.n, q(0.5), q(0.9), q(0.99), q(0.999))
	l.counts = [4096]uint64{}
	l.n = 0
	return out
}

func main() {
	addr := flag.String("addr", "127.0.0.1:19090", "listen address")
	n := flag.Int("servers", 1000, "servers in the pool")
	churn := flag.Duration("churn", 10*time.Millisecond, "interval between snapshot updates (0: none)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	st := &state{name: "perf_pool"}
	st.snap.Store(build(*n))
	reg := prometheus.NewRegistry()
	reg.MustRegister(api.NewServiceCollector(st))

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	var updates atomic.Uint64
	if *churn > 0 {
		go func() {
			t := time.NewTicker(*churn)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				// Copy-on-write: a new snapshot with one server's monitor flipped.
				old := st.snap.Load()
				next := *old
				next.Servers = append([]pool.ServerState(nil), old.Servers...)
				i := rand.IntN(len(next.Servers))
				s := next.Servers[i]
				up := !s.Up
				s.Up, s.Pooled = up, up
				s.Monitors = map[string]pool.MonitorResult{"ProxyFetch": {Up: up, Reason: "503"}, "IdleConnection": {Up: true}}
				next.Servers[i] = s
				st.snap.Store(&next)
				updates.Add(1)
			}
		}()
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Error("listen", "error", err)
		os.Exit(1)
	}
	h := api.NewInstrumentation(st, reg, log)
	var lat latencies
	timed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		h.ServeHTTP(w, r)
		lat.add(time.Since(t0))
	})
	mux := http.NewServeMux()
	mux.Handle("/", timed)
	// GET /perf/latency prints and resets the server-side handler latency quantiles.
	mux.HandleFunc("/perf/latency", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, lat.report())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("perfserver listening", "addr", l.Addr().String(), "servers", *n, "churn", churn.String())
	if err := srv.Serve(l); err != nil && err != http.ErrServerClosed {
		log.Error("serve", "error", err)
	}
	log.Info("snapshot updates applied during the run", "updates", updates.Load())
}
