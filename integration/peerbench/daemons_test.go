package peerbench

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// desc is the one description both daemons' configurations are generated from.
type desc struct {
	services []service
	check    string // "http" (GET /health on healthPort) or "tcp" (connect to healthPort)
	interval int    // seconds between checks of one real server
	timeout  int    // seconds
}

type service struct {
	vip     string
	port    int
	sched   string
	servers []string // real server addresses; weight 10 each, traffic on the service port
}

func (s service) name(i int) string { return fmt.Sprintf("svc%04d", i) }

// layout builds nSvc services of perSvc real servers each. With distinct, service i
// has its own servers (i*perSvc...); otherwise every service uses servers 0..perSvc-1
// (as many services on the same hosts).
func layout(nSvc, perSvc int, distinct bool, check string, interval int) desc {
	d := desc{check: check, interval: interval, timeout: 1}
	for i := range nSvc {
		s := service{vip: vipOf(i), port: trafficPrt, sched: "wrr"}
		for j := range perSvc {
			k := j
			if distinct {
				k = i*perSvc + j
			}
			s.servers = append(s.servers, serverIP(k))
		}
		d.services = append(d.services, s)
	}
	return d
}

// kubalFiles renders pybal.conf and one JSON server list per service into dir.
// Servers are up at start, before any check (PyBal's optimistic start, like
// keepalived without alpha); one failed check depools (fall 1, keepalived retry 0).
func kubalFiles(d desc, dir string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "[global]\nbgp = no\ninstrumentation = no\nstate-file = %s\n", filepath.Join(dir, "kubal-state.json"))
	for i, s := range d.services {
		list := filepath.Join(dir, s.name(i)+".json")
		var l strings.Builder
		l.WriteString("{\n")
		for j, ip := range s.servers {
			sep := ","
			if j == len(s.servers)-1 {
				sep = ""
			}
			fmt.Fprintf(&l, "  %q: {\"enabled\": true, \"weight\": 10}%s\n", ip, sep)
		}
		l.WriteString("}\n")
		if err := os.WriteFile(list, []byte(l.String()), 0o644); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "\n[%s]\nprotocol = tcp\nip = %s\nport = %d\nscheduler = %s\nconfig = file://%s\ndepool-threshold = .5\n",
			s.name(i), s.vip, s.port, s.sched, list)
		switch d.check {
		case "http":
			fmt.Fprintf(&b, "monitors = ['ProxyFetch']\nproxyfetch.url = ['http://peerbench.test/health']\nproxyfetch.port = %d\nproxyfetch.interval = %d\nproxyfetch.timeout = %d\n",
				healthPort, d.interval, d.timeout)
		case "tcp":
			fmt.Fprintf(&b, "monitors = ['TCP']\ntcp.port = %d\ntcp.interval = %d\ntcp.timeout = %d\n", healthPort, d.interval, d.timeout)
		default:
			return "", fmt.Errorf("check %q: want http or tcp", d.check)
		}
	}
	conf := filepath.Join(dir, "pybal.conf")
	return conf, os.WriteFile(conf, []byte(b.String()), 0o644)
}

