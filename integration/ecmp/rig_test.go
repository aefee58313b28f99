package ecmp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kubal/kubal/integration/vmrig"
)

// inVM is set by integration/vm/vmexec inside the VM (KUBAL_IN_VM=1).
var inVM = os.Getenv("KUBAL_IN_VM") == "1"

func TestMain(m *testing.M) {
	if !inVM {
		fmt.Fprintln(os.Stderr, "integration/ecmp: not in the IPVS VM: the scenario SKIPS (run `make test-ecmp`)")
	}
	os.Exit(m.Run())
}

// requireVM skips outside the VM, loudly: the rig needs a kernel with IPVS, a static
// kubal and BIRD, which run.sh puts in the VM.
func requireVM(t *testing.T) {
	t.Helper()
	if !inVM {
		t.Skip("SKIPPED: the active-active ECMP rig (real IPVS, BIRD2, several kubal directors) runs in the VM: `make test-ecmp` (integration/ecmp/run.sh)")
	}
	for _, f := range []string{"/proc/net/ip_vs", kubalBin, "/usr/sbin/bird"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("the VM lacks %s (run integration/ecmp/run.sh, which packs it): %v", f, err)
		}
	}
}

// Addresses of the rig. The LAN (bridge br0 in the VM's root namespace) holds the
// router, the directors and the backends; the client sits behind the router.
const (
	vip        = "192.0.2.80"
	vipPort    = 80
	routerLAN  = "10.0.0.254"
	routerCli  = "10.1.0.1"
	clientIP   = "10.1.0.2"
	routerNS   = "router"
	clientNS   = "client"
	workDir    = "/tmp/ecmp"
	kubalBin   = "/usr/sbin/kubal"
	routerASN  = 64512
	kubalASN   = 64600
	bfdMs      = 200 // BFD min rx/tx at both ends
	bfdMult    = 3
	synthBase  = 50000 // first client port of the synthetic flows
	drainTimeS = 120   // depool-mode = drain: removed backends keep their connections this long
)

// bfdDetect is the BFD detection time the router applies.
const bfdDetect = bfdMs * bfdMult * time.Millisecond

type director struct {
	name string // network namespace and BGP protocol name at BIRD
	ip   string
	dir  string
	proc *vmrig.Proc
	runs int
}

type backend struct{ name, ip string }

var backends = []backend{{"b1", "10.0.0.11"}, {"b2", "10.0.0.12"}, {"b3", "10.0.0.13"}, {"b4", "10.0.0.14"}}

func newDirectors() []*director {
	var ds []*director
	for i := 1; i <= 3; i++ {
		ds = append(ds, &director{name: fmt.Sprintf("d%d", i), ip: fmt.Sprintf("10.0.0.%d", i), dir: filepath.Join(workDir, fmt.Sprintf("d%d", i))})
	}
	return ds
}

