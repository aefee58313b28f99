package k8ssource

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/internal/testutil"
	"github.com/kubal/kubal/source"
)

// The perf harness: BenchmarkK8sSource populates the real API server with perfNodes
// Nodes and one gateway endpoint per node, then runs the source in a child process
// (this test binary re-executed with perfChildEnv set), so the RSS measured is the
// informer process's own, not the populating client's.
const (
	perfChildEnv  = "KUBAL_K8S_PERF_CHILD"
	perfNodes     = 5000
	perfPerSlice  = 100 // the EndpointSlice controller's default maximum
	perfNamespace = "kubal-perf"
	perfChanges   = 200
)

// BenchmarkK8sSource measures, against the real kube-apiserver: initial sync time and
// RSS of the informer process for 5,000 Nodes + 5,000 gateway endpoints, and the
// latency from one node's readiness change (before the API write) to the source's
// Update, as p50/p99/max over perfChanges changes. It runs the child twice, with the
// cache trim (production) and without (KUBAL_K8S_PERF_NOTRIM), side by side.
// Run with -benchtime=1x (see docs/perf/k8s.md).
func BenchmarkK8sSource(b *testing.B) {
	r := rig(b)
	c := adminClient(b, r)
	populate(b, c)
	for b.Loop() {
		for _, trim := range []bool{true, false} {
			name := "trim"
			if !trim {
				name = "notrim"
			}
			res := runPerfChild(b, r.Kubeconfig, c, trim)
			load, _ := os.ReadFile("/proc/loadavg")
			b.Logf("%s: sync %s, %d nodes; RSS after sync %.1f MB (peak %.1f MB), Go heap %.1f MB; "+
				"back-to-back changes: event latency from write start p50 %s p99 %s max %s, from write ack p50 %s p99 %s, write p99 %s (n=%d); "+
				"isolated changes: from write start p50 %s p99 %s (n=%d); inside the source (informer event to Update) p50 %s p99 %s (n=%d); loadavg %s",
				name, res.sync, res.nodes, mb(res.rss), mb(res.hwm), mb(res.heap), res.p50, res.p99, res.max,
				res.ack50, res.ack99, res.write99, res.n, res.iso50, res.iso99, res.n, res.in50, res.in99, res.inN, strings.TrimSpace(string(load)))
			b.ReportMetric(res.sync.Seconds(), name+"-sync-s")
			b.ReportMetric(mb(res.rss), name+"-rss-MB")
			b.ReportMetric(mb(res.hwm), name+"-peak-rss-MB")
			b.ReportMetric(float64(res.p99.Microseconds())/1000, name+"-event-p99-ms")
			b.ReportMetric(float64(res.iso99.Microseconds())/1000, name+"-isolated-event-p99-ms")
			b.ReportMetric(float64(res.in99.Microseconds())/1000, name+"-in-source-p99-ms")
		}
	}
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func perfNodeName(i int) string { return fmt.Sprintf("perf-node-%05d", i) }

// perfNode is a realistically sized Node: labels, annotations, capacity, node info
// and an image list as a kubelet reports them (plus the managedFields the server adds).
func perfNode(i int) *corev1.Node {
	name := perfNodeName(i)
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubal-perf": "1", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
			"kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
			"node.kubernetes.io/instance-type": "m5.2xlarge", "topology.kubernetes.io/region": "eu-west-1",
			"topology.kubernetes.io/zone": fmt.Sprintf("eu-west-1%c", 'a'+i%3), "node-role.kubernetes.io/ingress": "",
		}, Annotations: map[string]string{
			"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true",
			"projectcalico.org/IPv4Address": fmt.Sprintf("10.%d.%d.%d/16", 100+i/65536, (i/256)%256, i%256),
		}},
		Spec: corev1.NodeSpec{PodCIDR: fmt.Sprintf("10.244.%d.0/24", i%256), ProviderID: "aws:///eu-west-1a/i-0" + strconv.Itoa(1000000+i)},
		Status: corev1.NodeStatus{
			Capacity: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi"),
				corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
			},
			Allocatable: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("7910m"), corev1.ResourceMemory: resource.MustParse("31Gi"),
				corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("95Gi"),
			},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
				{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status"},
				{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse, Reason: "CalicoIsUp", Message: "Calico is running on this node"},
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)},
				{Type: corev1.NodeHostName, Address: name},
				{Type: corev1.NodeInternalDNS, Address: name + ".eu-west-1.compute.internal"},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("ec2%029x", i), BootID: fmt.Sprintf("%032x", i*7),
				KernelVersion: "6.1.0-28-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24",
				KubeletVersion: "v1.36.3", OperatingSystem: "linux", Architecture: "amd64",
			},
		},
	}
	for j := range 20 {
		img := fmt.Sprintf("registry.example.org/team-%d/service-%d", j%5, j)
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{
			Names:     []string{img + "@sha256:" + strings.Repeat(strconv.Itoa(j%10), 64), img + ":v1." + strconv.Itoa(j)},
			SizeBytes: int64(50_000_000 + j*1_000_000),
		})
	}
	return n
}