// keepalivedFile renders keepalived.conf: the same services, DR, the same check on the
// health port (connect_port), delay_loop = the interval, retry 0 (one failure removes,
// as kubal's fall 1), no alpha (servers are up at start, as kubal's).
func keepalivedFile(d desc, dir string) (string, error) {
	var b strings.Builder
	b.WriteString("global_defs {\n  router_id peerbench\n  script_user root\n}\n")
	for _, s := range d.services {
		fmt.Fprintf(&b, "\nvirtual_server %s %d {\n  delay_loop %d\n  lb_algo %s\n  lb_kind DR\n  protocol TCP\n", s.vip, s.port, d.interval, s.sched)
		for _, ip := range s.servers {
			fmt.Fprintf(&b, "  real_server %s %d {\n    weight 10\n", ip, s.port)
			switch d.check {
			case "http":
				fmt.Fprintf(&b, "    HTTP_GET {\n      url {\n        path /health\n        status_code 200\n      }\n      connect_port %d\n      connect_timeout %d\n      retry 0\n      delay_before_retry %d\n    }\n", healthPort, d.timeout, d.interval)
			case "tcp":
				fmt.Fprintf(&b, "    TCP_CHECK {\n      connect_port %d\n      connect_timeout %d\n      retry 0\n      delay_before_retry %d\n    }\n", healthPort, d.timeout, d.interval)
			default:
				return "", fmt.Errorf("check %q: want http or tcp", d.check)
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	conf := filepath.Join(dir, "keepalived.conf")
	return conf, os.WriteFile(conf, []byte(b.String()), 0o644)
}

// peer is one daemon under test.
type peer struct {
	name   string
	render func(desc, string) (string, error)
	args   func(conf, dir string) []string
}

var peers = []peer{
	{
		name:   "kubal",
		render: kubalFiles,
		args:   func(conf, _ string) []string { return []string{"/usr/sbin/kubal", "-c", conf} },
	},
	{
		name:   "keepalived",
		render: keepalivedFile,
		// -C: the checker (LVS) subsystem only; -n: stay in the foreground. It logs to
		// syslog, which syslogToFile collects (Debian's build has no --log-file, and
		// -l would write to /dev/console, the VM's serial line).
		args: func(conf, dir string) []string {
			return []string{"/usr/sbin/keepalived", "-C", "-n", "-f", conf,
				"-p", filepath.Join(dir, "keepalived.pid"), "-c", filepath.Join(dir, "checkers.pid")}
		},
	},
}

// proc is a running daemon.
type proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func start(t testing.TB, args []string, log string) *proc {
	t.Helper()
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", args[0], err)
	}
	p := &proc{t: t, cmd: cmd, log: log, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	return p
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits for the exit.
func (p *proc) stop() {
	p.t.Helper()
	if !p.alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(120 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		p.t.Errorf("%s did not exit within 120 s of SIGTERM", p.cmd.Path)
	}
}

// tail is the end of the daemon's output and log files, for failure messages.
func (p *proc) tail() string {
	var b []byte
	logs, _ := filepath.Glob(filepath.Join(filepath.Dir(p.log), "*.log*"))
	for _, l := range append([]string{p.log}, logs...) {
		c, _ := os.ReadFile(l)
		b = append(b, c...)
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// usage is CPU time and memory of a process and its descendants (keepalived runs a
// parent and a checker child; kubal is one process).
type usage struct {
	cpu            time.Duration
	rss, pss, anon int64 // bytes, summed over the processes: RSS, PSS (shared pages split), RssAnon (heap and stacks, without the binary's and libraries' file pages)
}

// treeUsage reads /proc for pid and every descendant.
func treeUsage(pid int) usage {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(n); len(f) > 3 {
			pp, _ := strconv.Atoi(f[3])
			children[pp] = append(children[pp], n)
		}
	}
	var u usage
	var walk func(int)
	walk = func(p int) {
		if f := statFields(p); len(f) > 16 {
			ut, _ := strconv.ParseInt(f[13], 10, 64)
			st, _ := strconv.ParseInt(f[14], 10, 64)
			u.cpu += time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
		}
		u.rss += kbField(fmt.Sprintf("/proc/%d/status", p), "VmRSS:")
		u.pss += kbField(fmt.Sprintf("/proc/%d/smaps_rollup", p), "Pss:")
		u.anon += kbField(fmt.Sprintf("/proc/%d/status", p), "RssAnon:")
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return u
}

// statFields splits /proc/pid/stat with the command name (field 2) as one field.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return append([]string{"pid", "comm"}, strings.Fields(string(b[i+1:]))...)
}

func kbField(path, key string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

// syslogToFile serves /dev/log (the VM has no syslog daemon) and appends every message
// to path, so that keepalived's log is in its directory for failure messages.
func syslogToFile(t testing.TB, path string) {
	t.Helper()
	_ = os.Remove("/dev/log")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "/dev/log", Net: "unixgram"})
	if err != nil {
		t.Fatalf("syslog socket: %v", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			f.Write(append(buf[:n:n], '\n'))
		}
	}()
}
