// Package testutil holds the helpers every package's tests share: waiting for a
// condition and finding a free port. (Tests only; no production code imports it.)
package testutil

import (
	"bytes"
	"fmt"
	"net"
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

// FreePort returns a TCP port that is free on 127.0.0.1 now. For several ports at
// once use FreePorts: two FreePort calls in a row can return the same port.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct TCP ports that are free on 127.0.0.1 now. Each is held
// until all are chosen: the kernel hands a just-closed port out again (a 3-member etcd
// cluster once got the same peer port twice).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
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
