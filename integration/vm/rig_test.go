package vm

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubal/kubal/integration/vmrig"
)

// inVM is set by vmexec inside the VM (KUBAL_IN_VM=1).
var inVM = os.Getenv("KUBAL_IN_VM") == "1"

// requireVM skips outside the VM, loudly: these tests need a kernel with IPVS and run
// through `make test-vm`. (KUBAL_REQUIRE_RIGS does not turn this into a failure on
// the host: `make test` runs the VM separately.)
func requireVM(t testing.TB) {
	t.Helper()
	if !inVM {
		t.Skip("SKIPPED: real-kernel IPVS test; the host kernel has no IPVS. Run `make test-vm` (integration/vm/run-tests.sh boots a VM)")
	}
}

func TestMain(m *testing.M) {
	if !inVM {
		fmt.Fprintln(os.Stderr, "integration/vm: not in the IPVS VM: every test here SKIPS (run `make test-vm`)")
	}
	os.Exit(m.Run())
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs fn in the named network namespace (vmrig.InNS).
func inNS(name string, fn func() error) error { return vmrig.InNS(name, fn) }

const (
	vip    = "10.0.0.100"
	bridge = "br0"
)

// host is a network namespace on the bridge.
type host struct{ name, addr string }

var (
	client   = host{"client", "10.0.0.10"}
	director = host{"director", "10.0.0.2"}
	realSrv  = []host{{"rs1", "10.0.0.3"}, {"rs2", "10.0.0.4"}, {"rs3", "10.0.0.5"}}
)

var topoOnce sync.Once

// topology builds, once per VM boot, the DR setup: client, director and real servers
// in namespaces on one bridge; the real servers hold the VIP on lo with arp_ignore=1 /
// arp_announce=2 and serve HTTP on :80 answering their name. The director's VIP is
// added by the test (through kubal's Addresses).
func topology(t *testing.T) {
	t.Helper()
	requireVM(t)
	var failed error
	topoOnce.Do(func() {
		sh := func(args ...string) {
			if failed != nil {
				return
			}
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				failed = fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
		// `ip -batch`: every exec is slow under TCG.
		ipBatch := func(ns, cmds string) {
			if failed != nil {
				return
			}
			args := []string{"-batch", "-"}
			if ns != "" {
				args = append([]string{"-n", ns}, args...)
			}
			cmd := exec.Command("ip", args...)
			cmd.Stdin = strings.NewReader(cmds)
			if out, err := cmd.CombinedOutput(); err != nil {
				failed = fmt.Errorf("ip %s: %v: %s\n%s", strings.Join(args, " "), err, out, cmds)
			}
		}
		var root strings.Builder
		root.WriteString("link add " + bridge + " type bridge\nlink set " + bridge + " up\n")
		hosts := append([]host{client, director}, realSrv...)
		for _, h := range hosts {
			fmt.Fprintf(&root, "netns add %s\n", h.name)
			fmt.Fprintf(&root, "link add v-%s type veth peer name eth0 netns %s\n", h.name, h.name)
			fmt.Fprintf(&root, "link set v-%s master %s up\n", h.name, bridge)
		}
		ipBatch("", root.String())
		for _, h := range hosts {
			cmds := fmt.Sprintf("addr add %s/24 dev eth0\nlink set eth0 up\nlink set lo up\n", h.addr)
			if h != client && h != director {
				cmds += "addr add " + vip + "/32 dev lo\n"
			}
			ipBatch(h.name, cmds)
		}
		for _, h := range realSrv {
			for _, s := range []string{"net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"} {
				sh("ip", "netns", "exec", h.name, "sysctl", "-q", "-w", s)
			}
			if failed != nil {
				return
			}
			h := h
			var ln net.Listener
			if err := inNS(h.name, func() (err error) { ln, err = net.Listen("tcp4", "0.0.0.0:80"); return err }); err != nil {
				failed = err
				return
			}
			go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, h.name) }))
		}
		// Short FIN_WAIT timeout so that closed connections leave the table quickly (drain).
		sh("ip", "netns", "exec", director.name, "ipvsadm", "--set", "900", "2", "300")
	})
	if failed != nil {
		t.Fatalf("topology: %v", failed)
	}
}

// httpClient returns a client whose connections start in the client namespace.
func httpClient(keepAlive bool) *http.Client {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = inNS(client.name, func() error {
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: !keepAlive, MaxConnsPerHost: 1}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// get fetches http://VIP/ and returns the name of the real server that answered.
func get(c *http.Client) (string, error) {
	resp, err := c.Get("http://" + vip + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// spread makes n fresh connections and counts answers per real server.
func spread(t *testing.T, n int) map[string]int {
	t.Helper()
	c := httpClient(false)
	out := map[string]int{}
	for range n {
		name, err := get(c)
		if err != nil {
			t.Fatalf("request through the VIP: %v", err)
		}
		out[name]++
	}
	return out
}

var spaces = regexp.MustCompile(`\s+`)

// ipvsadmTable is `ipvsadm -Ln` of a namespace, normalised: one line per service and
// destination, whitespace collapsed, connection counters dropped, sorted within each
// service (ipvsadm prints in hash order).
func ipvsadmTable(t *testing.T, ns string) []string {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, "ipvsadm", "-Ln")
	var blocks [][]string
	var block []string
	flush := func() {
		if len(block) > 0 {
			sort.Strings(block[1:])
			blocks = append(blocks, block)
		}
		block = nil
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 0 || strings.HasPrefix(l, "IP Virtual") || strings.HasPrefix(l, "Prot ") || strings.Contains(l, "RemoteAddress"):
		case f[0] == "->":
			block = append(block, strings.Join(f[:len(f)-2], " ")) // drop ActiveConn InActConn
		default:
			flush()
			block = []string{spaces.ReplaceAllString(strings.TrimSpace(l), " ")}
		}
	}
	flush()
	sort.Slice(blocks, func(i, j int) bool { return blocks[i][0] < blocks[j][0] })
	var res []string
	for _, b := range blocks {
		res = append(res, b...)
	}
	return res
}
