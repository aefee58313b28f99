package bgpit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/bgp"
	"github.com/kubal/kubal/config"

	"github.com/kubal/kubal/internal/testutil"
)

const (
	localASN  = 4200000001 // 4-byte, which PyBal could not do
	routerASN = 65000
)

func service(name, ip string, mut ...func(*config.Service)) *config.Service {
	s := &config.Service{Name: name, IP: netip.MustParseAddr(ip), BGP: true, Protocol: "tcp", Port: 80}
	for _, m := range mut {
		m(s)
	}
	return s
}

func sortedFields(s string) string {
	f := strings.Fields(s)
	slices.Sort(f)
	return strings.Join(f, " ")
}

// BIRD shows every bgp-enabled VIP with the configured next hop, AS path, MED and
// communities (IPv4 and IPv6 over one IPv4 session); bgp = no is not announced.
func TestBIRDSeesAttributes(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6})
	med30, med8 := uint32(30), uint32(8)
	cfg := &config.Config{Global: globalFor(localASN, r)}
	cfg.Global.BGPMED = 5
	cfg.Global.BGPASPath = []uint32{localASN, 64600}
	cfg.Global.BGPCommunities = []string{"65000:1"}
	cfg.Services = []*config.Service{
		service("text-http", "192.0.2.10", func(s *config.Service) {
			s.BGPMED = &med30
			s.BGPCommunities = []string{"64512:80"}
		}),
		service("text-https", "192.0.2.10", func(s *config.Service) { s.BGPCommunities = []string{"64512:443"} }),
		service("upload", "192.0.2.11", func(s *config.Service) { s.BGP = false }),
		service("text-v6", "2001:db8::10"),
		service("upload-v6", "2001:db8::11", func(s *config.Service) {
			s.BGPMED = &med8
			s.BGPCommunities = []string{"64512:6"}
		}),
	}
	s, reg := runSpeaker(t, cfg.Global)
	s.Set(bgp.Desired(cfg, nil))

	for _, p := range []string{"192.0.2.10", "2001:db8::10", "2001:db8::11"} {
		r.mustHave(pfx(p), 10*time.Second)
	}
	got := r.routes()
	want := map[netip.Prefix]birdRoute{
		pfx("192.0.2.10"): {Proto: "kubal", Origin: "IGP", NextHop: "10.0.0.1", ASPath: "4200000001 64600",
			MED: "30", Communities: "(64512,443) (64512,80) (65000,1)"},
		pfx("2001:db8::10"): {Proto: "kubal", Origin: "IGP", NextHop: "fd00::1", ASPath: "4200000001 64600",
			MED: "5", Communities: "(65000,1)"},
		pfx("2001:db8::11"): {Proto: "kubal", Origin: "IGP", NextHop: "fd00::1", ASPath: "4200000001 64600",
			MED: "8", Communities: "(64512,6) (65000,1)"},
	}
	for p := range got {
		rt := got[p]
		rt.Communities = sortedFields(rt.Communities)
		got[p] = rt
	}
	if len(got) != len(want) {
		t.Errorf("BIRD has %d routes, want %d: %+v", len(got), len(want), got)
	}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s at BIRD:\n got %+v\nwant %+v", p, got[p], w)
		}
	}
	if _, ok := got[pfx("192.0.2.11")]; ok {
		t.Error("bgp = no service 192.0.2.11 was announced")
	}

	// Metrics say the same.
	wantMetrics := []string{
		fmt.Sprintf(`pybal_bgp_session_established{local_asn="%d",peer="%s"} 1`, uint32(localASN), r.addr),
	}
	waitMetrics(t, reg, wantMetrics, "pybal_bgp_session_established")
	waitMetrics(t, reg, []string{"kubal_bgp_announced_prefixes{} 3"}, "kubal_bgp_announced_prefixes")
	waitMetrics(t, reg, []string{"pybal_bgp_enabled{} 1"}, "pybal_bgp_enabled")
	// BIRD (connect delay 1 s) usually connects first, so this side is passive.
	var states []string
	if _, ok := testutil.Poll(5*time.Second, time.Millisecond, func() bool {
		states = gathered(t, reg, "pybal_bgp_session_state_count")
		return len(states) == 1 && strings.Contains(states[0], `state="ESTABLISHED"`) &&
			strings.Contains(states[0], `local_ip="10.0.0.1"`) && strings.Contains(states[0], `remote_ip="`+r.addr.String()+`"`)
	}); !ok {
		t.Errorf("pybal_bgp_session_state_count = %q", states)
	}
}