var populated sync.Once

// populate creates the perf Nodes and EndpointSlices once (idempotent across
// benchmark runs in one rig).
func populate(b *testing.B, c kubernetes.Interface) {
	populated.Do(func() {
		start := time.Now()
		ctx := context.Background()
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: perfNamespace}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := testutil.Parallel(32, perfNodes, func(i int) error {
			n := perfNode(i)
			created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
			if err == nil && len(created.Status.Conditions) == 0 {
				created.Status = n.Status
				_, err = c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
		for s := 0; s < perfNodes/perfPerSlice; s++ {
			var eps []discoveryv1.Endpoint
			for i := s * perfPerSlice; i < (s+1)*perfPerSlice; i++ {
				eps = append(eps, endpoint(fmt.Sprintf("10.%d.%d.%d", 200+i/65536, (i/256)%256, i%256), perfNodeName(i), epReady))
			}
			if _, err := c.DiscoveryV1().EndpointSlices(perfNamespace).Create(ctx,
				epSlice(fmt.Sprintf("gw-%03d", s), perfNamespace, "gw", eps...), metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.Logf("populated %d nodes + %d endpoints in %s", perfNodes, perfNodes, time.Since(start).Round(time.Millisecond))
	})
}

type perfResult struct {
	sync           time.Duration
	nodes          int
	rss, hwm, heap int64
	p50, p99, max  time.Duration // from before the API write to the Update
	ack50, ack99   time.Duration // from the write's acknowledgement to the Update
	write99        time.Duration // the write itself (API server + etcd), p99
	iso50, iso99   time.Duration // isolated changes (quiet before each), from write start
	in50, in99     time.Duration // inside the source: informer event to Update
	inN            int
	n              int
}

// pct returns the p-th percentile of sorted durations.
func pct(d []time.Duration, p int) time.Duration { return d[(len(d)*p+99)/100-1] }

// runPerfChild starts the informer process, waits for its sync, then flips one
// node's Ready condition at a time and times the matching Update.
func runPerfChild(b *testing.B, kubeconfig string, c kubernetes.Interface, trim bool) perfResult {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), perfChildEnv+"=1", "KUBAL_K8S_PERF_KUBECONFIG="+kubeconfig)
	if !trim {
		cmd.Env = append(cmd.Env, "KUBAL_K8S_PERF_NOTRIM=1")
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close() // the child exits when its stdin closes
		if err := cmd.Wait(); err != nil {
			b.Errorf("perf child: %v", err)
		}
	}()
	lines := make(chan []string, 1024)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- strings.Fields(sc.Text())
		}
		close(lines)
	}()
	next := func(kind string, timeout time.Duration) []string {
		deadline := time.After(timeout)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					b.Fatalf("perf child exited before %q", kind)
				}
				if len(l) > 0 && l[0] == kind {
					return l
				}
			case <-deadline:
				b.Fatalf("perf child: no %q within %s", kind, timeout)
			}
		}
	}
	var res perfResult
	l := next("synced", 2*time.Minute)
	res.sync, _ = time.ParseDuration(l[1])
	res.nodes, _ = strconv.Atoi(l[2])
	if res.nodes != perfNodes || l[3] != strconv.Itoa(perfNodes) {
		b.Fatalf("child synced %v, want %d nodes all enabled", l, perfNodes)
	}
	l = next("mem", 10*time.Second)
	res.rss, _ = strconv.ParseInt(l[1], 10, 64)
	res.hwm, _ = strconv.ParseInt(l[2], 10, 64)
	res.heap, _ = strconv.ParseInt(l[3], 10, 64)

	ctx := context.Background()
	var lat, ack, write, iso []time.Duration
	for i := range 2 * perfChanges {
		// The second half leaves 3 windows of quiet before each change: the latency of
		// an isolated change, with no coalescing wait.
		isolated := i >= perfChanges
		if isolated {
			time.Sleep(3 * coalesce)
		}
		node := perfNodeName((i * 37) % perfNodes)
		// 37 is coprime with 5,000: every change flips a distinct Ready node.
		patch := `{"status":{"conditions":[{"type":"Ready","status":"False","reason":"PerfFlip"}]}}`
		t0 := time.Now()
		if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		write = append(write, t1.Sub(t0))
		for {
			l := next("change", 10*time.Second)
			if l[1] != node {
				continue
			}
			at, _ := strconv.ParseInt(l[3], 10, 64)
			if isolated {
				iso = append(iso, time.Unix(0, at).Sub(t0))
				break
			}
			lat = append(lat, time.Unix(0, at).Sub(t0))
			ack = append(ack, max(0, time.Unix(0, at).Sub(t1)))
			break
		}
	}
	// Restore for the next run.
	for i := range 2 * perfChanges {
		node := perfNodeName((i * 37) % perfNodes)
		patch := `{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}]}}`
		if _, err := c.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			b.Fatal(err)
		}
	}
	stdin.Close() // the child stops and reports its internal delays
	l = next("delay", 30*time.Second)
	in50, _ := strconv.ParseInt(l[1], 10, 64)
	in99, _ := strconv.ParseInt(l[2], 10, 64)
	res.in50, res.in99 = time.Duration(in50), time.Duration(in99)
	res.inN, _ = strconv.Atoi(l[3])
	for _, d := range [][]time.Duration{lat, ack, write, iso} {
		slices.Sort(d)
	}
	res.n = len(lat)
	res.p50, res.p99, res.max = pct(lat, 50), pct(lat, 99), lat[len(lat)-1]
	res.ack50, res.ack99, res.write99 = pct(ack, 50), pct(ack, 99), pct(write, 99)
	res.iso50, res.iso99 = pct(iso, 50), pct(iso, 99)
	return res
}

