package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// notifier speaks systemd's sd_notify protocol over $NOTIFY_SOCKET (Type=notify):
// READY=1 once the config is loaded and the sources synced, RELOADING=1 on SIGHUP,
// STOPPING=1 on shutdown, STATUS= for systemctl status, and WATCHDOG=1 at half of
// $WATCHDOG_USEC (WatchdogSec=). Without $NOTIFY_SOCKET every method is a no-op.
type notifier struct {
	addr     *net.UnixAddr // nil: not under systemd
	watchdog time.Duration // 0: no watchdog

	mu      sync.Mutex
	lastErr error
}

// newNotifier reads the systemd environment and removes it from the process
// environment, so that children (RunCommand monitors) cannot notify in kubal's name.
func newNotifier() *notifier {
	n := &notifier{}
	sock := os.Getenv("NOTIFY_SOCKET")
	usec := os.Getenv("WATCHDOG_USEC")
	pid := os.Getenv("WATCHDOG_PID")
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
	if sock == "" {
		return n
	}
	if strings.HasPrefix(sock, "@") { // abstract socket namespace
		sock = "\x00" + sock[1:]
	}
	n.addr = &net.UnixAddr{Name: sock, Net: "unixgram"}
	if v, err := strconv.ParseUint(usec, 10, 63); err == nil && v > 0 {
		if p, err := strconv.Atoi(pid); pid == "" || (err == nil && p == os.Getpid()) {
			n.watchdog = time.Duration(v) * time.Microsecond
		}
	}
	return n
}

// Ready tells systemd that kubal is serving (also after a reload).
func (n *notifier) Ready() { n.send("READY=1") }

// Reloading tells systemd a reload started; call Ready when it is done. MONOTONIC_USEC
// is required by systemd >= 253 for Type=notify-reload and harmless before.
func (n *notifier) Reloading() {
	var ts unix.Timespec
	msg := "RELOADING=1"
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
		msg += fmt.Sprintf("\nMONOTONIC_USEC=%d", ts.Nano()/1000)
	}
	n.send(msg)
}

// Stopping tells systemd that kubal is shutting down.
func (n *notifier) Stopping() { n.send("STOPPING=1") }

// Status sets the one-line status shown by systemctl status.
func (n *notifier) Status(s string) {
	n.send("STATUS=" + strings.ReplaceAll(s, "\n", " "))
}

// RunWatchdog pings systemd's watchdog at half the configured interval until ctx is
// done, but only while alive() says the daemon's main loop is turning: a hung daemon
// stops the pings and systemd restarts it. It returns at once when systemd asked for
// no watchdog.
func (n *notifier) RunWatchdog(ctx context.Context, alive func() bool) {
	if n.addr == nil || n.watchdog <= 0 {
		return
	}
	t := time.NewTicker(n.watchdog / 2)
	defer t.Stop()
	n.send("WATCHDOG=1")
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if alive() {
				n.send("WATCHDOG=1")
			}
		}
	}
}

// Err returns the last error sending a notification (nil when all went through).
func (n *notifier) Err() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lastErr
}

func (n *notifier) send(msg string) {
	if n.addr == nil {
		return
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err == nil {
		_, err = c.Write([]byte(msg))
		c.Close()
	}
	n.mu.Lock()
	n.lastErr = err
	n.mu.Unlock()
}