// bgp-withdraw-when-empty: the last depool withdraws the VIP, a repool re-announces
// it; a VIP shared by two services stays while either has a pooled server.
func TestWithdrawWhenEmpty(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6})
	we := func(s *config.Service) { s.BGPWithdrawWhenEmpty = true }
	cfg := &config.Config{Global: globalFor(localASN, r), Services: []*config.Service{
		service("web-http", "192.0.2.20", we),
		service("web-https", "192.0.2.20", we),
		service("api", "192.0.2.21", we),
		service("static", "192.0.2.22"), // PyBal default: always announced
	}}
	s, _ := runSpeaker(t, cfg.Global)
	vip, api, static := pfx("192.0.2.20"), pfx("192.0.2.21"), pfx("192.0.2.22")

	pooled := map[string]int{"web-http": 2, "web-https": 1, "api": 3, "static": 0}
	s.Set(bgp.Desired(cfg, pooled))
	for _, p := range []netip.Prefix{vip, api, static} {
		r.mustHave(p, 10*time.Second)
	}

	pooled["web-http"] = 0 // one of two services on the VIP empties: still announced
	s.Set(bgp.Desired(cfg, pooled))
	time.Sleep(300 * time.Millisecond)
	if !r.has(vip) {
		t.Fatal("shared VIP withdrawn while web-https still has a pooled server")
	}

	pooled["web-https"] = 0 // last depool
	s.Set(bgp.Desired(cfg, pooled))
	d := r.mustNotHave(vip, 2*time.Second)
	t.Logf("withdrawn at BIRD %s after the last depool", d)
	if !r.has(api) || !r.has(static) {
		t.Fatal("withdrawing one VIP touched the others")
	}

	pooled["web-https"] = 1 // repool
	s.Set(bgp.Desired(cfg, pooled))
	d = r.mustHave(vip, 2*time.Second)
	t.Logf("re-announced at BIRD %s after the repool", d)

	pooled["static"] = 0
	pooled["api"] = 0
	s.Set(bgp.Desired(cfg, pooled))
	r.mustNotHave(api, 2*time.Second)
	if !r.has(static) {
		t.Fatal("a service without bgp-withdraw-when-empty was withdrawn")
	}
}

// The speaker in its own process: SIGTERM withdraws at once (Shutdown: withdraw, Cease).
func TestSIGTERMWithdrawsWithin1s(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6})
	vip := pfx("192.0.2.30")
	p := startSpeakerd(t, globalFor(localASN, r), vip)
	r.mustHave(vip, 10*time.Second)

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d := r.mustNotHave(vip, time.Second)
	t.Logf("SIGTERM -> route gone at BIRD: %s", time.Since(start).Round(time.Microsecond))
	if err := p.wait(3 * time.Second); err != nil {
		t.Fatalf("speakerd after SIGTERM: %v\n%s", err, p.log())
	}
	if d > time.Second {
		t.Fatalf("withdraw took %s", d)
	}
	if st := r.protoState(); !strings.Contains(st, "Administrative shutdown") {
		t.Errorf("BIRD did not receive a Cease (administrative shutdown):\n%s", st)
	}
}

// Shutdown writes the withdraw before the Cease: BIRD removes every route on an UPDATE
// while the session is up, not in the flush after "Received: Administrative shutdown"
// (GoBGP writes the Cease straight to the socket, past the queued withdraw; the systemd
// rig's CI run once saw the Cease first). 1,000 routes make the withdraw two UPDATEs;
// the race is retried over several speakers.
func TestShutdownWithdrawsBeforeCease(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6, RouteLog: true})
	cfg := &config.Config{Global: globalFor(localASN, r)}
	const n = 1000
	for i := range n {
		ip := netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)})
		cfg.Services = append(cfg.Services, service(fmt.Sprintf("s%d", i), ip.String()))
	}
	removed := regexp.MustCompile(`kubal\.ipv4 . removed`)
	ended := regexp.MustCompile(`kubal: (Received: |State changed to (stop|flush|down)|Connection (lost|closed))`)
	for round := range 4 {
		s, _ := runSpeaker(t, cfg.Global)
		s.Set(bgp.Desired(cfg, nil))
		if _, ok := testutil.Poll(20*time.Second, 10*time.Millisecond, func() bool { return r.count() == n }); !ok {
			t.Fatalf("round %d: BIRD has %d of %d routes", round, r.count(), n)
		}
		from := len(r.log())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatalf("round %d: Shutdown: %v", round, err)
		}
		r.mustNotHave(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, 1}), 32), 5*time.Second)
		var log string
		if _, ok := testutil.Poll(5*time.Second, 10*time.Millisecond, func() bool {
			log = r.log()[from:]
			return ended.MatchString(log)
		}); !ok {
			t.Fatalf("round %d: BIRD logged no session end after Shutdown:\n%s", round, log)
		}
		before := log[:ended.FindStringIndex(log)[0]]
		if got := len(removed.FindAllString(before, -1)); got != n {
			t.Fatalf("round %d: BIRD removed %d of %d routes on the withdraw before the session ended (the rest in the flush after the Cease)", round, got, n)
		}
	}
}

