package k8ssource

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/internal/testutil"
	"github.com/kubal/kubal/source"
)

// tcpProxy forwards TCP connections to the API server; down refuses new ones and
// cuts the open ones. TLS passes through untouched (the certificate is for
// 127.0.0.1, whatever the port).
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	l            net.Listener
	conns        map[net.Conn]struct{}
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	// The proxy closes its port for the outage and must get it back (testutil.Ports).
	p := &tcpProxy{addr: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)), target: target, conns: map[net.Conn]struct{}{}}
	if err := p.up(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.down)
	return p
}

func (p *tcpProxy) up() error {
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return nil
}

func (p *tcpProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l == nil {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *tcpProxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, u) {
		c.Close()
		u.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) { _, _ = io.Copy(dst, src); done <- struct{}{} }
	go pipe(u, c)
	go pipe(c, u)
	<-done
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// kubeconfig writes the rig's admin kubeconfig pointed at the proxy.
func (p *tcpProxy) kubeconfig(t *testing.T, rigKubeconfig string) string {
	t.Helper()
	c, err := clientcmd.LoadFromFile(rigKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range c.Clusters {
		cl.Server = "https://" + p.addr
	}
	path := filepath.Join(t.TempDir(), "proxied.kubeconfig")
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// Outage and catch-up bounds of TestAPIServerOutageCatchUp.
const (
	outage  = 20 * time.Second
	catchUp = 5 * time.Second
	// patience is how long the test waits for a late catch-up, so that a failure
	// says how late (client-go's own backoff reaches a minute).
	patience = 90 * time.Second
)

// TestAPIServerOutageCatchUp: the API server is killed and stays down for 20 s; the
// changes made right after it answers again (a node NotReady, a declared Service
// deleted) must reach kubal within a few seconds, for the k8s:// source and the
// [k8s-services] controller alike, however long client-go's own backoff grew during
// the outage. Two kinds of client:
//
//   - direct: connected to the API server throughout, so it also meets the restart's
//     own answers (refused, then 5xx/429 while the API server initialises);
//   - held: reaches the API server through a proxy that stays closed until the changes
//     are made, so they are invisible to it until it relists: its recovery (Failed(nil),
//     what clears /alerts) must come with the relisted state, not before it.
func TestAPIServerOutageCatchUp(t *testing.T) {
	f := newFixture(t)
	ctx := f.ctx()
	f.namespace()
	f.createNode(f.readyNode("a", "10.11.0.1"))
	f.createNode(f.readyNode("b", "10.11.0.2"))
	a, b := f.prefix+"a", f.prefix+"b"
	class := f.class()
	cfg, err := config.Parse("k8s.conf", []byte("[k8s-services]\nclass = "+class+"\nscheduler = wrr\n"+
		"nodes = kubal-test="+f.label+"\nvip-ranges = 192.0.2.0/28\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web", "old"} {
		if _, err := f.c.CoreV1().Services(f.ns).Create(ctx, f.lbService(name, corev1.ServiceExternalTrafficPolicyCluster, class, nil,
			corev1.ServicePort{Port: 80, Protocol: corev1.ProtocolTCP}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	web, old := f.ns+".web:80", f.ns+".old:80"

	proxy := newTCPProxy(t, f.rig.Host[len("https://"):])
	proxied := proxy.kubeconfig(t, f.rig.Kubeconfig)

	type client struct {
		name  string
		src   *recorder // the k8s:// source
		reg   *prometheus.Registry
		ctrl  *desiredRecorder
		group *recorder // the Source of the declared web:80
	}
	var clients []*client
	for _, c := range []struct{ name, kubeconfig string }{{"direct", f.rig.Kubeconfig}, {"held", proxied}} {
		cl := &client{name: c.name, reg: prometheus.NewRegistry()}
		cl.src = f.start("", &config.Service{Name: "outage-" + c.name}, c.kubeconfig, cl.reg)
		cl.ctrl = f.startServices(cfg.K8sServices, c.kubeconfig, "lvs-"+c.name, nil)
		clients = append(clients, cl)
	}
	bothReady := func(s source.Set) bool { return len(s) == 2 && hasServer(s, a, true, "") && hasServer(s, b, true, "") }
	for _, cl := range clients {
		cl.src.waitSet(t, settle, cl.name+" source: both nodes", bothReady)
		d := cl.ctrl.wait(t, settle, cl.name+" controller: web and old declared", func(d Desired) bool {
			_, w := find(d, web)
			_, o := find(d, old)
			return w && o
		})
		w, _ := find(d, web)
		cl.group = runSource(t, w.Source)
		cl.group.waitSet(t, settle, cl.name+" web: both nodes", bothReady)
		waitGauge(t, cl.reg, "kubal_k8s_source_connected", 1)
	}

	if err := f.rig.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	proxy.down()
	for _, cl := range clients {
		cl.src.waitFailed(t, 15*time.Second, true)
		cl.group.waitFailed(t, 15*time.Second, true)
	}
	t.Logf("every client reported the outage %s after the kill", time.Since(down).Round(time.Millisecond))
	time.Sleep(time.Until(down.Add(outage)))
	if err := f.rig.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	t.Logf("API server down %s, ready again", up.Sub(down).Round(time.Millisecond))
	f.node("a", setReady(corev1.ConditionFalse))
	if err := f.c.CoreV1().Services(f.ns).Delete(f.ctx(), "old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := proxy.up(); err != nil {
		t.Fatal(err)
	}
	opened := time.Now()

	aDown := func(s source.Set) bool { return hasServer(s, a, false, "not Ready") && hasServer(s, b, true, "") }
	noOld := func(d Desired) bool { _, w := find(d, web); _, o := find(d, old); return w && !o }
	var wg sync.WaitGroup
	var mu sync.Mutex
	took := map[string]time.Duration{}
	measure := func(what string, from time.Time, wait func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait()
			mu.Lock()
			took[what] = time.Since(from)
			mu.Unlock()
		}()
	}
	// The waits run concurrently and never call t.Fatal off the test goroutine:
	// each ends when its condition holds or patience runs out.
	waitFor := func(cond func() bool) func() {
		return func() {
			deadline := time.Now().Add(patience)
			for !cond() && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	for _, cl := range clients {
		from := up // the changes are made once the API server is ready
		if cl.name == "held" {
			from = opened
		}
		measure(cl.name+" source: a NotReady", from, waitFor(func() bool { s, _, _ := cl.src.snapshot(); return s != nil && aDown(s) }))
		measure(cl.name+" controller web: a NotReady", from, waitFor(func() bool { s, _, _ := cl.group.snapshot(); return s != nil && aDown(s) }))
		measure(cl.name+" controller: old deleted", from, waitFor(func() bool {
			cl.ctrl.mu.Lock()
			defer cl.ctrl.mu.Unlock()
			return cl.ctrl.last != nil && noOld(*cl.ctrl.last)
		}))
		measure(cl.name+" source: recovery reported", from, waitFor(func() bool { _, _, fs := cl.src.snapshot(); return len(fs) > 0 && fs[len(fs)-1] == nil }))
		measure(cl.name+" controller: recovery reported", from, waitFor(func() bool { _, _, fs := cl.group.snapshot(); return len(fs) > 0 && fs[len(fs)-1] == nil }))
	}
	wg.Wait()
	var slow []string
	for what, d := range took {
		t.Logf("%-40s %s", what, d.Round(time.Millisecond))
		if d > catchUp {
			slow = append(slow, what)
		}
	}
	if len(slow) > 0 {
		t.Errorf("not caught up within %s of the API server answering again: %v", catchUp, slow)
	}

	// held: nothing of the changes was visible before its proxy opened, so its
	// recovery must come with them (the relisted state), never before.
	held := clients[1]
	check := func(what string, r *recorder) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for i, err := range r.failed {
			if err != nil || r.failedAt[i].Before(opened) {
				continue
			}
			if s := r.setAtFailed[i]; s == nil || !aDown(s) {
				t.Errorf("%s: recovery reported %s after the proxy opened with the pre-outage set (not resynced):\n%s",
					what, r.failedAt[i].Sub(opened).Round(time.Millisecond), dump(s))
			}
			return
		}
		t.Errorf("%s: no recovery reported", what)
	}
	check("held source", held.src)
	check("held controller web", held.group)
	// The controller's recovery follows its own Desired without the deleted Service.
	held.group.mu.Lock()
	var recovered time.Time
	for i, err := range held.group.failed {
		if err == nil && !held.group.failedAt[i].Before(opened) {
			recovered = held.group.failedAt[i]
			break
		}
	}
	held.group.mu.Unlock()
	held.ctrl.mu.Lock()
	var gone time.Time
	for i, d := range held.ctrl.hist {
		if noOld(d) {
			gone = held.ctrl.at[i]
			break
		}
	}
	held.ctrl.mu.Unlock()
	if !recovered.IsZero() && (gone.IsZero() || gone.After(recovered)) {
		t.Errorf("held controller: recovery reported %s after the proxy opened, the deleted Service left the Desired set %s after",
			recovered.Sub(opened).Round(time.Millisecond), gone.Sub(opened).Round(time.Millisecond))
	}
	for _, cl := range clients {
		if v := gauge(t, cl.reg, "kubal_k8s_source_connected"); v != 1 {
			t.Errorf("%s: kubal_k8s_source_connected = %v after the catch-up", cl.name, v)
		}
	}
}
