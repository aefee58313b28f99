package monitor

import (
	"context"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// BenchmarkForwardedProbe compares one probe's cost, direct vs forwarded, for TCP and
// ProxyFetch: the forwarded one also looks up the route's source address (a connected
// UDP socket), binds to it and sets SO_MARK. The target is a minimal HTTP responder on
// 127.0.0.1 in this process, playing both the server and the VIP: this machine has no
// IPVS, so what is measured is kubal's side of the probe (the kernel's IPVS lookup of
// the marked SYN is not in it; see docs/perf/monitor.md). Reported: ns/op (wall, one
// probe at a time), cpu-ns/op (the whole process, responder included, getrusage),
// B/op and allocs/op.
//
//	go test -run '^$' -bench ForwardedProbe -benchmem -count 3 ./monitor
func BenchmarkForwardedProbe(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("SKIPPED LOUDLY: SO_MARK needs CAP_NET_ADMIN (run as root)")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go serveMinimalHTTP(ln)
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	for _, mon := range []string{"TCP", "ProxyFetch"} {
		for _, fwd := range []bool{false, true} {
			name := mon + "/direct"
			if fwd {
				name = mon + "/forwarded"
			}
			b.Run(name, func(b *testing.B) {
				svc := testService("svc", []string{mon}, "tcp.path", "forwarded", "proxyfetch.path", "forwarded",
					"proxyfetch.url", "['http://bench.test/']")
				svc.IP, svc.Port, svc.Protocol = ap.Addr(), ap.Port(), "tcp"
				v := newValidator(svc, mon)
				v.forwarded = fwd
				sp := parsers[mon](v, Target{Host: "s", Addr: ap.Addr(), Port: ap.Port()})
				if len(v.ds) > 0 {
					b.Fatal(v.ds)
				}
				e := &env{m: &Manager{transport: newTransport()}, clk: realClock{}, metrics: newMetrics(nil),
					each: func(func(string, string)) {}, offset: func(time.Duration) time.Duration { return 0 }}
				check := sp.newRunner(e).(*loop).check
				ctx := context.Background()
				if r := check.Check(ctx); !r.Up {
					b.Fatalf("probe down: %s", r.Reason)
				}
				cpu0 := cpuTime()
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if r := check.Check(ctx); !r.Up {
						b.Fatalf("probe down: %s", r.Reason)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serveMinimalHTTP answers every connection with one fixed HTTP response (and reads
// nothing it does not need): the responder's cost stays small next to the probe's.
func serveMinimalHTTP(ln net.Listener) {
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 1024)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if n, _ := c.Read(buf); n > 0 {
				_, _ = c.Write(resp)
			}
		}()
	}
}