// kill -9 of a host that vanishes (its egress blackholed, so not even the kernel's
// FIN gets out): with BFD 300 ms x 3 the route is gone within 1.5 s.
func TestKill9WithBFD(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6, BFD: true})
	g := globalFor(localASN, r)
	g.BGPBFD, g.BGPBFDMinRx, g.BGPBFDMinTx, g.BGPBFDMultiplier = true, 300*time.Millisecond, 300*time.Millisecond, 3
	vip := pfx("192.0.2.40")
	p := startSpeakerd(t, g, vip)
	r.mustHave(vip, 10*time.Second)
	// BIRD's detection time is our Detect Mult times our Desired Min TX (GoBGP sends
	// 300 ms x 3 from its first packet; BIRD's own 1 s idle TX rate while not Up does
	// not enter it), so it is 0.9 s from Init on: this waits for Up and checks that.
	if _, ok := testutil.Poll(10*time.Second, time.Millisecond, func() bool { return r.bfdFast(900 * time.Millisecond) }); !ok {
		t.Fatalf("BFD session never came up at BIRD with its 300 ms x 3 timers\n%s", r.debug())
	}

	// The failure starts when the speaker's packets stop reaching BIRD (the qdisc is
	// in place), not when the test begins to exec tc: with a VM running on the same
	// 2 cores that exec alone took 0.47 s, while the speaker still talked to BIRD.
	dropped, harness := p.vanish(t, r)
	_, ok := testutil.Poll(3*time.Second, time.Millisecond, func() bool { return !r.has(vip) })
	took := time.Since(dropped)
	p.mustHaveDied(t)
	if !ok {
		t.Fatalf("route still at BIRD 3 s after kill -9 with BFD\n%s", r.debug())
	}
	// BIRD's own clock for its BFD verdict, so that a slow run says whether BIRD
	// decided late or the test saw it late (a stalled birdc poll).
	verdict := "not in bird.log"
	if at, ok := r.logTime("BFD session down"); ok {
		verdict = at.Sub(dropped).Round(time.Millisecond).String()
	}
	t.Logf("kill -9 (BFD 300ms x3) -> route gone at BIRD: %s after the blackhole (BIRD's BFD verdict at %s; exec of tc before it: %s)",
		took.Round(time.Millisecond), verdict, harness.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Fatalf("BFD failover took %s, want < 1.5 s\n%s", took, r.debug())
	}
	if st := r.protoState(); !strings.Contains(st, "BFD session down") {
		t.Errorf("BIRD did not drop the session for BFD:\n%s", st)
	}
}

// Without BFD the same failure leaves the route in place until the hold time.
func TestKill9WithoutBFDWaitsForHoldTime(t *testing.T) {
	const hold = 6 * time.Second
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: int(hold / time.Second)})
	vip := pfx("192.0.2.41")
	p := startSpeakerd(t, globalFor(localASN, r), vip)
	r.mustHave(vip, 10*time.Second)

	killed := time.Now()
	p.vanish(t, r)
	p.mustHaveDied(t)
	time.Sleep(2*time.Second - time.Since(killed))
	if !r.has(vip) {
		t.Fatalf("route gone within 2 s of kill -9 without BFD: the failure was not silent\n%s", r.debug())
	}
	if _, ok := testutil.Poll(hold+2*time.Second-time.Since(killed), time.Millisecond, func() bool { return !r.has(vip) }); !ok {
		t.Fatalf("route still at BIRD %s after kill -9 (hold time %s)\n%s", time.Since(killed), hold, r.debug())
	}
	t.Logf("kill -9 (no BFD, hold %s) -> route gone at BIRD: %s", hold, time.Since(killed).Round(time.Millisecond))
	if st := r.protoState(); !strings.Contains(st, "Hold timer expired") {
		t.Errorf("BIRD did not drop the session on the hold timer:\n%s", st)
	}
}

