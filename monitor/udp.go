package monitor

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// udpConfig is UDP (SPEC §3.6) plus kubal's port.
type udpConfig struct {
	common
	interval    time.Duration
	icmpTimeout time.Duration
}

func parseUDP(v *validator, t Target) spec {
	c := &udpConfig{common: v.common(t)}
	c.port = v.port(t.Port)
	c.interval = v.seconds("interval", 10*time.Second, false)
	c.icmpTimeout = v.seconds("icmp-timeout", 20*time.Second, false)
	return c
}

func (c *udpConfig) key() string { return c.common.key() }

func (c *udpConfig) newRunner(e *env) runner { return &UDP{cfg: c, env: e} }

// UDP sends a zero-length datagram from a connected socket every interval. An ICMP
// port-unreachable (the kernel's ECONNREFUSED on the socket) is down at once; a
// check finding no ICMP error for icmp-timeout is up. Replies are never needed.
type UDP struct {
	cfg *udpConfig
	env *env
}

// icmpReason replaces PyBal's reason None ("(reason unknown)") with the cause.
const icmpReason = "ICMP destination unreachable received"

// Run probes every interval until ctx ends; ICMP errors are emitted as they arrive.
func (u *UDP) Run(ctx context.Context, emit func(Result)) {
	c := u.cfg
	clk := u.env.clk
	var conn *net.UDPConn
	// mu orders the ICMP handler against a check's verdict, so an ICMP racing
	// the verdict is never followed by a stale up.
	var mu sync.Mutex
	var lastICMP time.Time // zero: never
	icmp := func() {
		mu.Lock()
		defer mu.Unlock()
		lastICMP = clk.Now()
		emit(Result{Reason: icmpReason})
	}
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	next := clk.Now().Add(c.interval - u.env.offset(c.interval))
	var ok bool
	for first := true; ; first = false {
		if first {
			next, ok = firstWait(ctx, clk, next, c.interval, u.env.hurry, u.env.promptDelay)
		} else {
			ok = sleep(ctx, clk, next.Sub(clk.Now()))
		}
		if !ok {
			return
		}
		if conn == nil {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "udp", c.target())
			if err != nil {
				emit(Result{Reason: err.Error()})
				next = nextTick(next, c.interval, clk.Now())
				continue
			}
			conn = nc.(*net.UDPConn)
			go readICMP(ctx, conn, icmp)
		}
		if _, err := conn.Write(nil); err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				icmp() // the error of an earlier datagram surfaced on this write
			}
		}
		mu.Lock()
		if lastICMP.IsZero() || clk.Now().Sub(lastICMP) > c.icmpTimeout {
			emit(Result{Up: true})
		}
		mu.Unlock()
		next = nextTick(next, c.interval, clk.Now())
	}
}

// readICMP blocks in Read so an ICMP error is seen when it arrives, not at the next
// interval. Replies are discarded.
func readICMP(ctx context.Context, conn *net.UDPConn, icmp func()) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 512)
	for {
		_, err := conn.Read(buf)
		switch {
		case err == nil:
		case errors.Is(err, syscall.ECONNREFUSED):
			if ctx.Err() == nil {
				icmp()
			}
		default:
			return
		}
	}
}
