package ecmp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubal/kubal/integration/vmrig"
)

// ---- backends ----

// serveBackends starts one TCP server per backend, in its namespace, on the VIP's port
// (0.0.0.0: it answers on the VIP, which DR delivers, and on its own address, which
// kubal's TCP monitor connects to). Each request line is answered with
// "<backend> <line>", so the client knows which backend holds the connection.
func serveBackends(t *testing.T) {
	t.Helper()
	for _, b := range backends {
		var ln net.Listener
		must(t, vmrig.InNS(b.name, func() (err error) {
			ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", vipPort))
			return err
		}))
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go echo(c, b.name)
			}
		}()
	}
}

func echo(c net.Conn, name string) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "%s %s", name, line); err != nil {
			return
		}
	}
}

// ---- long-lived client connections ----

// stall is one request's answer time above stallMin.
type stall struct {
	sent time.Time
	took time.Duration
}

const stallMin = 50 * time.Millisecond

// conn is one long-lived client connection: a request every interval, each answer
// checked (same sequence number; which backend).
type conn struct {
	id      int
	c       net.Conn
	mu      sync.Mutex
	backend string    // backend of the last answer
	moves   int       // answers from another backend than the previous one
	broken  time.Time // zero while alive
	err     string
	reqs    int
	sent    time.Time // the request waiting for its answer (zero if none)
	port    int       // client port
}

// traffic is the client side: the connections and every slow answer.
type traffic struct {
	conns    []*conn
	interval time.Duration
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	stalls   []stall
	answers  atomic.Int64 // answers and errors, for the timeline
}

// openConns opens n connections to the VIP from the client namespace and starts their
// request loops, spread evenly over one interval.
func openConns(t *testing.T, n int, interval time.Duration) *traffic {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &traffic{interval: interval, cancel: cancel}
	t.Cleanup(tr.close)
	addr := net.JoinHostPort(vip, fmt.Sprint(vipPort))
	err := vmrig.InNS(clientNS, func() error {
		for i := range n {
			c, err := net.DialTimeout("tcp4", addr, 10*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
			}
			tr.conns = append(tr.conns, &conn{id: i, c: c, port: c.LocalAddr().(*net.TCPAddr).Port})
		}
		return nil
	})
	if err != nil {
		tr.close()
		t.Fatalf("opening the client connections: %v", err)
	}
	for i, c := range tr.conns {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			tr.loop(ctx, c, time.Duration(i)*interval/time.Duration(n))
		}()
	}
	return tr
}

func (tr *traffic) close() {
	tr.cancel()
	for _, c := range tr.conns {
		c.c.Close()
	}
	tr.wg.Wait()
}

// reqTimeout is how long one answer may take before the connection counts as broken.
const reqTimeout = 10 * time.Second

func (tr *traffic) loop(ctx context.Context, c *conn, offset time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(offset):
	}
	tick := time.NewTicker(tr.interval)
	defer tick.Stop()
	br := bufio.NewReader(c.c)
	for seq := 0; ; seq++ {
		sent := time.Now()
		c.mu.Lock()
		c.sent = sent
		c.mu.Unlock()
		_ = c.c.SetDeadline(sent.Add(reqTimeout))
		_, err := fmt.Fprintf(c.c, "%d\n", seq)
		var line string
		if err == nil {
			line, err = br.ReadString('\n')
		}
		took := time.Since(sent)
		if ctx.Err() != nil {
			return
		}
		tr.answers.Add(1)
		c.mu.Lock()
		c.sent = time.Time{}
		c.mu.Unlock()
		if err == nil {
			name, got, ok := strings.Cut(strings.TrimSpace(line), " ")
			if !ok || got != fmt.Sprint(seq) {
				err = fmt.Errorf("bad answer %q to request %d", line, seq)
			} else {
				c.mu.Lock()
				if c.backend != "" && c.backend != name {
					c.moves++
				}
				c.backend = name
				c.reqs++
				c.mu.Unlock()
			}
		}
		if took >= stallMin {
			tr.mu.Lock()
			tr.stalls = append(tr.stalls, stall{sent, took})
			tr.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			c.broken, c.err = time.Now(), errClass(err)
			c.mu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func errClass(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "RST"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EPIPE):
		return "EPIPE"
	}
	return err.Error()
}

// snap is the state of every connection at one moment.
type snap struct {
	at       time.Time
	backend  []string
	moves    []int
	broken   []bool
	reqs     int
	inflight time.Duration // the longest wait of a request still unanswered
	cpu      cpuTimes
}

func (tr *traffic) snap() snap {
	s := snap{at: time.Now(), cpu: readCPU()}
	for _, c := range tr.conns {
		c.mu.Lock()
		s.backend = append(s.backend, c.backend)
		s.moves = append(s.moves, c.moves)
		s.broken = append(s.broken, !c.broken.IsZero())
		s.reqs += c.reqs
		if !c.sent.IsZero() && c.broken.IsZero() {
			s.inflight = max(s.inflight, s.at.Sub(c.sent))
		}
		c.mu.Unlock()
	}
	return s
}

// delta is what happened to the connections between two snapshots.
type delta struct {
	conns, alive  int            // connections alive at the start
	broken        int            // of those, broken since
	moved         int            // of those, answered by another backend since
	reqs          int            // requests answered in between
	maxStall      time.Duration  // longest answer to a request sent in between
	errs          map[string]int // broken connections by error
	perBackend    map[string]int // alive connections per backend at the end
	stallsOver1s  int
	stallsOver200 int
	brokeAt       []time.Duration // when each broken connection broke, from the start
	busy          float64         // the VM's CPU busy share in between (%)
	brokePorts    []string        // the broken connections: client port, backend, error, when
}