// The router restarts: the session comes back and the routes are re-announced.
func TestPeerRestartReconnects(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6})
	g := globalFor(localASN, r)
	s, reg := runSpeaker(t, g)
	vips := []netip.Prefix{pfx("192.0.2.50"), pfx("2001:db8::50")}
	s.Set([]bgp.Announcement{
		{Prefix: vips[0], NextHop: speakerAddr, ASPath: []uint32{localASN}},
		{Prefix: vips[1], NextHop: speakerNH6, ASPath: []uint32{localASN}},
	})
	for _, v := range vips {
		r.mustHave(v, 10*time.Second)
	}
	established := fmt.Sprintf(`pybal_bgp_session_established{local_asn="%d",peer="%s"} `, uint32(localASN), r.addr)
	waitMetrics(t, reg, []string{established + "1"}, "pybal_bgp_session_established")

	r.stop()
	waitMetrics(t, reg, []string{established + "0"}, "pybal_bgp_session_established")
	start := time.Now()
	r.start()
	for _, v := range vips {
		r.mustHave(v, 20*time.Second)
	}
	t.Logf("BIRD restart -> routes back after %s", time.Since(start).Round(time.Millisecond))
	waitMetrics(t, reg, []string{established + "1"}, "pybal_bgp_session_established")
}

// Two routers: both get every route and every withdraw; one router going away does
// not disturb the other session.
func TestTwoPeers(t *testing.T) {
	r1 := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6})
	r2 := newRouter(t, birdConf{ASN: routerASN + 1, SpeakerASN: localASN, HoldTime: 6})
	cfg := &config.Config{Global: globalFor(localASN, r1, r2), Services: []*config.Service{
		service("a", "192.0.2.60", func(s *config.Service) { s.BGPWithdrawWhenEmpty = true }),
		service("b", "192.0.2.61"),
		service("c", "2001:db8::61"),
	}}
	s, reg := runSpeaker(t, cfg.Global)
	s.Set(bgp.Desired(cfg, map[string]int{"a": 1}))
	for _, r := range []*router{r1, r2} {
		for _, p := range []string{"192.0.2.60", "192.0.2.61", "2001:db8::61"} {
			r.mustHave(pfx(p), 10*time.Second)
		}
	}
	s.Set(bgp.Desired(cfg, map[string]int{"a": 0}))
	r1.mustNotHave(pfx("192.0.2.60"), 2*time.Second)
	r2.mustNotHave(pfx("192.0.2.60"), 2*time.Second)

	r1.stop()
	s.Set(bgp.Desired(cfg, map[string]int{"a": 1}))
	r2.mustHave(pfx("192.0.2.60"), 2*time.Second)
	waitMetrics(t, reg, []string{
		fmt.Sprintf(`pybal_bgp_session_established{local_asn="%d",peer="%s"} 0`, uint32(localASN), r1.addr),
		fmt.Sprintf(`pybal_bgp_session_established{local_asn="%d",peer="%s"} 1`, uint32(localASN), r2.addr),
	}, "pybal_bgp_session_established")
}

// BFD state is exported per peer.
func TestBFDMetric(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6, BFD: true})
	g := globalFor(localASN, r)
	g.BGPBFD = true // default intervals: 300 ms x 3
	_, reg := runSpeaker(t, g)
	waitMetrics(t, reg, []string{fmt.Sprintf(`kubal_bgp_bfd_up{peer="%s"} 1`, r.addr)}, "kubal_bgp_bfd_up")
	r.stop()
	waitMetrics(t, reg, []string{fmt.Sprintf(`kubal_bgp_bfd_up{peer="%s"} 0`, r.addr)}, "kubal_bgp_bfd_up")
}

