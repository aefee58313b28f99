// Package bgpit tests the bgp package against BIRD2, a real, independent BGP
// implementation, running as the router in network namespaces.
//
// Layout: the test binary re-executes itself under `unshare -n`, so the speaker side
// is a private network namespace and the host is untouched. There a bridge kbbr0
// holds 10.0.0.1/24 and fd00::1/64 (the speaker's address and next hops). Each router
// is a named namespace with one end of a veth pair (the other end is enslaved to the
// bridge) holding 10.0.0.N/24 and fd00::N/64, running `bird -f`.
//
// Needs root, unshare, ip and bird2 (integration/bgp/setup.sh installs it). Without
// them the tests skip, loudly; with KUBAL_REQUIRE_RIGS=1 they fail.
package bgpit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/bgp"
	"github.com/kubal/kubal/config"

	"github.com/kubal/kubal/internal/testutil"
)

const envInNetns = "KUBAL_BGP_IN_NETNS"

var (
	speakerAddr = netip.MustParseAddr("10.0.0.1")
	speakerNH6  = netip.MustParseAddr("fd00::1")
	rigErr      error // why the rig is unavailable, set by TestMain
)

func TestMain(m *testing.M) {
	if os.Getenv(envInNetns) == "" && os.Geteuid() == 0 {
		if code, ok := reexecInNetns(); ok {
			os.Exit(code)
		}
	}
	rigErr = checkRig()
	code := m.Run()
	if buildBin != "" { // the speakerd build (bird_test.go)
		os.RemoveAll(filepath.Dir(buildBin))
	}
	os.Exit(code)
}

// reexecInNetns runs this test binary again in a fresh network namespace.
func reexecInNetns() (int, bool) {
	unshare, err := exec.LookPath("unshare")
	if err != nil || exec.Command(unshare, "-n", "true").Run() != nil {
		return 0, false
	}
	cmd := exec.Command(unshare, append([]string{"-n", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), envInNetns+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, true
	case errors.As(err, &ee):
		return ee.ExitCode(), true
	default:
		fmt.Fprintln(os.Stderr, "bgp rig: re-exec under unshare -n:", err)
		return 1, true
	}
}

func checkRig() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	if os.Getenv(envInNetns) == "" {
		return errors.New("`unshare -n` is not usable here")
	}
	for _, b := range []string{"ip", "tc", "bird", "birdc"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s not found: run integration/bgp/setup.sh", b)
		}
	}
	removeStaleNamespaces()
	script := `set -e
ip link set lo up
ip link add kbbr0 type bridge
ip link set kbbr0 up
ip addr add 10.0.0.1/24 dev kbbr0
ip addr add fd00::1/64 dev kbbr0 nodad`
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		return fmt.Errorf("speaker namespace setup: %v: %s", err, out)
	}
	return nil
}

// removeStaleNamespaces deletes router namespaces left by a test process that died
// before its cleanups ran (names are kbgp<pid>-<n>).
func removeStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "kbgp") {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimPrefix(strings.SplitN(f[0], "-", 2)[0], "kbgp"))
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "del", f[0]).Run()
	}
}

func needRig(t testing.TB) {
	t.Helper()
	if rigErr == nil {
		return
	}
	if os.Getenv("KUBAL_REQUIRE_RIGS") == "1" {
		t.Fatalf("BGP rig (BIRD2 in network namespaces) unavailable: %v", rigErr)
	}
	t.Skipf("SKIPPING: BGP rig (BIRD2 in network namespaces) unavailable: %v", rigErr)
}

var routerSeq atomic.Int32

// birdConf parameterises one BIRD router.
type birdConf struct {
	ASN        uint32 // the router's AS
	SpeakerASN uint32
	HoldTime   int // seconds; 0 = BIRD's default (240)
	BFD        bool
	// BFDNeighbor declares the speaker statically in `protocol bfd` (its BFD session
	// then outlives BGP resets); without it the BFD session is BGP's (`bfd on;`).
	BFDNeighbor bool
	SpeakerPort int // the speaker's listen port; 0 = 179
	// GracefulRestart makes BIRD a graceful-restart helper (keeps our routes as stale
	// while we restart).
	GracefulRestart bool
	// RouteLog adds `routes` to BIRD's protocol debug: each route it imports or
	// removes is a line in bird.log, in order with the session's events.
	RouteLog bool
}

type router struct {
	t    testing.TB
	name string // namespace
	port string // the bridge port (speaker side of the veth)
	addr netip.Addr
	dir  string
	ctl  string
	conf birdConf

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	cli    *birdClient
}

