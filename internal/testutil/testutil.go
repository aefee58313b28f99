// Package testutil holds the helpers every package's tests share: waiting for a
// condition and finding a free port. (Tests only; no production code imports it.)
package testutil

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Poll calls cond every interval until it holds or timeout passes, and returns how
// long that took and whether cond held.
func Poll(timeout, interval time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			return time.Since(start), false
		}
		time.Sleep(interval)
	}
}

// Eventually is Poll every 10 ms that fails t, naming what, when cond does not hold
// within timeout. It returns how long cond took.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	took, ok := Poll(timeout, 10*time.Millisecond, cond)
	if !ok {
		t.Fatalf("%s: not within %v", what, timeout)
	}
	return took
}

// FreePort returns a TCP port that is free on 127.0.0.1 now (see FreePorts).
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct TCP ports that are free on 127.0.0.1 now (see Ports).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports, err := Ports(n)
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// Ports returns n distinct TCP ports free on 127.0.0.1 now, chosen at random below the
// kernel's ephemeral range, each held until all are chosen. Two flakes taught both:
//   - a port from the ephemeral range (Listen on port 0, any outgoing connection) can be
//     taken by anyone while a test has it released: another test's HTTP server answered
//     a stopped API server's clients, and its restart failed "address already in use";
//   - the kernel hands a just-closed port out again: a 3-member etcd cluster got the
//     same peer port twice from Listen on port 0.
func Ports(n int) ([]int, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	const from = 10000
	if low-from < 1000 {
		return nil, fmt.Errorf("the ephemeral port range starts at %d: too few ports below it for tests", low)
	}
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries == 1000 {
			return nil, fmt.Errorf("no free port in %d-%d after %d tries", from, low-1, tries)
		}
		port := from + rand.IntN(low-from)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken
		}
		ls = append(ls, l)
		ports = append(ports, port)
	}
	return ports, nil
}

// SyncBuffer is a log sink that tests can read while other goroutines write to it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Parallel calls f(0) .. f(n-1) on workers goroutines and returns the first error,
// naming its item (for creating many API objects at once in a benchmark's set-up).
func Parallel(workers, n int, f func(i int) error) error {
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range work {
				if err := f(i); err != nil {
					select {
					case errs <- fmt.Errorf("item %d: %w", i, err):
					default:
					}
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}