// bfdFast reports whether BIRD's BFD session with the speaker is Up with a detection
// timeout of at most max (`show bfd sessions`: address, interface, state, since,
// interval, timeout in seconds).
func (r *router) bfdFast(max time.Duration) bool {
	lines, err := r.client().Cmd("show bfd sessions")
	if err != nil {
		return false
	}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 6 || f[0] != speakerAddr.String() || f[2] != "Up" {
			continue
		}
		timeout, err := strconv.ParseFloat(f[5], 64)
		return err == nil && timeout > 0 && time.Duration(timeout*float64(time.Second)) <= max
	}
	return false
}

// logTime returns the time of the last bird.log line that contains what (the
// template logs with a millisecond "%T.%3f" timeformat, in local time, today).
func (r *router) logTime(what string) (time.Time, bool) {
	b, err := os.ReadFile(filepath.Join(r.dir, "bird.log"))
	if err != nil {
		return time.Time{}, false
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.Contains(l, what) {
			continue
		}
		clock, _, _ := strings.Cut(l, " ")
		at, err := time.ParseInLocation("15:04:05.000", clock, time.Local)
		if err != nil {
			return time.Time{}, false
		}
		now := time.Now()
		at = time.Date(now.Year(), now.Month(), now.Day(), at.Hour(), at.Minute(), at.Second(), at.Nanosecond(), time.Local)
		if at.After(now.Add(time.Hour)) { // the line is from before midnight
			at = at.AddDate(0, 0, -1)
		}
		return at, true
	}
	return time.Time{}, false
}

func (r *router) bfdUp() bool {
	lines, err := r.client().Cmd("show bfd sessions")
	if err != nil {
		return false
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == speakerAddr.String() && f[2] == "Up" {
			return true
		}
	}
	return false
}

func waitMetrics(t *testing.T, reg *prometheus.Registry, want []string, names ...string) {
	t.Helper()
	var got []string
	if _, ok := testutil.Poll(10*time.Second, time.Millisecond, func() bool {
		got = gathered(t, reg, names...)
		for _, w := range want {
			if !slices.Contains(got, w) {
				return false
			}
		}
		return true
	}); !ok {
		t.Fatalf("metrics:\n got %q\nwant %q", got, want)
	}
}

// gathered renders the named metric families as sorted "name{labels} value" lines.
func gathered(t *testing.T, reg *prometheus.Registry, names ...string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			out = append(out, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(ls, ","), m.GetGauge().GetValue()))
		}
	}
	slices.Sort(out)
	return out
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// speakerdBinary builds ./speakerd once per test process.
func speakerdBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kbgp-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "speakerd")
		out, err := exec.Command("go", "build", "-o", buildBin, "./speakerd").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./speakerd: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

type speakerProc struct {
	cmd     *exec.Cmd
	dir     string
	done    chan struct{}
	waitErr error
}

// startSpeakerd runs the speaker in its own process, announcing vips.
func startSpeakerd(t testing.TB, g config.Global, vips ...netip.Prefix) *speakerProc {
	t.Helper()
	bin := speakerdBinary(t)
	dir := t.TempDir()
	var anns []bgp.Announcement
	for _, v := range vips {
		nh := speakerAddr
		if v.Addr().Is6() {
			nh = speakerNH6
		}
		anns = append(anns, bgp.Announcement{Prefix: v, NextHop: nh, ASPath: []uint32{g.BGPLocalASN}})
	}
	writeJSON(t, filepath.Join(dir, "global.json"), g)
	writeJSON(t, filepath.Join(dir, "announce.json"), anns)
	logf, err := os.Create(filepath.Join(dir, "speakerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-global", filepath.Join(dir, "global.json"), "-announce", filepath.Join(dir, "announce.json"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &speakerProc{cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() { p.waitErr = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("speakerd log:\n%s", p.log())
		}
	})
	return p
}

func (p *speakerProc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("still running after %s", timeout)
	}
}

func (p *speakerProc) log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "speakerd.log"))
	return string(b)
}

// vanish simulates the LVS host dying: every packet from the speaker's side towards
// r is dropped (a zero-length queue on the bridge port), then the speaker gets
// SIGKILL. It returns when the drop took effect (the failure as BIRD sees it starts
// there) and how long running tc took before that. It does not wait for the process
// to be gone (nothing it does can reach r any more): call mustHaveDied for that, after
// timing what r does.
func (p *speakerProc) vanish(t testing.TB, r *router) (dropped time.Time, tcTook time.Duration) {
	t.Helper()
	start := time.Now()
	run(t, "tc", "qdisc", "add", "dev", r.port, "root", "pfifo", "limit", "0")
	dropped = time.Now()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	return dropped, dropped.Sub(start)
}

