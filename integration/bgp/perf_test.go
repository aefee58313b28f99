package bgpit

import (
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/kubal/kubal/bgp"

	"github.com/kubal/kubal/internal/testutil"
)

// Benchmarks against BIRD (numbers in docs/perf/bgp.md):
//
//	go test ./integration/bgp -run '^$' -bench Announce1000 -benchtime 5x
//	go test ./integration/bgp -run '^$' -bench WithdrawLatency -benchtime 100x
//	go test ./integration/bgp -run '^$' -bench BFDFailover -benchtime 10x

// pollInterval between control-socket queries: fine enough for millisecond
// latencies without starving BIRD and GoBGP of the CPU.
const perfPoll = 200 * time.Microsecond

func pollUntil(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(perfPoll)
	}
	return time.Since(start), true
}

func manyVIPs(n int) []bgp.Announcement {
	out := make([]bgp.Announcement, n)
	for i := range out {
		out[i] = bgp.Announcement{
			Prefix:      netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32),
			NextHop:     speakerAddr,
			MED:         uint32(i % 7),
			ASPath:      []uint32{localASN},
			Communities: []string{"64512:1"},
		}
	}
	return out
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkAnnounce1000: Set of 1,000 VIPs until all are in BIRD's table.
func BenchmarkAnnounce1000(b *testing.B) {
	r := newRouter(b, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 30})
	s, _ := runSpeaker(b, globalFor(localASN, r))
	warm := manyVIPs(1)
	s.Set(warm)
	r.mustHave(warm[0].Prefix, 10*time.Second) // session up
	s.Set(nil)
	r.mustNotHave(warm[0].Prefix, 5*time.Second)

	anns := manyVIPs(1000)
	var all, gone []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		s.Set(anns)
		d, ok := pollUntil(30*time.Second, func() bool { return r.count() == len(anns) })
		if !ok {
			b.Fatalf("only %d of %d routes at BIRD after %s", r.count(), len(anns), d)
		}
		all = append(all, time.Since(start))
		start = time.Now()
		s.Set(nil)
		if _, ok := pollUntil(30*time.Second, func() bool { return r.count() == 0 }); !ok {
			b.Fatalf("%d routes left at BIRD", r.count())
		}
		gone = append(gone, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(all, 0.5)), "announce-p50-ms")
	b.ReportMetric(ms(slices.Max(all)), "announce-max-ms")
	b.ReportMetric(ms(percentile(gone, 0.5)), "withdraw-all-p50-ms")
}

// BenchmarkWithdrawLatency: with 1,000 VIPs announced, one health-driven withdraw:
// from the Set call (the decision) until the route is gone at BIRD, then the
// re-announce until it is back.
func BenchmarkWithdrawLatency(b *testing.B) {
	r := newRouter(b, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 30})
	s, _ := runSpeaker(b, globalFor(localASN, r))
	anns := manyVIPs(1000)
	s.Set(anns)
	if d, ok := pollUntil(30*time.Second, func() bool { return r.count() == len(anns) }); !ok {
		b.Fatalf("only %d routes at BIRD after %s", r.count(), d)
	}
	var wd, ad []time.Duration
	b.ResetTimer()
	for i := range b.N {
		victim := i * 37 % len(anns)
		without := slices.Delete(slices.Clone(anns), victim, victim+1)
		p := anns[victim].Prefix

		start := time.Now()
		s.Set(without)
		if _, ok := pollUntil(5*time.Second, func() bool { return !r.has(p) }); !ok {
			b.Fatalf("%s not withdrawn", p)
		}
		wd = append(wd, time.Since(start))

		start = time.Now()
		s.Set(anns)
		if _, ok := pollUntil(5*time.Second, func() bool { return r.has(p) }); !ok {
			b.Fatalf("%s not re-announced", p)
		}
		ad = append(ad, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(wd, 0.5)), "withdraw-p50-ms")
	b.ReportMetric(ms(percentile(wd, 0.99)), "withdraw-p99-ms")
	b.ReportMetric(ms(slices.Max(wd)), "withdraw-max-ms")
	b.ReportMetric(ms(percentile(ad, 0.5)), "announce-p50-ms")
	b.ReportMetric(ms(percentile(ad, 0.99)), "announce-p99-ms")
}

// BenchmarkBFDFailover: the LVS host vanishes (egress blackholed, speaker killed
// with SIGKILL); time until BIRD has dropped the route, with BFD 300 ms x 3.
func BenchmarkBFDFailover(b *testing.B) {
	r := newRouter(b, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 30, BFD: true})
	g := globalFor(localASN, r)
	g.BGPHoldTime = 30 * time.Second
	g.BGPBFD, g.BGPBFDMinRx, g.BGPBFDMinTx, g.BGPBFDMultiplier = true, 300*time.Millisecond, 300*time.Millisecond, 3
	vip := pfx("192.0.2.70")
	var ds []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		p := startSpeakerd(b, g, vip)
		r.mustHave(vip, 20*time.Second)
		if _, ok := testutil.Poll(10*time.Second, time.Millisecond, r.bfdUp); !ok {
			b.Fatalf("BFD not up\n%s", r.debug())
		}
		b.StartTimer()
		dropped, _ := p.vanish(b, r) // from the blackhole, as TestKill9WithBFD
		if _, ok := pollUntil(5*time.Second, func() bool { return !r.has(vip) }); !ok {
			b.Fatal("route not withdrawn by BFD")
		}
		ds = append(ds, time.Since(dropped))
		p.mustHaveDied(b)
		b.StopTimer()
		if out, err := exec.Command("tc", "qdisc", "del", "dev", r.port, "root").CombinedOutput(); err != nil {
			b.Fatalf("tc qdisc del: %v: %s", err, out)
		}
		// BIRD's BFD and BGP are now down; let them settle before the next run.
		if _, ok := testutil.Poll(10*time.Second, time.Millisecond, func() bool { return !r.bfdUp() }); !ok {
			b.Fatal("BFD still up")
		}
	}
	b.ReportMetric(ms(percentile(ds, 0.5)), "detect-p50-ms")
	b.ReportMetric(ms(slices.Max(ds)), "detect-max-ms")
}