// newRouter creates a router namespace wired to the speaker's bridge and starts BIRD.
func newRouter(t testing.TB, conf birdConf) *router {
	t.Helper()
	needRig(t)
	n := routerSeq.Add(1)
	if n > 250 {
		t.Fatal("out of router addresses")
	}
	dir, err := os.MkdirTemp("", "kbgp")
	if err != nil {
		t.Fatal(err)
	}
	r := &router{
		t:    t,
		name: fmt.Sprintf("kbgp%d-%d", os.Getpid(), n),
		addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(1 + n)}),
		dir:  dir,
		ctl:  filepath.Join(dir, "bird.ctl"),
		conf: conf,
	}
	veth, peer := fmt.Sprintf("kbs%d", n), fmt.Sprintf("kbr%d", n)
	r.port = veth
	run(t, "ip", "netns", "add", r.name)
	t.Cleanup(func() {
		r.stop()
		_ = exec.Command("ip", "netns", "del", r.name).Run()
		os.RemoveAll(dir)
	})
	run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", r.name)
	run(t, "ip", "link", "set", veth, "master", "kbbr0")
	run(t, "ip", "link", "set", veth, "up")
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", r.addr.String() + "/24", "dev", peer},
		{"addr", "add", fmt.Sprintf("fd00::%d/64", 1+n), "dev", peer, "nodad"},
		{"link", "set", peer, "up"},
	} {
		run(t, "ip", append([]string{"-n", r.name}, args...)...)
	}
	r.writeConf()
	r.start()
	return r
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

var birdTmpl = template.Must(template.New("bird").Parse(`
router id {{.Addr}};
log "{{.Dir}}/bird.log" all;
timeformat log "%T.%3f";
debug protocols { states, events{{if .RouteLog}}, routes{{end}} };
protocol device { scan time 10; }
{{if .BFD}}protocol bfd {
	interface "*" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };
	{{if .BFDNeighbor}}neighbor {{.Speaker}};{{end}}
}{{end}}
protocol bgp kubal {
	local {{.Addr}} as {{.ASN}};
	neighbor {{.Speaker}} port {{.Port}} as {{.SpeakerASN}};
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 2;
	{{if .HoldTime}}hold time {{.HoldTime}};{{end}}
	{{if .BFD}}bfd on;{{end}}
	{{if .GR}}graceful restart on;{{else}}graceful restart off;{{end}}
	ipv4 { import all; export none; };
	ipv6 { import all; export none; };
}
`))

func (r *router) writeConf() {
	port := r.conf.SpeakerPort
	if port == 0 {
		port = 179
	}
	var b strings.Builder
	err := birdTmpl.Execute(&b, map[string]any{
		"Addr": r.addr, "Dir": r.dir, "BFD": r.conf.BFD, "ASN": r.conf.ASN, "Speaker": speakerAddr,
		"Port": port, "SpeakerASN": r.conf.SpeakerASN, "HoldTime": r.conf.HoldTime,
		"GR": r.conf.GracefulRestart, "BFDNeighbor": r.conf.BFDNeighbor, "RouteLog": r.conf.RouteLog,
	})
	if err == nil {
		err = os.WriteFile(filepath.Join(r.dir, "bird.conf"), []byte(b.String()), 0o644)
	}
	if err != nil {
		r.t.Fatal(err)
	}
}

// start runs BIRD in the router namespace and connects its control socket.
func (r *router) start() {
	r.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", r.name, "bird", "-f",
		"-c", filepath.Join(r.dir, "bird.conf"), "-s", r.ctl)
	out, _ := os.OpenFile(filepath.Join(r.dir, "bird.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("start bird: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(exited) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		cli, err := dialBird(r.ctl)
		if err == nil {
			r.mu.Lock()
			r.cmd, r.exited, r.cli = cmd, exited, cli
			r.mu.Unlock()
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(r.dir, "bird.out"))
			r.t.Fatalf("bird did not come up: %v\n%s", err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop terminates BIRD (SIGTERM: it sends a Cease) and waits for it.
func (r *router) stop() {
	r.mu.Lock()
	cmd, exited, cli := r.cmd, r.exited, r.cli
	r.cmd, r.exited, r.cli = nil, nil, nil
	r.mu.Unlock()
	if cli != nil {
		cli.Close()
	}
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	os.Remove(r.ctl)
}

// log returns BIRD's log file so far.
func (r *router) log() string {
	b, err := os.ReadFile(filepath.Join(r.dir, "bird.log"))
	if err != nil {
		r.t.Fatal(err)
	}
	return string(b)
}

func (r *router) client() *birdClient {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cli
}

// routes returns BIRD's `show route all`, parsed.
func (r *router) routes() map[netip.Prefix]birdRoute {
	r.t.Helper()
	lines, err := r.client().Cmd("show route all")
	if err != nil {
		r.t.Fatalf("birdc show route all: %v", err)
	}
	return parseRoutes(lines)
}

// has reports whether BIRD holds a route for p.
func (r *router) has(p netip.Prefix) bool {
	r.t.Helper()
	lines, err := r.client().Cmd("show route " + p.String())
	if err != nil {
		r.t.Fatalf("birdc show route %s: %v", p, err)
	}
	return slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, p.String()+" ") })
}

// count returns the number of routes in BIRD's tables.
func (r *router) count() int {
	r.t.Helper()
	lines, err := r.client().Cmd("show route count")
	if err != nil {
		r.t.Fatalf("birdc show route count: %v", err)
	}
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "Total: "); ok {
			n, _ := strconv.Atoi(strings.Fields(rest)[0])
			return n
		}
	}
	// A single table prints no Total line.
	total := 0
	for _, l := range lines {
		if f := strings.Fields(l); len(f) > 1 && f[1] == "of" {
			n, _ := strconv.Atoi(f[0])
			total += n
		}
	}
	return total
}

