package k8sservices

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	k8srig "github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/integration/vmrig"
)

// kubal runs with the ServiceAccount of configs/k8s/rbac.yaml + rbac-services.yaml,
// known to the rig's API server by a static token: least privilege, as in production.
var saToken = k8srig.Token{Token: "kubal-k8ss-sa-token", User: "system:serviceaccount:kubal-system:kubal", Groups: []string{"system:serviceaccounts"}}

// nodes of the scenario: name, address on br0, the node's pod subnet (.1 on the node,
// .2 the pod).
var nodes = []struct{ name, addr, podNet string }{
	{"node1", "10.0.0.11", "10.244.1"},
	{"node2", "10.0.0.12", "10.244.2"},
	{"node3", "10.0.0.13", "10.244.3"},
}

// The kernel modules kube-proxy's nftables mode needs (with their dependencies).
var nftModules = []string{
	"nf_tables", "nft_ct", "nft_nat", "nft_chain_nat", "nft_masq", "nft_redir", "nft_numgen",
	"nft_fib_inet", "nft_fib_ipv4", "nft_fib_ipv6", "nft_reject_inet", "nft_reject_ipv4", "nft_reject_ipv6", "nft_limit", "nft_hash",
	"nft_objref", "nft_compat", "nf_conntrack_netlink",
}

func TestK8sServices(t *testing.T) {
	if os.Getenv(envGuest) == "1" {
		guest(t)
		return
	}
	host(t)
}

// rigMissing skips loudly, or fails under KUBAL_REQUIRE_RIGS=1.
func rigMissing(t *testing.T, format string, args ...any) {
	t.Helper()
	vmrig.Unavailable(t, "k8s-services", "the Kubernetes-declared services scenario", fmt.Sprintf(format, args...))
}

