package monitorload

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// backend runs in a child process (MONITORLOAD_ROLE=backend) so its CPU and memory
// are not counted against the monitors. It holds every idle connection (keyed by
// the local address the monitor dialled) and serves HTTP. Commands on stdin:
//
//	rst N SPREAD_MS   RST N random idle connections over SPREAD_MS; prints
//	                  "rst <addr> <unix nanos before close> <after close>" per
//	                  connection, then "rstdone"
//	status CODE       HTTP status from now on; prints "status <unix nanos>"
//	conns             prints "conns <held idle connections>"
//	hits              prints "hits <HTTP requests served>"
func backend() {
	raiseNofile()
	idle, err := net.Listen("tcp", "0.0.0.0:0")
	check(err)
	web, err := net.Listen("tcp", "0.0.0.0:0")
	check(err)

	var mu sync.Mutex
	conns := map[netip.Addr]*net.TCPConn{}
	go func() {
		for {
			c, err := idle.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			a := tc.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			mu.Lock()
			if old := conns[a]; old != nil {
				old.Close()
			}
			conns[a] = tc
			mu.Unlock()
		}
	}()

	var status atomic.Int64
	status.Store(200)
	var hits atomic.Int64
	go serveHTTP(web, &status, &hits)

	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
		outMu.Unlock()
	}
	say("ready %d %d", idle.Addr().(*net.TCPAddr).Port, web.Addr().(*net.TCPAddr).Port)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "rst":
			n, _ := strconv.Atoi(f[1])
			spread, _ := strconv.Atoi(f[2])
			mu.Lock()
			var victims []netip.Addr
			for a := range conns { // map order is random enough
				if len(victims) == n {
					break
				}
				victims = append(victims, a)
			}
			mu.Unlock()
			gap := time.Duration(spread) * time.Millisecond / time.Duration(max(n, 1))
			for _, a := range victims {
				time.Sleep(time.Duration(rand.Int64N(int64(2*gap) + 1)))
				mu.Lock()
				c := conns[a]
				delete(conns, a)
				mu.Unlock()
				c.SetLinger(0)
				at := time.Now().UnixNano()
				c.Close() // RST
				after := time.Now().UnixNano()
				say("rst %s %d %d", a, at, after)
			}
			say("rstdone")
		case "status":
			code, _ := strconv.Atoi(f[1])
			at := time.Now().UnixNano()
			status.Store(int64(code))
			say("status %d", at)
		case "conns":
			mu.Lock()
			n := len(conns)
			mu.Unlock()
			say("conns %d", n)
		case "hits":
			say("hits %d", hits.Load())
		}
	}
}

// serveHTTP is a minimal HTTP/1.x responder (read the request head, answer, close):
// far cheaper than net/http, so the backend is not what limits the harness.
func serveHTTP(ln net.Listener, status, hits *atomic.Int64) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 2048)
			n := 0
			for !strings.Contains(string(buf[:n]), "\r\n\r\n") {
				m, err := c.Read(buf[n:])
				if err != nil || n+m == len(buf) {
					return
				}
				n += m
			}
			hits.Add(1)
			code := int(status.Load())
			fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n", code, http.StatusText(code))
		}()
	}
}

func raiseNofile() {
	lim := syscall.Rlimit{Cur: 200_000, Max: 200_000}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		var cur syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur)
		cur.Cur = cur.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &cur)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
}