func (r *router) mustHave(p netip.Prefix, timeout time.Duration) time.Duration {
	r.t.Helper()
	d, ok := testutil.Poll(timeout, time.Millisecond, func() bool { return r.has(p) })
	if !ok {
		r.t.Fatalf("%s: route %s not in BIRD after %s\n%s", r.name, p, timeout, r.debug())
	}
	return d
}

func (r *router) mustNotHave(p netip.Prefix, timeout time.Duration) time.Duration {
	r.t.Helper()
	d, ok := testutil.Poll(timeout, time.Millisecond, func() bool { return !r.has(p) })
	if !ok {
		r.t.Fatalf("%s: route %s still in BIRD after %s\n%s", r.name, p, timeout, r.debug())
	}
	return d
}

func (r *router) protoState() string {
	lines, err := r.client().Cmd("show protocols kubal")
	if err != nil {
		return err.Error()
	}
	return strings.Join(lines, "\n")
}

func (r *router) debug() string {
	lines, _ := r.client().Cmd("show protocols all kubal")
	log, _ := os.ReadFile(filepath.Join(r.dir, "bird.log"))
	if len(log) > 3000 {
		log = log[len(log)-3000:]
	}
	return strings.Join(lines, "\n") + "\n--- bird.log (tail)\n" + string(log)
}

// birdClient speaks BIRD's control-socket protocol: replies are lines "DDDD-text"
// (more follow), " text" (continuation) and "DDDD text" (last line).
type birdClient struct {
	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

func dialBird(path string) (*birdClient, error) {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, err
	}
	c := &birdClient{conn: conn, rd: bufio.NewReader(conn)}
	if _, err := c.read(); err != nil { // greeting
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *birdClient) Close() { c.conn.Close() }

func (c *birdClient) Cmd(cmd string) ([]string, error) {
	if c == nil {
		return nil, errors.New("BIRD is not running")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	return c.read()
}

func (c *birdClient) read() ([]string, error) {
	var out []string
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return out, err
		}
		line = strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(line, " ") {
			out = append(out, line[1:])
			continue
		}
		if len(line) < 5 {
			return out, fmt.Errorf("bad BIRD reply line %q", line)
		}
		if line[5:] != "" || line[4] == '-' {
			out = append(out, line[5:])
		}
		if line[4] == ' ' { // last line (8xxx/9xxx codes, e.g. "8001 Network not found", too)
			return out, nil
		}
	}
}

// birdRoute is one route of `show route all`.
type birdRoute struct {
	Proto       string
	NextHop     string
	ASPath      string
	MED         string
	Communities string
	Origin      string
}

func parseRoutes(lines []string) map[netip.Prefix]birdRoute {
	out := map[netip.Prefix]birdRoute{}
	var cur netip.Prefix
	for _, l := range lines {
		if l == "" || strings.HasPrefix(l, "Table ") {
			continue
		}
		if !strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, " ") {
			f := strings.Fields(l)
			p, err := netip.ParsePrefix(f[0])
			if err != nil {
				continue
			}
			cur = p
			rt := birdRoute{}
			if i := strings.Index(l, "["); i >= 0 {
				rt.Proto = strings.Fields(l[i+1:])[0]
			}
			out[cur] = rt
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(l), ": ")
		if !ok || !cur.IsValid() {
			continue
		}
		rt := out[cur]
		switch k {
		case "BGP.next_hop":
			rt.NextHop = v
		case "BGP.as_path":
			rt.ASPath = v
		case "BGP.med":
			rt.MED = v
		case "BGP.community":
			rt.Communities = v
		case "BGP.origin":
			rt.Origin = v
		}
		out[cur] = rt
	}
	return out
}

// globalFor returns a [global] BGP config peering with the given routers.
func globalFor(asn uint32, routers ...*router) config.Global {
	g := config.Global{
		BGP: true, BGPLocalASN: asn,
		BGPNextHopIPv4: speakerAddr, BGPNextHopIPv6: speakerNH6,
		BGPLocalIPs: []string{speakerAddr.String()},
		BGPHoldTime: 6 * time.Second,
	}
	for _, r := range routers {
		g.BGPPeerAddresses = append(g.BGPPeerAddresses, r.addr)
	}
	return g
}

// runSpeaker runs a bgp.Speaker in this process (the speaker namespace).
func runSpeaker(t testing.TB, g config.Global) (*bgp.Speaker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	w := &testWriter{t: t}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := bgp.New(g, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer scancel()
		if err := s.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return")
		}
		w.close()
	})
	return s, reg
}

// testWriter sends log lines to t.Log until the test's cleanup closes it (GoBGP's
// goroutines may log a little after Stop returns).
type testWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

func pfx(s string) netip.Prefix {
	a := netip.MustParseAddr(s)
	return netip.PrefixFrom(a, a.BitLen())
}