// topology builds the namespaces. The router forwards between the client and the LAN
// and hashes flows on the 5-tuple (fib_multipath_hash_policy=1) over the ECMP route
// BIRD installs. Directors and backends carry the VIP on lo (as Puppet does on LVS
// hosts; kubal's vip-addresses stays off) and never answer ARP for it; backends answer
// clients directly through the router (direct routing).
func topology(t *testing.T, ds []*director) {
	t.Helper()
	var root strings.Builder
	root.WriteString("link add br0 type bridge\nlink set br0 up\n")
	lan := []string{routerNS}
	for _, d := range ds {
		lan = append(lan, d.name)
	}
	for _, b := range backends {
		lan = append(lan, b.name)
	}
	for _, ns := range append(lan, clientNS) {
		fmt.Fprintf(&root, "netns add %s\n", ns)
	}
	for _, ns := range lan {
		fmt.Fprintf(&root, "link add v%s type veth peer name eth0 netns %s\nlink set v%s master br0 up\n", ns, ns, ns)
	}
	fmt.Fprintf(&root, "link add vcli type veth peer name eth0 netns %s\nlink set vcli netns %s name eth1\n", clientNS, routerNS)
	ipBatch(t, "", root.String())
	ipBatch(t, routerNS, fmt.Sprintf("link set lo up\naddr add %s/24 dev eth0\nlink set eth0 up\naddr add %s/24 dev eth1\nlink set eth1 up\n", routerLAN, routerCli))
	ipBatch(t, clientNS, fmt.Sprintf("link set lo up\naddr add %s/24 dev eth0\nlink set eth0 up\nroute add default via %s\n", clientIP, routerCli))
	host := func(ns, ip string) {
		ipBatch(t, ns, fmt.Sprintf("link set lo up\naddr add %s/32 dev lo\naddr add %s/24 dev eth0\nlink set eth0 up\nroute add default via %s\n", vip, ip, routerLAN))
		sysctl(t, ns, "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
	}
	for _, d := range ds {
		host(d.name, d.ip)
		if err := os.MkdirAll(d.dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range backends {
		host(b.name, b.ip)
	}
	sysctl(t, routerNS, "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1")
	// The long-lived connections take ephemeral ports below the synthetic flows' range.
	sysctl(t, clientNS, "net.ipv4.ip_local_port_range=20000 49999")
}

func ipBatch(t *testing.T, ns, cmds string) {
	t.Helper()
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command("/sbin/ip", args...)
	cmd.Stdin = strings.NewReader(cmds)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s\n%s", strings.Join(args, " "), err, out, cmds)
	}
}

func sysctl(t *testing.T, ns string, kv ...string) {
	t.Helper()
	args := append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, kv...)
	if out, err := exec.Command("/sbin/ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %v in %s: %v: %s", kv, ns, err, out)
	}
}