// mustHaveDied checks that the speaker vanish killed is gone.
func (p *speakerProc) mustHaveDied(t testing.TB) {
	t.Helper()
	err := p.wait(5 * time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("speakerd after SIGKILL: %v", err)
	}
}

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// bgp-graceful-restart, planned restart: Detach closes the session without a Cease,
// BIRD keeps the routes (stale) until the next speaker re-announces; after its
// End-of-RIB a route the new speaker no longer announces is gone. Shutdown still
// withdraws at once.
func TestGracefulRestartDetach(t *testing.T) {
	r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6, GracefulRestart: true})
	g := globalFor(localASN, r)
	g.BGPGracefulRestart = true
	keep, drop := pfx("192.0.2.80"), pfx("192.0.2.81")
	anns := func(ps ...netip.Prefix) []bgp.Announcement {
		var out []bgp.Announcement
		for _, p := range ps {
			out = append(out, bgp.Announcement{Prefix: p, NextHop: speakerAddr, ASPath: []uint32{localASN}})
		}
		return out
	}
	s1, _ := runSpeaker(t, g)
	s1.Set(anns(keep, drop))
	r.mustHave(keep, 10*time.Second)
	r.mustHave(drop, 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s1.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // a restart's worth of downtime
	if !r.has(keep) || !r.has(drop) {
		t.Fatalf("routes dropped during a graceful restart\n%s", r.debug())
	}

	s2, _ := runSpeaker(t, g)
	s2.Set(anns(keep))
	// Hitless: keep never leaves BIRD's table while the new session comes up and
	// the stale drop is flushed at our End-of-RIB.
	start := time.Now()
	for r.has(drop) {
		if !r.has(keep) {
			t.Fatalf("route %s dropped during the restart\n%s", keep, r.debug())
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("stale route %s not flushed\n%s", drop, r.debug())
		}
		time.Sleep(time.Millisecond)
	}
	if !r.has(keep) {
		t.Fatalf("re-announced route missing\n%s", r.debug())
	}
	t.Logf("graceful restart: stale route flushed %s after the new speaker started", time.Since(start).Round(time.Millisecond))

	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := s2.Shutdown(ctx2); err != nil {
		t.Fatal(err)
	}
	r.mustNotHave(keep, time.Second) // Shutdown is not graceful: routers fail over now
}

// The router resets the BGP session (operator `birdc restart`, a config change, a
// NOTIFICATION) while BFD is on and its BFD session is the one BGP asked for (`bfd on;`,
// no `neighbor` in `protocol bfd`, how production routers do it): the router then
// re-creates its BFD session with a new discriminator. The session must come back
// within a few seconds and then stay up; it must not loop on spurious BFD expiries
// (the ECMP rig saw 15 resets in 30 s from one).
func TestBFDSessionSurvivesRouterReset(t *testing.T) {
	cases := []struct {
		name   string
		cmds   []string // birdc commands, run in order
		static bool     // the router declares the BFD neighbour statically
	}{
		{"restart", []string{"restart kubal"}, false},
		{"disable-enable", []string{"disable kubal", "enable kubal"}, false},
		// The router-side mitigation for GoBGP without kubal's fix must keep working.
		{"restart-static-bfd-neighbor", []string{"restart kubal"}, true},
	}
	// Each case holds its sessions for ~20 s (a 10 s stability window after the reset);
	// one after the other they took 64 s, the longest wait of `go test ./...`. They run
	// side by side, each in a test process of its own, which TestMain puts in a fresh
	// network namespace (the speaker's address and its BGP and BFD ports are per
	// namespace), with every window unchanged. Processes, not t.Parallel: -parallel
	// defaults to GOMAXPROCS, 2 here, and these cases mostly wait.
	children := map[string]*caseChild{}
	if rigErr == nil && os.Getenv(envCaseChild) == "" {
		for _, tc := range cases {
			children[tc.name] = startCaseChild(t, t.Name()+"/"+tc.name)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if c := children[tc.name]; c != nil {
				c.wait(t)
				return
			}
			r := newRouter(t, birdConf{ASN: routerASN, SpeakerASN: localASN, HoldTime: 6, BFD: true, BFDNeighbor: tc.static})
			g := globalFor(localASN, r)
			g.BGPBFD, g.BGPBFDMinRx, g.BGPBFDMinTx, g.BGPBFDMultiplier = true, 300*time.Millisecond, 300*time.Millisecond, 3
			s, _ := runSpeaker(t, g)
			vip := pfx("192.0.2.42")
			s.Set([]bgp.Announcement{{Prefix: vip, NextHop: speakerAddr, ASPath: []uint32{localASN}}})
			r.mustHave(vip, 10*time.Second)
			if _, ok := testutil.Poll(10*time.Second, time.Millisecond, r.bfdUp); !ok {
				t.Fatalf("BFD session never came up at BIRD\n%s", r.debug())
			}
			// Let the first BFD session settle so that the reset below is the only event.
			r.mustStayEstablished(2 * time.Second)

			start := time.Now()
			for _, c := range tc.cmds {
				if out, err := r.client().Cmd(c); err != nil {
					t.Fatalf("birdc %s: %v %v", c, err, out)
				}
			}
			back, ok := testutil.Poll(10*time.Second, 10*time.Millisecond, func() bool { return r.established() && r.bfdUp() && r.has(vip) })
			if !ok {
				t.Fatalf("session (BGP + BFD + route) not back 10 s after %q\n%s", tc.cmds, r.debug())
			}
			t.Logf("birdc %q -> BGP Established, BFD Up, route back after %s", tc.cmds, back.Round(time.Millisecond))
			r.mustStayEstablished(10 * time.Second)
			t.Logf("stable for 10 s after the reset (%s since it)", time.Since(start).Round(time.Millisecond))
		})
	}
}

