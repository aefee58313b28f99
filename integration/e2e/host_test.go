package e2e

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
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	k8srig "github.com/kubal/kubal/integration/k8s"
)

// The ServiceAccount of configs/k8s/rbac.yaml, known to the rig's API server by a
// static token: kubal in the VM runs with least privilege, as in production.
var saToken = k8srig.Token{Token: "kubal-e2e-sa-token", User: "system:serviceaccount:kubal-system:kubal", Groups: []string{"system:serviceaccounts"}}

// nodes of the scenario: name -> address in the VM.
var nodes = []struct{ name, addr, podIP string }{
	{"node1", "10.0.0.11", "10.244.1.2"},
	{"node2", "10.0.0.12", "10.244.2.2"},
	{"node3", "10.0.0.13", "10.244.3.2"},
}

func TestE2E(t *testing.T) {
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
		t.Fatalf("KUBAL_REQUIRE_RIGS=1 and the e2e rig is unavailable: %s", msg)
	}
	t.Skipf("SKIPPING the end-to-end scenario: rig unavailable: %s", msg)
}

func cacheDir() string {
	c := os.Getenv("KUBAL_CACHE")
	if c == "" {
		home, _ := os.UserHomeDir()
		c = filepath.Join(home, ".cache", "kubal")
	}
	return c
}

func host(t *testing.T) {
	if os.Getenv("KUBAL_E2E") != "1" {
		t.Skip("SKIPPING the end-to-end scenario: it boots a VM for ~1.5 minutes; run it with `make test-e2e` (integration/e2e/run.sh sets KUBAL_E2E=1)")
	}
	vmCache := filepath.Join(cacheDir(), "vm")
	for _, f := range []string{"vmlinuz", "base.cpio.gz", "kernel"} {
		if _, err := os.Stat(filepath.Join(vmCache, f)); err != nil {
			rigMissing(t, "%s missing: run integration/vm/setup.sh", filepath.Join(vmCache, f))
		}
	}
	for _, b := range []string{"qemu-system-x86_64", "cpio", "gzip", "bird", "birdc", "tc", "ldd"} {
		if _, err := exec.LookPath(b); err != nil {
			rigMissing(t, "%s not found: run integration/e2e/run.sh (it runs the setup scripts)", b)
		}
	}
	if _, _, err := k8srig.Binaries(); err != nil {
		rigMissing(t, "%v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !isStatic(self) {
		rigMissing(t, "the test binary %s is dynamically linked: build it with CGO_ENABLED=0 (run.sh does)", self)
	}
	binDir := os.Getenv("KUBAL_E2E_BIN")
	if binDir == "" {
		rigMissing(t, "KUBAL_E2E_BIN (a directory holding static kubal and kubalctl) is not set: run integration/e2e/run.sh")
	}
	for _, b := range []string{"kubal", "kubalctl"} {
		if !isStatic(filepath.Join(binDir, b)) {
			rigMissing(t, "%s/%s missing or not static (CGO_ENABLED=0)", binDir, b)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	start := time.Now()

	// The Kubernetes side: kube-apiserver + its etcd, RBAC of configs/k8s, the objects.
	rig, err := k8srig.Start(ctx, saToken)
	if err != nil {
		t.Fatalf("k8s rig: %v", err)
	}
	t.Cleanup(func() { _ = rig.Close() })
	cs, err := rig.Client()
	if err != nil {
		t.Fatal(err)
	}
	applyManifest(t, cs, filepath.Join("..", "..", "configs", "k8s", "rbac.yaml"))
	createObjects(t, cs)
	apiURL, _ := url.Parse(rig.Host)
	t.Logf("host: kube-apiserver %s ready, objects created (%s)", rig.Host, time.Since(start).Round(time.Millisecond))

	// The conftool etcd: a separate cluster, as in production.
	etcdPort := startEtcd(t)

	// Control endpoint for what only the host can do (stop/start the API server).
	ctlPort := startControl(t, ctx, rig)

	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	pay := filepath.Join(root, "payload")
	must(t, os.MkdirAll(filepath.Join(pay, "mod"), 0o755))
	copyFile(t, self, filepath.Join(pay, "e2e.test"))
	copyFile(t, filepath.Join(binDir, "kubal"), filepath.Join(pay, "kubal"))
	copyFile(t, filepath.Join(binDir, "kubalctl"), filepath.Join(pay, "kubalctl"))
	for _, b := range []string{"bird", "birdc", "tc"} {
		p, _ := exec.LookPath(b)
		copyWithLibs(t, root, p, "/usr/sbin/"+b)
	}
	kdir, _ := filepath.EvalSymlinks(filepath.Join(vmCache, "kernel"))
	mods, _ := filepath.Glob(filepath.Join(kdir, "lib", "modules", "*"))
	if len(mods) != 1 {
		rigMissing(t, "no single module tree under %s", kdir)
	}
	// virtio-net for qemu user networking (not in the base initramfs), in load order.
	for _, m := range []string{
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
	} {
		copyFile(t, filepath.Join(mods[0], m), filepath.Join(pay, "mod", filepath.Base(m)))
	}
	guestAPI := fmt.Sprintf("https://10.0.2.2:%s", apiURL.Port())
	writeKubeconfig(t, rig, filepath.Join(pay, "kubal.kubeconfig"), guestAPI, saToken.Token)
	writeKubeconfig(t, rig, filepath.Join(pay, "admin.kubeconfig"), guestAPI, k8srig.AdminToken)
	runSh := fmt.Sprintf(`for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
	insmod /payload/mod/$m.ko || echo "insmod $m failed"
done
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
/sbin/ip link set eth0 up
/sbin/ip addr add 10.0.2.15/24 dev eth0
/sbin/ip route add default via 10.0.2.2
export KUBAL_E2E_GUEST=1 KUBAL_E2E_ETCD=http://10.0.2.2:%d KUBAL_E2E_CTL=http://10.0.2.2:%d KUBAL_REQUIRE_RIGS=%q
exec /payload/e2e.test -test.v -test.run '^TestE2E$' -test.timeout 7m
`, etcdPort, ctlPort, os.Getenv("KUBAL_REQUIRE_RIGS"))
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
	cmd.Stdin = nil
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
		if i := strings.Index(line, "E2E-STEP "); i >= 0 {
			summary = append(summary, line[i:])
		}
	}
	_ = cmd.Wait()
	if rc < 0 {
		t.Fatalf("the VM reported no result (crash, panic or timeout)\nconsole outside the test:\n%s", boot.String())
	}
	return rc, summary
}

// startEtcd runs the cached etcd binary on a free loopback port (the conftool cluster).
func startEtcd(t *testing.T) int {
	_, bin, _ := k8srig.Binaries()
	ports := freePorts(t, 2)
	dir := t.TempDir()
	cmd := exec.Command(bin, "-data-dir="+filepath.Join(dir, "data"),
		fmt.Sprintf("-listen-client=http://127.0.0.1:%d", ports[0]),
		fmt.Sprintf("-listen-peer=http://127.0.0.1:%d", ports[1]), "-unsafe-no-fsync")
	logf, _ := os.Create(filepath.Join(dir, "etcd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); <-done; logf.Close() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", ports[0]))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return ports[0]
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "etcd.log"))
			t.Fatalf("conftool etcd not healthy: %v\n%s", err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
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

// createObjects makes the cluster of the scenario: three Ready nodes labelled for
// ingress with their InternalIPs, the ingressgateway NodePort Service (ETP Local) and
// its EndpointSlice with one ready gateway endpoint per node.
func createObjects(t *testing.T, cs kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		node, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: n.name, Labels: map[string]string{"kubal-e2e/ingress": "true"},
		}}, metav1.CreateOptions{})
		must(t, err)
		node.Status = corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
				Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr}, {Type: corev1.NodeHostName, Address: n.name}},
		}
		_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		must(t, err)
	}
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{})
	must(t, err)
	_, err = cs.CoreV1().Services("istio-system").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway", Namespace: "istio-system"},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeNodePort,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Selector:              map[string]string{"app": "istio-ingressgateway"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: trafficPort},
				{Name: "status-port", Port: healthPort, TargetPort: intstr.FromInt32(healthPort)},
			},
		},
	}, metav1.CreateOptions{})
	must(t, err)
	yes, no := true, false
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway-e2e", Namespace: "istio-system",
			Labels: map[string]string{discoveryv1.LabelServiceName: "istio-ingressgateway"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("status-port"), Port: ptr(int32(healthPort))}},
	}
	for _, n := range nodes {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{n.podIP},
			NodeName:   ptr(n.name),
			Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
		})
	}
	_, err = cs.DiscoveryV1().EndpointSlices("istio-system").Create(ctx, es, metav1.CreateOptions{})
	must(t, err)
}

