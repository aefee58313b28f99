package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	k8srig "github.com/kubal/kubal/integration/k8s"
	"github.com/kubal/kubal/integration/vmrig"
	"github.com/kubal/kubal/internal/testutil"
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
	vmrig.Unavailable(t, "e2e", "the end-to-end scenario", fmt.Sprintf(format, args...))
}

func host(t *testing.T) {
	if os.Getenv("KUBAL_E2E") != "1" {
		t.Skip("SKIPPING the end-to-end scenario: it boots a VM for ~1.5 minutes; run it with `make test-e2e` (integration/e2e/run.sh sets KUBAL_E2E=1)")
	}
	vmCache := vmrig.VMCache()
	if err := vmrig.Missing(vmCache, "integration/e2e/run.sh", "qemu-system-x86_64", "cpio", "gzip", "bird", "birdc", "tc", "ldd"); err != nil {
		rigMissing(t, "%v", err)
	}
	if _, _, err := k8srig.Binaries(); err != nil {
		rigMissing(t, "%v", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !vmrig.IsStatic(self) {
		rigMissing(t, "the test binary %s is dynamically linked: build it with CGO_ENABLED=0 (run.sh does)", self)
	}
	binDir := os.Getenv("KUBAL_E2E_BIN")
	if binDir == "" {
		rigMissing(t, "KUBAL_E2E_BIN (a directory holding static kubal and kubalctl) is not set: run integration/e2e/run.sh")
	}
	for _, b := range []string{"kubal", "kubalctl"} {
		if !vmrig.IsStatic(filepath.Join(binDir, b)) {
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
	must(t, k8srig.ApplyManifest(ctx, cs, filepath.Join("..", "..", "configs", "k8s", "rbac.yaml")))
	createObjects(t, cs)
	apiURL, _ := url.Parse(rig.Host)
	t.Logf("host: kube-apiserver %s ready, objects created (%s)", rig.Host, time.Since(start).Round(time.Millisecond))

	// The conftool etcd: a separate cluster, as in production.
	etcdPort := startEtcd(t)

	// Control endpoint for what only the host can do (stop/start the API server).
	ctlPort, stopCtl, err := rig.ServeControl(ctx)
	must(t, err)
	t.Cleanup(stopCtl)

	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	pay := filepath.Join(root, "payload")
	must(t, os.MkdirAll(filepath.Join(pay, "mod"), 0o755))
	must(t, vmrig.CopyFile(self, filepath.Join(pay, "e2e.test")))
	must(t, vmrig.CopyFile(filepath.Join(binDir, "kubal"), filepath.Join(pay, "kubal")))
	must(t, vmrig.CopyFile(filepath.Join(binDir, "kubalctl"), filepath.Join(pay, "kubalctl")))
	for _, b := range []string{"bird", "birdc", "tc"} {
		p, _ := exec.LookPath(b)
		must(t, vmrig.CopyWithLibs(root, p, "/usr/sbin/"+b, ""))
	}
	_, modTree, err := vmrig.ModuleTree(vmCache)
	if err != nil {
		rigMissing(t, "%v", err)
	}
	var modNames []string
	for _, m := range vmrig.VirtioNetModules() {
		must(t, vmrig.CopyFile(filepath.Join(modTree, m), filepath.Join(pay, "mod", filepath.Base(m))))
		modNames = append(modNames, strings.TrimSuffix(filepath.Base(m), ".ko"))
	}
	guestAPI := fmt.Sprintf("https://10.0.2.2:%s", apiURL.Port())
	must(t, rig.WriteGuestKubeconfig(filepath.Join(pay, "kubal.kubeconfig"), "e2e", guestAPI, saToken.Token))
	must(t, rig.WriteGuestKubeconfig(filepath.Join(pay, "admin.kubeconfig"), "e2e", guestAPI, k8srig.AdminToken))
	runSh := vmrig.RunScript(modNames, fmt.Sprintf(`export KUBAL_E2E_GUEST=1 KUBAL_E2E_ETCD=http://10.0.2.2:%d KUBAL_E2E_CTL=http://10.0.2.2:%d KUBAL_REQUIRE_RIGS=%q
exec /payload/e2e.test -test.v -test.run '^TestE2E$' -test.timeout 7m
`, etcdPort, ctlPort, os.Getenv("KUBAL_REQUIRE_RIGS")))
	must(t, os.WriteFile(filepath.Join(pay, "run.sh"), []byte(runSh), 0o755))

	vmrig.Run(t, ctx, vmCache, root, "E2E-STEP ", start, rig.Logs)
}

// startEtcd runs the cached etcd binary on a free loopback port (the conftool cluster).
func startEtcd(t *testing.T) int {
	_, bin, _ := k8srig.Binaries()
	ports := testutil.FreePorts(t, 2)
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

// createObjects makes the cluster of the scenario: three Ready nodes labelled for
// ingress with their InternalIPs, the ingressgateway NodePort Service (ETP Local) and
// its EndpointSlice with one ready gateway endpoint per node.
func createObjects(t *testing.T, cs kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		must(t, k8srig.CreateReadyNode(ctx, cs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: n.name, Labels: map[string]string{"kubal-e2e/ingress": "true"},
		}}, n.addr))
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

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
