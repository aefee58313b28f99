package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSystemd listens on a unixgram socket like systemd's notify socket.
func fakeSystemd(t *testing.T) (*net.UnixConn, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, path
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifierMessages(t *testing.T) {
	sock, path := fakeSystemd(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	n := newNotifier()
	if got := getenvForTest("NOTIFY_SOCKET"); got != "" {
		t.Fatalf("NOTIFY_SOCKET still set for children: %q", got)
	}
	n.Ready()
	if m := recv(t, sock); m != "READY=1" {
		t.Fatalf("got %q", m)
	}
	n.Status("serving\n2 pools")
	if m := recv(t, sock); m != "STATUS=serving 2 pools" {
		t.Fatalf("got %q", m)
	}
	n.Reloading()
	if m := recv(t, sock); !strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("got %q", m)
	}
	n.Stopping()
	if m := recv(t, sock); m != "STOPPING=1" {
		t.Fatalf("got %q", m)
	}
	if n.Err() != nil {
		t.Fatal(n.Err())
	}
	// No watchdog configured: RunWatchdog returns at once.
	done := make(chan struct{})
	go func() { n.RunWatchdog(context.Background(), func() bool { return true }); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunWatchdog blocked without WATCHDOG_USEC")
	}
}

func TestWatchdog(t *testing.T) {
	sock, path := fakeSystemd(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "20000") // 20ms: pings every 10ms
	n := newNotifier()
	if n.watchdog != 20*time.Millisecond {
		t.Fatalf("watchdog %v", n.watchdog)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.RunWatchdog(ctx, func() bool { return true }); close(done) }()
	for i := 0; i < 3; i++ {
		if m := recv(t, sock); m != "WATCHDOG=1" {
			t.Fatalf("ping %d: %q", i, m)
		}
	}
	cancel()
	<-done
}

// A daemon whose main loop stopped turning gets no pings, so systemd restarts it.
func TestWatchdogStopsWhenNotAlive(t *testing.T) {
	sock, path := fakeSystemd(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "20000")
	n := newNotifier()
	var alive atomic.Bool
	alive.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.RunWatchdog(ctx, alive.Load)
	for i := 0; i < 2; i++ {
		if m := recv(t, sock); m != "WATCHDOG=1" {
			t.Fatalf("ping %d: %q", i, m)
		}
	}
	alive.Store(false)
	// Drain a ping that may be in flight, then expect silence.
	_ = sock.SetReadDeadline(time.Now().Add(15 * time.Millisecond))
	_, _ = sock.Read(make([]byte, 64))
	_ = sock.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := sock.Read(make([]byte, 64)); err == nil {
		t.Fatal("watchdog pinged while the daemon was not alive")
	}
}

func TestWatchdogForAnotherPID(t *testing.T) {
	_, path := fakeSystemd(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "20000")
	t.Setenv("WATCHDOG_PID", "1")
	if n := newNotifier(); n.watchdog != 0 {
		t.Fatalf("watchdog meant for PID 1 enabled: %v", n.watchdog)
	}
}

func TestNotifierNoSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := newNotifier()
	n.Ready()
	n.Status("x")
	n.RunWatchdog(context.Background(), func() bool { return true }) // returns at once
	if n.Err() != nil {
		t.Fatal(n.Err())
	}
}

func TestNotifierSocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	n := newNotifier()
	n.Ready() // must not panic or block
	if n.Err() == nil {
		t.Fatal("no error for a missing socket")
	}
}

func TestAbstractSocket(t *testing.T) {
	name := "kubal-test-" + strings.ReplaceAll(t.Name(), "/", "-") + time.Now().Format("150405.000000000")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "\x00" + name, Net: "unixgram"})
	if err != nil {
		t.Skipf("abstract unix sockets unavailable: %v", err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", "@"+name)
	newNotifier().Ready()
	if m := recv(t, c); m != "READY=1" {
		t.Fatalf("got %q", m)
	}
}

func getenvForTest(k string) string {
	v, _ := os.LookupEnv(k)
	return v
}