// perfChild is the informer process: it runs the source for the perf nodes and
// prints "synced <duration> <nodes> <enabled>", "mem <rss> <peak rss> <heap>", then a
// "change <host> <enabled> <unix ns>" line per node whose Enabled flips.
func perfChild() int {
	out := bufio.NewWriter(os.Stdout)
	start := time.Now()
	svc := &config.Service{Name: "perf"}
	src, err := New("k8s://?nodes=kubal-perf%3D1&endpoints="+perfNamespace+"/gw",
		config.Global{Kubeconfig: os.Getenv("KUBAL_K8S_PERF_KUBECONFIG")}, svc,
		slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Getenv("KUBAL_K8S_PERF_NOTRIM") != "" {
		src.(*Source).noTrim = true
	}
	ev := &perfEvents{out: out, start: start}
	// The source's own share of the latency: first informer event of a batch to
	// the Update (after the initial sync).
	var delays []time.Duration
	src.(*Source).onDelay = func(d time.Duration) {
		if ev.last != nil {
			delays = append(delays, d)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	_ = src.Run(ctx, ev)
	slices.Sort(delays)
	if len(delays) > 0 {
		fmt.Fprintf(out, "delay %d %d %d\n", pct(delays, 50), pct(delays, 99), len(delays))
	}
	out.Flush()
	return 0
}

type perfEvents struct {
	out   *bufio.Writer
	start time.Time
	last  source.Set
}

func (p *perfEvents) Update(s source.Set) {
	now := time.Now()
	if p.last == nil {
		enabled := 0
		for _, srv := range s {
			if eligible(srv) {
				enabled++
			}
		}
		fmt.Fprintf(p.out, "synced %s %d %d\n", now.Sub(p.start), len(s), enabled)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, hwm := procStatus("VmRSS:"), procStatus("VmHWM:")
		fmt.Fprintf(p.out, "mem %d %d %d\n", rss, hwm, ms.HeapInuse)
	} else {
		for h, srv := range s {
			if eligible(srv) != eligible(p.last[h]) {
				fmt.Fprintf(p.out, "change %s %v %d\n", h, eligible(srv), now.UnixNano())
			}
		}
	}
	p.last = s
	p.out.Flush()
}

func (p *perfEvents) Failed(err error) {
	fmt.Fprintf(os.Stderr, "perf child: Failed(%v)\n", err)
}

// procStatus reads a kB field of /proc/self/status, in bytes.
func procStatus(field string) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", "self", "status"))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// eligible: neither disabled nor down.
func eligible(s source.Server) bool { return s.Enabled && s.Down == "" }