// envCaseChild marks a test process started by startCaseChild: it runs the case itself.
const envCaseChild = "KUBAL_BGP_CASE_CHILD"

// caseChild is one subtest running in a process of this test binary of its own.
type caseChild struct {
	name string
	out  bytes.Buffer
	err  error
	done chan struct{}
}

// startCaseChild starts the subtest of that full name in a new process of this test
// binary (its TestMain re-executes it in a network namespace of its own).
func startCaseChild(t *testing.T, name string) *caseChild {
	t.Helper()
	var pat []string
	for _, part := range strings.Split(name, "/") {
		pat = append(pat, "^"+regexp.QuoteMeta(part)+"$")
	}
	c := &caseChild{name: name, done: make(chan struct{})}
	cmd := exec.Command(os.Args[0], "-test.run", strings.Join(pat, "/"), "-test.v", "-test.count=1", "-test.timeout=5m")
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, envInNetns+"=") { // the child's TestMain makes its own namespace
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, envCaseChild+"=1")
	cmd.Stdout, cmd.Stderr = &c.out, &c.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: starting its process: %v", name, err)
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // a no-op once it has exited
		<-c.done
	})
	return c
}

// wait fails t unless the child process ran the case and it passed.
func (c *caseChild) wait(t *testing.T) {
	t.Helper()
	<-c.done
	t.Logf("%s in its own process:\n%s", c.name, c.out.String())
	if c.err != nil {
		t.Fatalf("%s in its own process: %v", c.name, c.err)
	}
	if !strings.Contains(c.out.String(), "--- PASS: "+c.name+" ") {
		t.Fatalf("%s in its own process: no PASS line for the case (skipped or not run)", c.name)
	}
}

// established reports whether BIRD's kubal protocol is up with BGP Established.
func (r *router) established() bool {
	lines, err := r.client().Cmd("show protocols kubal")
	if err != nil {
		return false
	}
	for _, l := range lines {
		if f := strings.Fields(l); len(f) >= 6 && f[0] == "kubal" && f[3] == "up" && f[5] == "Established" {
			return true
		}
	}
	return false
}

// mustStayEstablished fails the test if the BGP session leaves Established at BIRD
// during d (checked every 20 ms; a reset takes BIRD at least its connect delay, 1 s,
// to come back, so none is missed).
func (r *router) mustStayEstablished(d time.Duration) {
	r.t.Helper()
	start := time.Now()
	for time.Since(start) < d {
		if !r.established() {
			r.t.Fatalf("BGP session left Established %s into a %s stability window:\n%s", time.Since(start).Round(time.Millisecond), d, r.debug())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
