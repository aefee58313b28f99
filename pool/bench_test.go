package pool

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
)

// benchPool returns a coordinator of n ready servers whose two monitors have reported up.
func benchPool(b *testing.B, n int, log *slog.Logger) (*Coordinator, []string) {
	b.Helper()
	c := New("bench_443", 0.5, []string{"ProxyFetch", "IdleConnection"}, log)
	hosts := make([]string, n)
	cfgs := make([]ServerConfig, n)
	for i := range n {
		hosts[i] = fmt.Sprintf("mw%04d.eqiad.wmnet", i)
		cfgs[i] = ServerConfig{Host: hosts[i], Addr: netip.AddrFrom4([4]byte{10, 64, byte(i >> 8), byte(i)}), Weight: 10, Enabled: true}
	}
	c.Update(cfgs)
	for _, h := range hosts {
		c.Result(h, "ProxyFetch", MonitorResult{Up: true})
		c.Result(h, "IdleConnection", MonitorResult{Up: true})
	}
	return c, hosts
}

// BenchmarkResult measures Result on a 1,000-server pool. Every call is a transition:
// iteration i takes server i/2 down (a depool, or a pooled-down keep once half the pool
// is down) and the next brings it back (a repool that drains the pooled-down set).
func BenchmarkResult(b *testing.B) {
	for _, bc := range []struct {
		name string
		log  *slog.Logger
	}{
		{"1000/nolog", slog.New(slog.DiscardHandler)},
		{"1000/textlog", slog.New(slog.NewTextHandler(io.Discard, nil))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, hosts := benchPool(b, 1000, bc.log)
			down := MonitorResult{Up: false, Reason: "503 Service Unavailable"}
			up := MonitorResult{Up: true}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				h := hosts[(i/2)%len(hosts)]
				if i%2 == 0 {
					c.Result(h, "ProxyFetch", down)
				} else {
					c.Result(h, "ProxyFetch", up)
				}
			}
		})
	}
}

// BenchmarkResultThresholdReached is Result when 500 of 1,000 servers are down and more
// failures stay pooled down (the pooled-down set is large, every up drains it).
func BenchmarkResultThresholdReached(b *testing.B) {
	c, hosts := benchPool(b, 1000, slog.New(slog.DiscardHandler))
	down := MonitorResult{Up: false, Reason: "timeout"}
	up := MonitorResult{Up: true}
	for _, h := range hosts[:600] { // 500 depooled, 100 pooled down
		c.Result(h, "ProxyFetch", down)
	}
	if n := len(c.Snapshot().PooledDown); n != 100 {
		b.Fatalf("pooled down %d, want 100", n)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		h := hosts[600+(i/2)%400] // one of the up servers: down (kept), then up
		if i%2 == 0 {
			c.Result(h, "ProxyFetch", down)
		} else {
			c.Result(h, "ProxyFetch", up)
		}
	}
}

func BenchmarkSnapshot(b *testing.B) {
	c, _ := benchPool(b, 1000, slog.New(slog.DiscardHandler))
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Snapshot()
	}
}
