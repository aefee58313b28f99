package k8sservices

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	k8srig "github.com/kubal/kubal/integration/k8s"
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
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("KUBAL_REQUIRE_RIGS") == "1" {
		t.Fatalf("KUBAL_REQUIRE_RIGS=1 and the k8s-services rig is unavailable: %s", msg)
	}
	t.Skipf("SKIPPING the Kubernetes-declared services scenario: rig unavailable: %s", msg)
}

func host(t *testing.T) {
	if os.Getenv("KUBAL_K8SS") != "1" {
		t.Skip("SKIPPING the Kubernetes-declared services scenario (real kube-proxy in the IPVS VM, ~2 minutes): run it with `make test-k8s-services` (integration/k8sservices/run.sh sets KUBAL_K8SS=1)")
	}
	cache := k8srig.CacheDir()
	vmCache := filepath.Join(filepath.Dir(cache), "vm")
	for _, f := range []string{"vmlinuz", "base.cpio.gz", "kernel"} {
		if _, err := os.Stat(filepath.Join(vmCache, f)); err != nil {
			rigMissing(t, "%s missing: run integration/vm/setup.sh", filepath.Join(vmCache, f))
		}
	}
	for _, b := range []string{"qemu-system-x86_64", "cpio", "gzip", "bird", "birdc", "ldd", "modprobe"} {
		if _, err := exec.LookPath(b); err != nil {
			rigMissing(t, "%s not found: run integration/k8sservices/run.sh (it runs the setup scripts)", b)
		}
	}
	if _, _, err := k8srig.Binaries(); err != nil {
		rigMissing(t, "%v", err)
	}
	proxyBin := filepath.Join(cache, "kube-proxy-"+k8srig.KubeVersion)
	if !isStatic(proxyBin) {
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
	if !isStatic(self) {
		rigMissing(t, "the test binary %s is dynamically linked: build it with CGO_ENABLED=0 (run.sh does)", self)
	}
	binDir := os.Getenv("KUBAL_K8SS_BIN")
	if binDir == "" || !isStatic(filepath.Join(binDir, "kubal")) {
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
		applyManifest(t, cs, filepath.Join("..", "..", "configs", "k8s", f))
	}
	createObjects(t, cs)
	apiURL, _ := url.Parse(rig.Host)
	t.Logf("host: kube-apiserver %s ready, objects created (%s)", rig.Host, time.Since(start).Round(time.Millisecond))
	ctlPort := startControl(t, ctx, rig)

	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	pay := filepath.Join(root, "payload")
	must(t, os.MkdirAll(filepath.Join(pay, "mod"), 0o755))
	copyFile(t, self, filepath.Join(pay, "k8ss.test"))
	copyFile(t, filepath.Join(binDir, "kubal"), filepath.Join(pay, "kubal"))
	copyFile(t, proxyBin, filepath.Join(pay, "kube-proxy"))
	for _, b := range []string{"bird", "birdc"} {
		p, _ := exec.LookPath(b)
		copyWithLibs(t, root, p, "/usr/sbin/"+b, "")
	}
	// nft (kube-proxy execs it) with libnftables from the cached .deb, the rest from
	// the host, at the paths the guest's loader looks in.
	copyWithLibs(t, root, filepath.Join(nftDir, "usr", "sbin", "nft"), "/usr/sbin/nft",
		filepath.Join(nftDir, "usr", "lib", "x86_64-linux-gnu"))

	kdir, _ := filepath.EvalSymlinks(filepath.Join(vmCache, "kernel"))
	mods, _ := filepath.Glob(filepath.Join(kdir, "lib", "modules", "*"))
	if len(mods) != 1 {
		rigMissing(t, "no single module tree under %s", kdir)
	}
	// virtio-net for qemu user networking (not in the base initramfs), in load order.
	order := []string{
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
	}
	for i := range order {
		order[i] = filepath.Join(mods[0], order[i])
	}
	// nftables and conntrack, with their dependencies in load order (modprobe
	// --show-depends on the guest kernel's tree, as integration/vm/setup.sh does).
	kver := filepath.Base(mods[0])
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
		copyFile(t, ko, filepath.Join(pay, "mod", name+".ko"))
	}

	guestAPI := fmt.Sprintf("https://10.0.2.2:%s", apiURL.Port())
	writeKubeconfig(t, rig, filepath.Join(pay, "kubal.kubeconfig"), guestAPI, saToken.Token)
	writeKubeconfig(t, rig, filepath.Join(pay, "admin.kubeconfig"), guestAPI, k8srig.AdminToken)
	// kube-proxy in a node namespace reaches the API server through the guest test's
	// relay on the director (10.0.0.1:6443 -> 10.0.2.2:<port>).
	writeKubeconfig(t, rig, filepath.Join(pay, "proxy.kubeconfig"), "https://10.0.0.1:6443", k8srig.AdminToken)
	runSh := fmt.Sprintf(`for m in %s; do
	[ -e /sys/module/$(echo $m | tr - _) ] || insmod /payload/mod/$m.ko || echo "insmod $m failed"
done
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
/sbin/ip link set eth0 up
/sbin/ip addr add 10.0.2.15/24 dev eth0
/sbin/ip route add default via 10.0.2.2
export PATH=/usr/sbin:/sbin:/bin:/usr/bin
export KUBAL_K8SS_GUEST=1 KUBAL_K8SS_CTL=http://10.0.2.2:%d KUBAL_K8SS_API=10.0.2.2:%s KUBAL_REQUIRE_RIGS=%q
exec /payload/k8ss.test -test.v -test.run '^TestK8sServices$' -test.timeout 7m
`, strings.Join(names, " "), ctlPort, apiURL.Port(), os.Getenv("KUBAL_REQUIRE_RIGS"))
	must(t, os.WriteFile(filepath.Join(pay, "run.sh"), []byte(runSh), 0o755))

	initrd := filepath.Join(dir, "initrd.cpio.gz")
	pack := fmt.Sprintf("cd %q && find . | cpio -o -H newc --quiet | gzip -1 > %q.pay && cat %q %q.pay > %q",
		root, initrd, filepath.Join(vmCache, "base.cpio.gz"), initrd, initrd)
	if out, err := exec.Command("sh", "-c", pack).CombinedOutput(); err != nil {
		t.Fatalf("initramfs: %v: %s", err, out)
	}
	t.Logf("host: rigs up and initramfs built in %s; booting the VM (qemu TCG)", time.Since(start).Round(time.Millisecond))

	rc, summary := runVM(t, ctx, filepath.Join(vmCache, "vmlinuz"), initrd)
	t.Logf("measured (guest):\n%s", strings.Join(summary, "\n"))
	t.Logf("host: total %s", time.Since(start).Round(time.Second))
	if rc != 0 {
		logs := rig.Logs()
		if len(logs) > 2000 {
			logs = logs[len(logs)-2000:]
		}
		t.Fatalf("the scenario in the VM failed (rc=%d); see the guest output above\nhost servers (tail):\n%s", rc, logs)
	}
}

