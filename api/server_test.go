package api

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kubal/kubal/pool"
)

// slowloris opens n connections to addr that each misbehave in one of four ways and
// returns how long the server took to close each one (-1: still open at giveUp).
func slowloris(t *testing.T, addr string, n int, giveUp time.Duration) []time.Duration {
	t.Helper()
	out := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		// Ramp up over about two seconds, as clients on the network would, instead of
		// measuring how fast the test itself can spawn goroutines on a shared machine.
		if i%10 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = -1
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Errorf("conn %d: %v", i, err)
				return
			}
			defer c.Close()
			start := time.Now()
			_ = c.SetDeadline(start.Add(giveUp))
			closed := make(chan struct{})
			go func() { // the server closing shows as EOF or a reset on read
				defer close(closed)
				_, _ = io.Copy(io.Discard, c)
			}()
			drip := func(s string) { // one byte at a time, until the server closes
				for j := 0; j < len(s); j++ {
					select {
					case <-closed:
						return
					case <-time.After(time.Second):
					}
					if _, err := c.Write([]byte{s[j]}); err != nil {
						return
					}
				}
			}
			switch i % 4 {
			case 0: // connect and say nothing
			case 1: // headers that never end
				drip("GET /pools HTTP/1.1\r\nHost: kubal\r\nX-A: " + strings.Repeat("a", 1000))
			case 2: // a body that never ends
				fmt.Fprintf(c, "PUT /pools/p/mw1/weight HTTP/1.1\r\nHost: kubal\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
				drip(`{"weight": 1` + strings.Repeat(" ", 990))
			case 3: // one request, then an idle keep-alive connection
				fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: kubal\r\n\r\n")
			}
			<-closed
			if time.Since(start) < giveUp {
				out[i] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	return out
}

// TestSlowloris: 2,000 slow or idle connections on each of the two listeners (the
// instrumentation and the admin handler) are all closed by the server within its
// timeouts, while a normal client is served: no failure, p99 under 1 s (a server
// stalled by the attack makes it wait for a timeout, seconds; the p99 seen is 4-43 ms
// alone and up to ~130 ms beside a cold `go test ./...` on 2 cores, so the bound is
// not a latency claim). Before, the daemon's
// listeners had only ReadHeaderTimeout: idle keep-alives and slow bodies were held as
// long as the client liked.
func TestSlowloris(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED LOUDLY: the slowloris test opens 4,000 connections; run without -short")
	}
	lim := HTTPLimits{ReadHeaderTimeout: 3 * time.Second, ReadTimeout: 4 * time.Second,
		WriteTimeout: 4 * time.Second, IdleTimeout: 3 * time.Second, MaxConns: 4096}
	const perListener = 2000
	st := newFakeState(pool.Snapshot{Name: "p", Threshold: 0.5, Servers: []pool.ServerState{
		srv("mw1", "EUP", 10), srv("mw2", "EUP", 10), srv("mw3", "EUP", 10)}})
	auth, err := LoadAuth(writeFile(t, "tokens", "alice:"+aliceToken+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	handlers := map[string]http.Handler{
		"instrumentation": NewInstrumentation(st, nil, discard()),
		"admin":           NewAdmin(st, &fakeAdmin{st: st}, auth, discard()),
	}
	addrs := map[string]string{}
	peak := map[string]int{}
	var peakMu sync.Mutex
	for name, h := range handlers {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := NewHTTPServer(h, nil, discard(), lim)
		ll := LimitListener(l, lim.MaxConns)
		go srv.Serve(ll)
		t.Cleanup(func() { srv.Close() })
		go func() { // the peak of connections held at once, for the log
			for range time.Tick(20 * time.Millisecond) {
				peakMu.Lock()
				peak[name] = max(peak[name], ll.Open())
				peakMu.Unlock()
			}
		}()
		addrs[name] = l.Addr().String()
	}

	// The normal client: a GET every 10 ms on each listener during the attack.
	stop := make(chan struct{})
	var lat []time.Duration
	var latMu sync.Mutex
	var failures []error
	var cwg sync.WaitGroup
	for _, addr := range addrs {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c := &http.Client{Timeout: 5 * time.Second}
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				t0 := time.Now()
				resp, err := c.Get("http://" + addr + "/pools/p")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = errors.New(resp.Status)
					}
				}
				latMu.Lock()
				lat = append(lat, time.Since(t0))
				if err != nil {
					failures = append(failures, err)
				}
				latMu.Unlock()
			}
		}()
	}

	giveUp := lim.ReadTimeout + 3*time.Second
	results := map[string][]time.Duration{}
	var awg sync.WaitGroup
	var rmu sync.Mutex
	for name, addr := range addrs {
		awg.Add(1)
		go func() {
			defer awg.Done()
			r := slowloris(t, addr, perListener, giveUp)
			rmu.Lock()
			results[name] = r
			rmu.Unlock()
		}()
	}
	awg.Wait()
	close(stop)
	cwg.Wait()

	for name, r := range results {
		open, slowest := 0, time.Duration(0)
		for _, d := range r {
			if d < 0 {
				open++
			}
			slowest = max(slowest, d)
		}
		// The latest a server may close: a slow body ends at ReadTimeout; one second
		// of slack for 4,000 goroutines on a shared machine.
		if open > 0 || slowest > lim.ReadTimeout+time.Second {
			t.Errorf("%s: %d of %d connections still open after %v; slowest close %v", name, open, len(r), giveUp, slowest)
			continue
		}
		peakMu.Lock()
		t.Logf("%s: %d slow connections (at most %d open at once), all closed by the server, the slowest after %v", name, len(r), peak[name], slowest)
		peakMu.Unlock()
	}
	slices.Sort(lat)
	if len(lat) < 100 {
		t.Fatalf("only %d normal requests", len(lat))
	}
	p99 := lat[len(lat)*99/100]
	t.Logf("normal client: %d requests, p50 %v, p99 %v, max %v, %d failed", len(lat), lat[len(lat)/2], p99, lat[len(lat)-1], len(failures))
	if p99 > time.Second || len(failures) > 0 {
		t.Errorf("normal client: p99 %v (want < 1s), failures %v", p99, failures)
	}
}

// The cap: connections beyond MaxConns are closed at once and counted, and a slot
// frees when a connection closes.
func TestLimitListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ll := LimitListener(l, 2)
	defer ll.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ll.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := dial(), dial()
	sa, sb := <-accepted, <-accepted
	c := dial()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(c).ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the third connection was not closed: %v", err)
	}
	if ll.Rejected() != 1 || ll.Open() != 2 {
		t.Fatalf("rejected %d open %d", ll.Rejected(), ll.Open())
	}
	sa.Close()
	sa.Close() // a second Close must not free a second slot
	d := dial()
	sd := <-accepted
	if ll.Open() != 2 {
		t.Fatalf("open %d", ll.Open())
	}
	for _, x := range []net.Conn{a, b, c, d, sb, sd} {
		x.Close()
	}
}