func (tr *traffic) since(a snap) delta {
	b := tr.snap()
	// A request still unanswered counts as a stall of its age so far.
	d := delta{conns: len(a.backend), errs: map[string]int{}, perBackend: map[string]int{}, reqs: b.reqs - a.reqs, maxStall: b.inflight,
		busy: b.cpu.busySince(a.cpu)}
	for i := range a.backend {
		if a.broken[i] {
			continue
		}
		d.alive++
		if b.broken[i] {
			d.broken++
			c := tr.conns[i]
			c.mu.Lock()
			d.errs[c.err]++
			d.brokeAt = append(d.brokeAt, c.broken.Sub(a.at))
			d.brokePorts = append(d.brokePorts, fmt.Sprintf("port %d (backend %s, %s, +%s)", c.port, c.backend, c.err, ms(c.broken.Sub(a.at))))
			c.mu.Unlock()
			continue
		}
		if b.moves[i] != a.moves[i] {
			d.moved++
		}
		d.perBackend[b.backend[i]]++
	}
	tr.mu.Lock()
	for _, s := range tr.stalls {
		if s.sent.Before(a.at) || s.sent.After(b.at) {
			continue
		}
		d.maxStall = max(d.maxStall, s.took)
		if s.took > time.Second {
			d.stallsOver1s++
		}
		if s.took > 200*time.Millisecond {
			d.stallsOver200++
		}
	}
	tr.mu.Unlock()
	return d
}

func (d delta) String() string {
	return fmt.Sprintf("%d/%d connections broken %s, %d moved backend, longest stall %s (%d answers > 200 ms, %d > 1 s), %d requests answered; per backend %s; VM CPU busy %.0f %%",
		d.broken, d.alive, mapString(d.errs), d.moved, ms(d.maxStall), d.stallsOver200, d.stallsOver1s, d.reqs, mapString(d.perBackend), d.busy)
}

func mapString(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// ---- synthetic flows ----

// probeFlows opens one short connection per client port synthBase..synthBase+n-1,
// asks which backend answers and closes it with a RST (no TIME_WAIT, and the
// directors' connection entries go to CLOSE, 10 s), so the same flows can be probed
// again after a change. It returns the backend per flow ("" on error).
func probeFlows(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	const workers = 3 // a burst of 300 handshakes starves the VM's BFD timers
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- vmrig.InNS(clientNS, func() error {
				for i := w; i < n; i += workers {
					out[i] = probeOne(synthBase + i)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	return out
}

func probeOne(port int) string {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP), Port: port}}
	c, err := d.Dial("tcp4", net.JoinHostPort(vip, fmt.Sprint(vipPort)))
	if err != nil {
		return ""
	}
	tc := c.(*net.TCPConn)
	defer func() { _ = tc.SetLinger(0); tc.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "probe\n"); err != nil {
		return ""
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return ""
	}
	name, _, _ := strings.Cut(line, " ")
	return name
}

// flowsGone waits until no director holds a connection entry of a synthetic flow
// (their entries in CLOSE expire after 10 s); it returns how long that took.
func flowsGone(t *testing.T, ds []*director, n int, limit time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		left := 0
		for _, d := range ds {
			left += synthEntries(d.name, n)
		}
		if left == 0 {
			return time.Since(t0)
		}
		if time.Since(t0) > limit {
			t.Fatalf("%d connection entries of the synthetic flows still there after %s", left, limit)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// synthEntries counts the entries of /proc/net/ip_vs_conn in namespace ns whose client
// port is a synthetic flow's.
func synthEntries(ns string, n int) int {
	var b []byte
	if err := vmrig.InNS(ns, func() (err error) { b, err = os.ReadFile("/proc/thread-self/net/ip_vs_conn"); return err }); err != nil {
		return 0
	}
	count := 0
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "TCP" {
			continue
		}
		var port int
		if _, err := fmt.Sscanf(f[2], "%X", &port); err == nil && port >= synthBase && port < synthBase+n {
			count++
		}
	}
	return count
}

// changed compares two probes of the same flows: how many answered both times, and how
// many of those from another backend.
func changed(a, b []string) (both, diff int) {
	for i := range a {
		if a[i] == "" || b[i] == "" {
			continue
		}
		both++
		if a[i] != b[i] {
			diff++
		}
	}
	return both, diff
}

func countBy(v []string) map[string]int {
	m := map[string]int{}
	for _, s := range v {
		if s == "" {
			s = "error"
		}
		m[s]++
	}
	return m
}

// timeline samples the number of answers every step until stop and returns them
// ("answers per step"), to show when traffic stalls and resumes.
func (tr *traffic) timeline(step time.Duration, stop <-chan struct{}) <-chan []int64 {
	out := make(chan []int64, 1)
	go func() {
		var v []int64
		last := tr.answers.Load()
		tk := time.NewTicker(step)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				out <- v
				return
			case <-tk.C:
				n := tr.answers.Load()
				v = append(v, n-last)
				last = n
			}
		}
	}()
	return out
}

// cpuTimes is the first line of /proc/stat: total and idle (idle + iowait) jiffies.
type cpuTimes struct{ total, idle uint64 }

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var c cpuTimes
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		c.total += n
		if i == 3 || i == 4 {
			c.idle += n
		}
	}
	return c
}

// busySince is the CPU busy share (%) since an earlier reading.
func (c cpuTimes) busySince(a cpuTimes) float64 {
	if c.total <= a.total {
		return 0
	}
	return 100 * (1 - float64(c.idle-a.idle)/float64(c.total-a.total))
}