var endRE = regexp.MustCompile(`@@KUBAL-VM-END rc=(\d+)@@`)

// runVM boots the guest and relays its console; it returns the scenario's exit code and
// the step lines it printed.
func runVM(t *testing.T, ctx context.Context, kernel, initrd string) (int, []string) {
	mem := os.Getenv("KUBAL_VM_MEM")
	if mem == "" {
		mem = "3072"
	}
	accel := os.Getenv("KUBAL_VM_ACCEL")
	if accel == "" {
		accel = "tcg" // the paravirtual /dev/kvm of these machines cannot run this kernel
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", accel, "-cpu", "max", "-m", mem, "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none",
		"-netdev", "user,id=n0,net=10.0.2.0/24,host=10.0.2.2",
		"-device", "virtio-net-pci,netdev=n0,romfile=",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	rc := -1
	var summary []string
	var boot bytes.Buffer
	on := false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.Contains(line, "@@KUBAL-VM-BEGIN@@"):
			on = true
			continue
		case endRE.MatchString(line):
			fmt.Sscan(endRE.FindStringSubmatch(line)[1], &rc)
			on = false
			continue
		}
		if !on {
			boot.WriteString(line + "\n")
			continue
		}
		fmt.Println("guest| " + line)
		if i := strings.Index(line, "K8SS-STEP "); i >= 0 {
			summary = append(summary, line[i:])
		}
	}
	_ = cmd.Wait()
	if rc < 0 {
		t.Fatalf("the VM reported no result (crash, panic or timeout)\nconsole outside the test:\n%s", boot.String())
	}
	return rc, summary
}