func host(t *testing.T) {
	if os.Getenv("KUBAL_K8SS") != "1" {
		t.Skip("SKIPPING the Kubernetes-declared services scenario (real kube-proxy in the IPVS VM, ~2 minutes): run it with `make test-k8s-services` (integration/k8sservices/run.sh sets KUBAL_K8SS=1)")
	}
	cache := k8srig.CacheDir()
	vmCache := vmrig.VMCache()
	if err := vmrig.Missing(vmCache, "integration/k8sservices/run.sh", "qemu-system-x86_64", "cpio", "gzip", "bird", "birdc", "ldd", "modprobe"); err != nil {
		rigMissing(t, "%v", err)
	}
	if _, _, err := k8srig.Binaries(); err != nil {
		rigMissing(t, "%v", err)
	}
	proxyBin := filepath.Join(cache, "kube-proxy-"+k8srig.KubeVersion)
	if !vmrig.IsStatic(proxyBin) {
		rigMissing(t, "%s missing or not static: run integration/k8s/setup.sh", proxyBin)
	}
	nftDir := filepath.Join(filepath.Dir(cache), "k8sservices", "nftables")
	if _, err := os.Stat(filepath.Join(nftDir, "usr", "sbin", "nft")); err != nil {
		rigMissing(t, "nft missing: run integration/k8sservices/setup.sh: %v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !vmrig.IsStatic(self) {
		rigMissing(t, "the test binary %s is dynamically linked: build it with CGO_ENABLED=0 (run.sh does)", self)
	}
	binDir := os.Getenv("KUBAL_K8SS_BIN")
	if binDir == "" || !vmrig.IsStatic(filepath.Join(binDir, "kubal")) {
		rigMissing(t, "KUBAL_K8SS_BIN must name a directory with a static kubal: run integration/k8sservices/run.sh")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	start := time.Now()

	rig, err := k8srig.Start(ctx, saToken)
	if err != nil {
		t.Fatalf("k8s rig: %v", err)
	}
	t.Cleanup(func() { _ = rig.Close() })
	cs, err := rig.Client()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rbac.yaml", "rbac-services.yaml"} {
		must(t, k8srig.ApplyManifest(ctx, cs, filepath.Join("..", "..", "configs", "k8s", f)))
	}
	createObjects(t, cs)
	apiURL, _ := url.Parse(rig.Host)
	t.Logf("host: kube-apiserver %s ready, objects created (%s)", rig.Host, time.Since(start).Round(time.Millisecond))
	ctlPort, stopCtl, err := rig.ServeControl(ctx)
	must(t, err)
	t.Cleanup(stopCtl)

	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	pay := filepath.Join(root, "payload")
	must(t, os.MkdirAll(filepath.Join(pay, "mod"), 0o755))
	must(t, vmrig.CopyFile(self, filepath.Join(pay, "k8ss.test")))
	must(t, vmrig.CopyFile(filepath.Join(binDir, "kubal"), filepath.Join(pay, "kubal")))
	must(t, vmrig.CopyFile(proxyBin, filepath.Join(pay, "kube-proxy")))
	for _, b := range []string{"bird", "birdc"} {
		p, _ := exec.LookPath(b)
		must(t, vmrig.CopyWithLibs(root, p, "/usr/sbin/"+b, ""))
	}
	// nft (kube-proxy execs it) with libnftables from the cached .deb, the rest from
	// the host, at the paths the guest's loader looks in.
	must(t, vmrig.CopyWithLibs(root, filepath.Join(nftDir, "usr", "sbin", "nft"), "/usr/sbin/nft",
		filepath.Join(nftDir, "usr", "lib", "x86_64-linux-gnu")))

	kdir, modTree, err := vmrig.ModuleTree(vmCache)
	if err != nil {
		rigMissing(t, "%v", err)
	}
	var order []string
	for _, m := range vmrig.VirtioNetModules() {
		order = append(order, filepath.Join(modTree, m))
	}
	// nftables and conntrack, with their dependencies in load order (modprobe
	// --show-depends on the guest kernel's tree, as integration/vm/setup.sh does).
	kver := filepath.Base(modTree)
	for _, m := range nftModules {
		out, err := exec.Command("modprobe", "-d", kdir, "-S", kver, "--show-depends", m).CombinedOutput()
		if err != nil {
			t.Fatalf("modprobe --show-depends %s: %v: %s", m, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "insmod" {
				order = append(order, f[1])
			}
		}
	}
	var names []string
	seen := map[string]bool{}
	for _, ko := range order {
		name := strings.TrimSuffix(filepath.Base(ko), ".ko")
		if seen[name] {
			continue
		}
		seen[name] = true
		names = append(names, name)
		must(t, vmrig.CopyFile(ko, filepath.Join(pay, "mod", name+".ko")))
	}

	guestAPI := fmt.Sprintf("https://10.0.2.2:%s", apiURL.Port())
	must(t, rig.WriteGuestKubeconfig(filepath.Join(pay, "kubal.kubeconfig"), "k8ss", guestAPI, saToken.Token))
	must(t, rig.WriteGuestKubeconfig(filepath.Join(pay, "admin.kubeconfig"), "k8ss", guestAPI, k8srig.AdminToken))
	// kube-proxy in a node namespace reaches the API server through the guest test's
	// relay on the director (10.0.0.1:6443 -> 10.0.2.2:<port>).
	must(t, rig.WriteGuestKubeconfig(filepath.Join(pay, "proxy.kubeconfig"), "k8ss", "https://10.0.0.1:6443", k8srig.AdminToken))
	runSh := vmrig.RunScript(names, fmt.Sprintf(`export PATH=/usr/sbin:/sbin:/bin:/usr/bin
export KUBAL_K8SS_GUEST=1 KUBAL_K8SS_CTL=http://10.0.2.2:%d KUBAL_K8SS_API=10.0.2.2:%s KUBAL_REQUIRE_RIGS=%q
exec /payload/k8ss.test -test.v -test.run '^TestK8sServices$' -test.timeout 7m
`, ctlPort, apiURL.Port(), os.Getenv("KUBAL_REQUIRE_RIGS")))
	must(t, os.WriteFile(filepath.Join(pay, "run.sh"), []byte(runSh), 0o755))

	vmrig.Run(t, ctx, vmCache, root, "K8SS-STEP ", start, rig.Logs)
}

// createObjects makes the cluster: three Ready nodes labelled as LVS real servers with
// their InternalIPs and pod CIDRs, and the Service's namespace. The Services and
// EndpointSlices are the guest's to apply (it measures from there).
func createObjects(t *testing.T, cs kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		must(t, k8srig.CreateReadyNode(ctx, cs, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{nodeSel: "true", "kubernetes.io/hostname": n.name}},
			Spec:       corev1.NodeSpec{PodCIDR: n.podNet + ".0/24", PodCIDRs: []string{n.podNet + ".0/24"}},
		}, n.addr))
	}
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsShop}}, metav1.CreateOptions{})
	must(t, err)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
