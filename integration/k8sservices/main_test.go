package k8sservices

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubal/kubal/integration/vmrig"
)

// Roles of the test binary when it runs as a helper process in a namespace.
const (
	envRole  = "KUBAL_K8SS_ROLE"
	envName  = "KUBAL_K8SS_NAME"
	envGuest = "KUBAL_K8SS_GUEST"
)

const (
	podPort  = 8080             // the pods' containerPort (the Service's targetPort)
	svcPort  = 80               // the Service port = the IPVS port (DR keeps it)
	workDir  = "/tmp/k8ss"      // in the guest
	vipFile  = workDir + "/vip" // the client loop's target, written once status has it
	class    = "kubal.io/lvs"
	nodeSel  = "kubal-e2e/lb"
	nsShop   = "shop"
	svcName  = "web"
	poolName = "shop.web:80" // kubal's name of the declared service
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "pod":
		os.Exit(pod(os.Getenv(envName)))
	case "client":
		os.Exit(clientLoop())
	case "probe":
		os.Exit(probe())
	}
	os.Exit(m.Run())
}

// pod is one "pod": an HTTP server on podPort answering its name, in its own netns.
func pod(name string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", podPort))
	if err != nil {
		fmt.Fprintf(os.Stderr, "pod %s: %v\n", name, err)
		return 1
	}
	s := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s\n", name)
	})}
	go func() { _ = s.Serve(ln) }()
	fmt.Println("READY")
	<-ctx.Done()
	_ = s.Close()
	return 0
}

// clientLoop starts, every 50 ms, one HTTP request on a new TCP connection to the VIP
// named in vipFile (nothing while the file is missing), each in its own goroutine so
// a request that hangs (the VIP not yet served: SYNs dropped) does not delay the next
// one. After each it prints "OK <start-ns> <end-ns> <pod>" or "FAIL <start-ns>
// <end-ns> <error>" (Unix nanoseconds of the request's start and end).
func clientLoop() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			mu.Lock()
			out.Flush()
			mu.Unlock()
			return 0
		case <-tick.C:
		}
		b, err := os.ReadFile(vipFile)
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		addr := net.JoinHostPort(strings.TrimSpace(string(b)), fmt.Sprint(svcPort))
		go func() {
			t0 := time.Now().UnixNano()
			who, err := oneRequest(addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fmt.Fprintf(out, "FAIL %d %d %v\n", t0, time.Now().UnixNano(), err)
			} else {
				fmt.Fprintf(out, "OK %d %d %s\n", t0, time.Now().UnixNano(), who)
			}
			out.Flush()
		}()
	}
}

// probe sends one request to the VIP (from a namespace whose route to the VIP is a
// chosen node, not the director) and prints the pod that answered.
func probe() int {
	b, err := os.ReadFile(vipFile)
	if err != nil {
		fmt.Println("probe:", err)
		return 1
	}
	who, err := oneRequest(net.JoinHostPort(strings.TrimSpace(string(b)), fmt.Sprint(svcPort)))
	if err != nil {
		fmt.Println("probe:", err)
		return 1
	}
	fmt.Println(who)
	return 0
}

func oneRequest(addr string) (string, error) { return vmrig.OneRequest(addr, "web.shop.example.org") }

// loopStats counts the client loop's results as they arrive.
type loopStats struct {
	mu        sync.Mutex
	ok        int
	firstOK   time.Time // end of the first successful request
	perPod    map[string]int
	failStart []time.Time // start of each failed request
	fails     []string
}

func (s *loopStats) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) < 4 {
			continue
		}
		var start, end int64
		fmt.Sscan(f[1], &start)
		fmt.Sscan(f[2], &end)
		s.mu.Lock()
		switch f[0] {
		case "OK":
			s.ok++
			s.perPod[f[3]]++
			if s.firstOK.IsZero() {
				s.firstOK = time.Unix(0, end)
			}
		case "FAIL":
			s.failStart = append(s.failStart, time.Unix(0, start))
			if len(s.fails) < 500 {
				s.fails = append(s.fails, time.Unix(0, start).Format("15:04:05.000")+" "+f[3])
			}
		}
		s.mu.Unlock()
	}
}

// failedSince counts the failed requests that started at or after t.
func (s *loopStats) failedSince(t time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.failStart {
		if !st.Before(t) {
			n++
		}
	}
	return n
}

func (s *loopStats) snapshot() (ok int, perPod map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	perPod = make(map[string]int, len(s.perPod))
	for k, v := range s.perPod {
		perPod[k] = v
	}
	return s.ok, perPod
}

func (s *loopStats) first() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstOK
}

// failLinesSince returns (up to 20 of) the failures that started at or after t.
func (s *loopStats) failLinesSince(t time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for i, st := range s.failStart {
		if i < len(s.fails) && !st.Before(t) && len(out) < 20 {
			out = append(out, s.fails[i])
		}
	}
	return out
}