// startControl serves POST /apiserver/stop and /apiserver/start for the guest.
func startControl(t *testing.T, ctx context.Context, rig *k8srig.Rig) int {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /apiserver/stop", func(w http.ResponseWriter, _ *http.Request) {
		if err := rig.StopAPIServer(); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintln(w, "stopped")
	})
	mux.HandleFunc("POST /apiserver/start", func(w http.ResponseWriter, _ *http.Request) {
		t0 := time.Now()
		if err := rig.StartAPIServer(ctx); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "started in %s\n", time.Since(t0).Round(time.Millisecond))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// createObjects makes the cluster: three Ready nodes labelled as LVS real servers with
// their InternalIPs and pod CIDRs, and the Service's namespace. The Services and
// EndpointSlices are the guest's to apply (it measures from there).
func createObjects(t *testing.T, cs kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{nodeSel: "true", "kubernetes.io/hostname": n.name}},
			Spec:       corev1.NodeSpec{PodCIDR: n.podNet + ".0/24", PodCIDRs: []string{n.podNet + ".0/24"}},
		}, metav1.CreateOptions{})
		must(t, err)
		node.Status = corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
				Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr}, {Type: corev1.NodeHostName, Address: n.name}},
		}
		_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		must(t, err)
	}
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsShop}}, metav1.CreateOptions{})
	must(t, err)
}

// writeKubeconfig writes a kubeconfig for the guest: the API server at an address the
// guest reaches, verified against the rig's CA by its 127.0.0.1 SAN.
func writeKubeconfig(t *testing.T, rig *k8srig.Rig, path, server, token string) {
	rc := rig.RESTConfig(token)
	ca, err := os.ReadFile(rc.TLSClientConfig.CAFile)
	must(t, err)
	c := clientcmdapi.NewConfig()
	c.Clusters["k8ss"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca, TLSServerName: "127.0.0.1"}
	c.AuthInfos["k8ss"] = &clientcmdapi.AuthInfo{Token: token}
	c.Contexts["k8ss"] = &clientcmdapi.Context{Cluster: "k8ss", AuthInfo: "k8ss"}
	c.CurrentContext = "k8ss"
	must(t, clientcmd.WriteToFile(*c, path))
}

// applyManifest creates every object of a multi-document RBAC YAML file.
func applyManifest(t *testing.T, c kubernetes.Interface, path string) {
	b, err := os.ReadFile(path)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return
		}
		must(t, err)
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		opts := metav1.CreateOptions{}
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, err = c.CoreV1().Namespaces().Create(ctx, o, opts)
		case *corev1.ServiceAccount:
			_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
		case *rbacv1.ClusterRole:
			_, err = c.RbacV1().ClusterRoles().Create(ctx, o, opts)
		case *rbacv1.ClusterRoleBinding:
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
		default:
			t.Fatalf("%s: unexpected %T", path, obj)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: create %T: %v", path, obj, err)
		}
	}
}

func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

func copyFile(t *testing.T, src, dst string) {
	b, err := os.ReadFile(src)
	must(t, err)
	must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	must(t, os.WriteFile(dst, b, 0o755))
}

// copyWithLibs puts a dynamically linked binary and its shared libraries into root.
// Libraries ldd finds in libDir (if set: an unpacked .deb) go to the path the guest's
// loader searches (/lib/x86_64-linux-gnu); the others keep their host paths (the
// guest's base image has the host's loader layout).
func copyWithLibs(t *testing.T, root, bin, dst, libDir string) {
	copyFile(t, bin, filepath.Join(root, dst))
	cmd := exec.Command("ldd", bin)
	if libDir != "" {
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libDir)
	}
	out, err := cmd.Output()
	must(t, err)
	if bytes.Contains(out, []byte("not found")) {
		t.Fatalf("ldd %s: a library is missing:\n%s", bin, out)
	}
	for _, f := range strings.Fields(string(out)) {
		if !strings.HasPrefix(f, "/") {
			continue
		}
		real, err := filepath.EvalSymlinks(f)
		must(t, err)
		to := f
		if libDir != "" && strings.HasPrefix(f, libDir+"/") {
			to = filepath.Join("/lib/x86_64-linux-gnu", filepath.Base(f))
		}
		copyFile(t, real, filepath.Join(root, to))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