func ptr[T any](v T) *T { return &v }

// writeKubeconfig writes a kubeconfig for the guest: the API server at the host's
// address as the guest sees it, verified against the rig's CA by its 127.0.0.1 SAN.
func writeKubeconfig(t *testing.T, rig *k8srig.Rig, path, server, token string) {
	rc := rig.RESTConfig(token)
	ca, err := os.ReadFile(rc.TLSClientConfig.CAFile)
	must(t, err)
	c := clientcmdapi.NewConfig()
	c.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca, TLSServerName: "127.0.0.1"}
	c.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{Token: token}
	c.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e"}
	c.CurrentContext = "e2e"
	must(t, clientcmd.WriteToFile(*c, path))
}

// applyManifest creates every object of a multi-document YAML file.
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

// copyWithLibs puts a dynamically linked binary and its shared libraries into root at
// their absolute paths (the guest's base image has the same loader layout).
func copyWithLibs(t *testing.T, root, bin, dst string) {
	copyFile(t, bin, filepath.Join(root, dst))
	out, err := exec.Command("ldd", bin).Output()
	must(t, err)
	for _, f := range strings.Fields(string(out)) {
		if !strings.HasPrefix(f, "/") {
			continue
		}
		real, err := filepath.EvalSymlinks(f)
		must(t, err)
		copyFile(t, real, filepath.Join(root, f))
	}
}

func freePorts(t *testing.T, n int) []int {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		must(t, err)
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
