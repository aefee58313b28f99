package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubal/kubal/integration/vmrig"
)

// Roles of the test binary when it runs as a helper process in a namespace.
const (
	envRole  = "KUBAL_E2E_ROLE"
	envName  = "KUBAL_E2E_NAME"
	envGuest = "KUBAL_E2E_GUEST"
)

// Ports of the scenario: the NodePort the VIP forwards to, and the gateway's status port.
const (
	trafficPort = 30080
	healthPort  = 15021
	vip         = "192.0.2.80"
	workDir     = "/tmp/e2e" // in the guest
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "backend":
		os.Exit(backend(os.Getenv(envName)))
	case "client":
		os.Exit(clientLoop())
	}
	os.Exit(m.Run())
}

// backend is one node: the NodePort-style traffic server (answers its node name) and
// the ingressgateway's status endpoint /healthz/ready, which answers 503 while
// <workDir>/down-<name> exists. Traffic keeps being served while health fails, as a
// draining gateway does.
func backend(name string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	traffic := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s\n", name)
	})
	health := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz/ready" {
			http.NotFound(w, r)
			return
		}
		if _, err := os.Stat(filepath.Join(workDir, "down-"+name)); err == nil {
			http.Error(w, "gateway not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	var servers []*http.Server
	for port, h := range map[int]http.Handler{trafficPort: traffic, healthPort: health} {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			fmt.Fprintf(os.Stderr, "backend %s: %v\n", name, err)
			return 1
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go func() { _ = s.Serve(ln) }()
	}
	fmt.Println("READY")
	<-ctx.Done()
	for _, s := range servers {
		_ = s.Close()
	}
	return 0
}

// clientLoop sends one HTTP request per new TCP connection to the VIP every 50 ms and
// prints, after each, "OK <node>" or "FAIL <error>" on stdout; the scenario counts them.
func clientLoop() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	out := bufio.NewWriter(os.Stdout)
	addr := net.JoinHostPort(vip, fmt.Sprint(trafficPort))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			out.Flush()
			return 0
		case <-tick.C:
		}
		node, err := oneRequest(addr)
		if err != nil {
			fmt.Fprintf(out, "FAIL %s %v\n", time.Now().Format("15:04:05.000"), err)
		} else {
			fmt.Fprintf(out, "OK %s\n", node)
		}
		out.Flush()
	}
}

func oneRequest(addr string) (string, error) { return vmrig.OneRequest(addr, "ingress.example.org") }

// loopStats counts the client loop's results as they arrive.
type loopStats struct {
	mu      sync.Mutex
	ok      int
	fail    int
	perNode map[string]int
	fails   []string
}

func (s *loopStats) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		s.mu.Lock()
		switch {
		case strings.HasPrefix(line, "OK "):
			s.ok++
			s.perNode[strings.TrimPrefix(line, "OK ")]++
		case strings.HasPrefix(line, "FAIL "):
			s.fail++
			if len(s.fails) < 20 {
				s.fails = append(s.fails, line)
			}
		}
		s.mu.Unlock()
	}
}

// snapshot returns the counters and per-node counts.
func (s *loopStats) snapshot() (ok, fail int, perNode map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	perNode = make(map[string]int, len(s.perNode))
	for k, v := range s.perNode {
		perNode[k] = v
	}
	return s.ok, s.fail, perNode
}

func (s *loopStats) failLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.fails...)
}