// readSysctl reads a sysctl of a namespace: /proc/sys/net shows the network
// namespace of the reading thread.
func readSysctl(ns, key string) (string, error) {
	var v string
	err := vmrig.InNS(ns, func() error {
		b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// ---- BIRD, the router ----

func birdConf(ds []*director) string {
	var b strings.Builder
	fmt.Fprintf(&b, `router id %s;
log "%s/bird.log" all;
debug protocols { states, events, routes };
protocol device { scan time 10; }
# ECMP into the kernel: the BGP routes of several directors for the VIP are merged
# into one multipath route (they are mergeable: same local preference, AS path length,
# origin and MED, all eBGP, no IGP metric).
protocol kernel {
	ipv4 { import none; export all; };
	merge paths on;
}
protocol bfd {
	interface "*" { min rx interval %d ms; min tx interval %d ms; multiplier %d; };
%s}
template bgp director {
	local %s as %d;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 2;
	hold time 30;
	bfd on;
	graceful restart off;
	ipv4 { import all; export none; };
}
`, routerLAN, workDir, bfdMs, bfdMs, bfdMult, bfdNeighbors(ds), routerLAN, routerASN)
	for _, d := range ds {
		fmt.Fprintf(&b, "protocol bgp %s from director { neighbor %s as %d; }\n", d.name, d.ip, kubalASN)
	}
	return b.String()
}

// bfdNeighbors declares the BFD sessions in BIRD's bfd protocol when
// KUBAL_ECMP_BFD_STATIC=1. By default BIRD creates them from BGP (`bfd on;`), as
// routers do, and makes a new session (a new discriminator) each time a BGP session
// restarts: kubal follows it by running a peer's BFD session only while its BGP session
// is established (bgp/bfd.go). Before that, GoBGP's BFD stayed bound to the old
// discriminator, expired, reset BGP, and the route flapped every few seconds.
func bfdNeighbors(ds []*director) string {
	if os.Getenv("KUBAL_ECMP_BFD_STATIC") != "1" {
		return ""
	}
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "\tneighbor %s;\n", d.ip)
	}
	return b.String()
}

func startBird(t *testing.T, ds []*director) (*vmrig.Proc, *vmrig.Bird) {
	t.Helper()
	conf := filepath.Join(workDir, "bird.conf")
	must(t, os.WriteFile(conf, []byte(birdConf(ds)), 0o644))
	ctl := filepath.Join(workDir, "bird.ctl")
	p, err := vmrig.Start("bird", filepath.Join(workDir, "bird.out"), nil, "/sbin/ip", "netns", "exec", routerNS, "/usr/sbin/bird", "-f", "-c", conf, "-s", ctl)
	must(t, err)
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := vmrig.DialBird(ctl)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return p, c
		}
		if time.Now().After(deadline) || !p.Alive() {
			t.Fatalf("BIRD did not come up: %v\n%s", err, p.Tail(3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// routerPaths returns the next hops of the router's kernel route to the VIP (the ECMP
// paths the flows are spread over).
type routerView struct {
	h       *netlink.Handle
	mu      sync.Mutex
	changes []pathChange
}

func newRouterView(t *testing.T) *routerView {
	t.Helper()
	ns, err := netns.GetFromName(routerNS)
	must(t, err)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	ns.Close()
	must(t, err)
	t.Cleanup(h.Close)
	return &routerView{h: h}
}

func (r *routerView) paths() []string {
	_, dst, _ := net.ParseCIDR(vip + "/32")
	var routes []netlink.Route
	var err error
	for range 5 {
		// A dump that races a route change is interrupted; ask again.
		routes, err = r.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return []string{"ERROR " + err.Error()}
	}
	var gws []string
	for _, rt := range routes {
		if rt.Gw != nil {
			gws = append(gws, rt.Gw.String())
		}
		for _, nh := range rt.MultiPath {
			gws = append(gws, nh.Gw.String())
		}
	}
	return gws
}

// watch records every change of the router's paths (polled every 20 ms) until the
// test ends: flaps (a path lost and back without the scenario acting) show in the
// step lines.
func (r *routerView) watch(t *testing.T) {
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		var last string
		for {
			p := strings.Join(r.paths(), " ")
			if p != last {
				r.mu.Lock()
				r.changes = append(r.changes, pathChange{time.Now(), p})
				r.mu.Unlock()
				last = p
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
}

type pathChange struct {
	at    time.Time
	paths string
}

// lost counts, since t0, the changes that dropped a path of a director other than
// except: the flaps (BFD or BGP sessions lost under load).
func (r *routerView) lost(t0 time.Time, except string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	prev := map[string]bool{}
	for _, c := range r.changes {
		cur := map[string]bool{}
		for _, p := range strings.Fields(c.paths) {
			cur[p] = true
		}
		if !c.at.Before(t0) {
			for p := range prev {
				if !cur[p] && p != except {
					n++
				}
			}
		}
		prev = cur
	}
	return n
}

// timeline lists the path changes since t0, with their times from t0.
func (r *routerView) timeline(t0 time.Time) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	for _, c := range r.changes {
		if !c.at.Before(t0) {
			parts = append(parts, fmt.Sprintf("+%s [%s]", ms(c.at.Sub(t0)), c.paths))
		}
	}
	return strings.Join(parts, ", ")
}

func (r *routerView) has(ip string) bool {
	for _, g := range r.paths() {
		if g == ip {
			return true
		}
	}
	return false
}

// ---- kubal, the directors ----

// kubalConf is one director's configuration: all directors share everything but the
// next hop (their own address) and their files. The control run uses `wrr` and no
// active-active mode.
func kubalConf(d *director, scheduler string, activeActive bool) string {
	aa, flags := "", ""
	if activeActive {
		aa = activeActiveKey
	}
	if scheduler == "mh" {
		flags = "scheduler-flags = mh-port\n"
	}
	return fmt.Sprintf(`# kubal, director %[1]s of the ECMP rig
[global]
bgp = yes
bgp-local-asn = %[2]d
bgp-peer-address = %[3]s
bgp-nexthop-ipv4 = %[4]s
bgp-hold-time = 30
bgp-bfd = yes
bgp-bfd-min-rx = %[5]d
bgp-bfd-min-tx = %[5]d
bgp-bfd-multiplier = %[6]d
instrumentation = yes
instrumentation_port = 9090
instrumentation_ips = ['127.0.0.1']
admin_port = 9091
admin_ips = ['127.0.0.1']
state-file = %[7]s/state.json
%[8]s
[vip_80]
protocol = tcp
ip = %[9]s
port = %[10]d
scheduler = %[11]s
%[12]sconfig = file://%[13]s/servers.list
monitors = ['TCP']
tcp.interval = 1
tcp.timeout = 1
depool-threshold = .5
depool-mode = drain
drain-timeout = %[14]d
`, d.name, kubalASN, routerLAN, d.ip, bfdMs, bfdMult, d.dir, aa, vip, vipPort, scheduler, flags, workDir, drainTimeS)
}

// writeServers writes the server list every director reads (file://, polled every
// 500 ms), with the named backends enabled.
func writeServers(t *testing.T, names ...string) {
	t.Helper()
	var b strings.Builder
	for _, be := range backends {
		for _, n := range names {
			if n == be.name {
				fmt.Fprintf(&b, "{ 'host': '%s', 'weight': 10, 'enabled': True }\n", be.ip)
			}
		}
	}
	tmp := filepath.Join(workDir, "servers.list.tmp")
	must(t, os.WriteFile(tmp, []byte(b.String()), 0o644))
	must(t, os.Rename(tmp, filepath.Join(workDir, "servers.list")))
}

func (d *director) start(t *testing.T, scheduler string, activeActive bool) time.Time {
	t.Helper()
	conf := filepath.Join(d.dir, "kubal.conf")
	must(t, os.WriteFile(conf, []byte(kubalConf(d, scheduler, activeActive)), 0o644))
	d.runs++
	t0 := time.Now()
	p, err := vmrig.Start(fmt.Sprintf("kubal-%s-%d", d.name, d.runs), filepath.Join(d.dir, fmt.Sprintf("kubal-%d.log", d.runs)), nil,
		"/sbin/ip", "netns", "exec", d.name, kubalBin, "-c", conf)
	must(t, err)
	d.proc = p
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	return t0
}

func (d *director) alive() bool { return d.proc != nil && d.proc.Alive() }

func (d *director) signal(sig syscall.Signal, wait time.Duration) bool {
	if d.proc == nil {
		return true
	}
	return d.proc.Signal(sig, wait)
}

// dests returns the director's IPVS destinations of the VIP: address -> weight, and
// the connection entries (active + inactive) per address.
func (d *director) dests() (weights map[string]int, conns map[string]int, err error) {
	h, err := mobyipvs.New("/run/netns/" + d.name)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	svcs, err := h.GetServices()
	if err != nil {
		return nil, nil, err
	}
	weights, conns = map[string]int{}, map[string]int{}
	for _, s := range svcs {
		if s.Address.String() != vip || s.Port != vipPort {
			continue
		}
		ds, err := h.GetDestinations(s)
		if err != nil {
			return nil, nil, err
		}
		for _, de := range ds {
			weights[de.Address.String()] = de.Weight
			conns[de.Address.String()] = de.ActiveConnections + de.InactiveConnections
		}
	}
	return weights, conns, nil
}

// scheduler returns the scheduler of the director's VIP service ("" if none).
func (d *director) scheduler() string {
	h, err := mobyipvs.New("/run/netns/" + d.name)
	if err != nil {
		return ""
	}
	defer h.Close()
	svcs, _ := h.GetServices()
	for _, s := range svcs {
		if s.Address.String() == vip && s.Port == vipPort {
			return s.SchedName
		}
	}
	return ""
}

// poolSize counts destinations with a non-zero weight.
func (d *director) poolSize() int {
	w, _, err := d.dests()
	if err != nil {
		return -1
	}
	n := 0
	for _, v := range w {
		if v > 0 {
			n++
		}
	}
	return n
}

// api GETs a path of the director's instrumentation API (on its own loopback).
func (d *director) api(path string) string {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := vmrig.InNS(d.name, func() (err error) { c, err = net.DialTimeout(network, addr, 5*time.Second); return err })
		return c, err
	}}
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := cl.Get("http://127.0.0.1:9090" + path)
	if err != nil {
		return "ERROR " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// blackhole cuts the director off the LAN (its bridge port down): the host is gone as
// far as the router, the backends and the client can tell. Through netlink, not `ip`:
// an exec takes up to a second under TCG, and the kill is timed from here.
func (d *director) blackhole(t *testing.T, down bool) {
	t.Helper()
	l, err := netlink.LinkByName("v" + d.name)
	must(t, err)
	if down {
		must(t, netlink.LinkSetDown(l))
	} else {
		must(t, netlink.LinkSetUp(l))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }
