package peerbench

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubal/kubal/integration/vmrig"
)

// inVM is set by integration/vm/vmexec inside the VM (KUBAL_IN_VM=1).
var inVM = os.Getenv("KUBAL_IN_VM") == "1"

// requireVM skips outside the VM, loudly: the benchmark needs a kernel with IPVS, the
// kubal binary and keepalived, which run.sh puts in the VM.
func requireVM(t testing.TB) {
	t.Helper()
	if !inVM {
		t.Skip("SKIPPED: peer benchmark (kubal vs keepalived on real IPVS); the host kernel has no IPVS. Run `make peerbench-smoke` or `make peerbench` (integration/peerbench/run.sh boots the VM)")
	}
}

func TestMain(m *testing.M) {
	if !inVM {
		fmt.Fprintln(os.Stderr, "integration/peerbench: not in the IPVS VM: the benchmark SKIPS (run `make peerbench-smoke`)")
	}
	os.Exit(m.Run())
}

// inNS runs fn in the named network namespace (vmrig.InNS).
func inNS(name string, fn func() error) error { return vmrig.InNS(name, fn) }

// Topology (one kernel): the VM's root namespace is the director (the daemons run
// there and program its IPVS); namespace "rs" holds every real server address on one
// veth, and namespace "client" opens connections through the VIPs. All on bridge br0,
// one /16, so DR works. Every VIP of vipNet is local on the director's lo (IPVS needs
// the VIP local; kubal's vip-addresses is off and keepalived's virtual_server adds
// none) and on the real servers' lo (DR: arp_ignore=1, arp_announce=2).
const (
	directorIP = "10.0.0.1"
	clientIP   = "10.0.0.2"
	vipNet     = "10.100.0.0/16"
	rsNS       = "rs"
	clientNS   = "client"
	healthPort = 8081
	trafficPrt = 80
)

// serverIP is the address of real server i (0-based), from 10.0.1.1 on.
func serverIP(i int) string { return fmt.Sprintf("10.0.%d.%d", 1+i/250, 1+i%250) }

// vipOf is the VIP of service i (0-based), from 10.100.0.1 on.
func vipOf(i int) string { return fmt.Sprintf("10.100.%d.%d", i/250, 1+i%250) }

// backends are the real servers: one HTTP listener for the health port and one for the
// traffic port in namespace rs, answering for every real server address. The health
// answer of each address is switched by the test; every health request and connection
// is counted (HTTP checks by request, TCP checks by connection).
type backends struct {
	mu       sync.Mutex
	failing  map[string]bool
	seen     map[string][]probe // health requests per address, while tracing
	requests atomic.Int64
	conns    atomic.Int64
}

// probe is one health request a real server answered.
type probe struct {
	at     time.Time
	status int
}

// trace starts (or, with on false, stops and clears) recording every health request
// per address, to explain slow detections.
func (b *backends) trace(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen = nil
	if on {
		b.seen = map[string][]probe{}
	}
}

// probes returns the health requests ip answered since tracing started.
func (b *backends) probes(ip string) []probe {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]probe(nil), b.seen[ip]...)
}

func (b *backends) setFailing(ip string, fail bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if fail {
		b.failing[ip] = true
	} else {
		delete(b.failing, ip)
	}
}

func (b *backends) health(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	ip := ""
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ip, _, _ = net.SplitHostPort(a.String())
	}
	b.mu.Lock()
	fail := b.failing[ip]
	if b.seen != nil {
		st := http.StatusOK
		if fail {
			st = http.StatusServiceUnavailable
		}
		b.seen[ip] = append(b.seen[ip], probe{time.Now(), st})
	}
	b.mu.Unlock()
	if fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "failing\n")
		return
	}
	io.WriteString(w, "ok\n")
}

// sh runs a command, failing the test with its output.
func sh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ipBatch runs `ip [-n ns] -batch -`: every exec is slow under TCG.
func ipBatch(t testing.TB, ns, cmds string) {
	t.Helper()
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(cmds)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// topology builds the namespaces and starts the backends for nServers real servers.
func topology(t testing.TB, nServers int) *backends {
	t.Helper()
	var root strings.Builder
	root.WriteString("link add br0 type bridge\nlink set br0 up\n")
	fmt.Fprintf(&root, "addr add %s/16 dev br0\naddr add %s dev lo\n", directorIP, vipNet)
	for _, ns := range []string{rsNS, clientNS} {
		fmt.Fprintf(&root, "netns add %s\nlink add v-%s type veth peer name eth0 netns %s\nlink set v-%s master br0 up\n", ns, ns, ns, ns)
	}
	ipBatch(t, "", root.String())
	ipBatch(t, clientNS, fmt.Sprintf("link set lo up\naddr add %s/16 dev eth0\nlink set eth0 up\nroute add %s via %s\n", clientIP, vipNet, directorIP))
	var rs strings.Builder
	fmt.Fprintf(&rs, "link set lo up\naddr add %s dev lo\nlink set eth0 up\n", vipNet)
	for i := range nServers {
		fmt.Fprintf(&rs, "addr add %s/16 dev eth0\n", serverIP(i))
	}
	ipBatch(t, rsNS, rs.String())
	for _, s := range []string{"net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"} {
		sh(t, "ip", "netns", "exec", rsNS, "sysctl", "-q", "-w", s)
	}
	b := &backends{failing: map[string]bool{}}
	listen := func(port int) net.Listener {
		var ln net.Listener
		if err := inNS(rsNS, func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port)); return err }); err != nil {
			t.Fatalf("listen in %s: %v", rsNS, err)
		}
		return ln
	}
	hs := &http.Server{Handler: http.HandlerFunc(b.health), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}}
	go hs.Serve(listen(healthPort))
	// The traffic port answers with the real server's address, on keep-alive connections.
	go http.Serve(listen(trafficPrt), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "served\n")
	}))
	return b
}
