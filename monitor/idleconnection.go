package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"time"
)

// idleConnConfig is IdleConnection (SPEC §3.3) plus kubal's port.
type idleConnConfig struct {
	common
	cleanReconnect time.Duration
	maxDelay       time.Duration
	keepalive      bool
	kaIdle         time.Duration
	kaInterval     time.Duration
	kaCount        int
}

func parseIdleConnection(v *validator, t Target) spec {
	c := &idleConnConfig{common: v.common(t)}
	c.port = v.port(t.Port)
	c.cleanReconnect = v.seconds("timeout-clean-reconnect", 3*time.Second, false)
	c.maxDelay = v.seconds("max-delay", 300*time.Second, false)
	c.keepalive = v.bool("keepalive", true)
	c.kaIdle = v.seconds("keepalive-idle", 10*time.Second, false)
	c.kaInterval = v.seconds("keepalive-interval", 30*time.Second, false)
	c.kaCount = v.int("keepalive-retries", 3, 1, 127)
	return c
}

func (c *idleConnConfig) key() string { return c.common.key() }

func (c *idleConnConfig) newRunner(e *env) runner {
	return &IdleConnection{cfg: c, env: e, connectTimeout: defaultConnectTimeout, startSpread: time.Second}
}

// defaultConnectTimeout is Twisted's connectTCP default.
const defaultConnectTimeout = 30 * time.Second

// Twisted ReconnectingClientFactory parameters PyBal inherits.
const (
	backoffInitial = time.Second
	backoffFactor  = math.E
	backoffJitter  = 0.11962656472
)

// backoff is ReconnectingClientFactory.retry: delay *= e, capped at max, then
// jittered (normal, sigma = jitter*delay) and capped again.
type backoff struct {
	delay time.Duration
	max   time.Duration
	norm  func() float64 // standard normal variate
}

func (b *backoff) reset() { b.delay = backoffInitial }

func (b *backoff) next() time.Duration {
	if b.delay == 0 {
		b.reset()
	}
	d := min(float64(b.delay)*backoffFactor, float64(b.max))
	d = min(math.Max(0, d+b.norm()*d*backoffJitter), float64(b.max))
	b.delay = time.Duration(d)
	return b.delay
}

// IdleConnection keeps one idle TCP connection open: connected is up; refused,
// timed out or lost uncleanly is down; a clean close (FIN) gets one fast reconnect
// with timeout-clean-reconnect before anything is reported. One goroutine per
// connection sits in a blocking Read, so an RST or FIN is seen as the kernel
// delivers it.
type IdleConnection struct {
	cfg            *idleConnConfig
	env            *env
	connectTimeout time.Duration
	startSpread    time.Duration // spread first connects so 10k monitors do not SYN at once
}

// Run keeps the connection until ctx ends, emitting up/down as things happen.
func (ic *IdleConnection) Run(ctx context.Context, emit func(Result)) {
	c := ic.cfg
	bo := backoff{max: c.maxDelay, norm: rand.NormFloat64}
	bo.reset()
	if ic.startSpread > 0 && !sleep(ctx, ic.env.clk, ic.env.offset(ic.startSpread)) {
		return
	}
	d := net.Dialer{KeepAlive: -1}
	if c.keepalive {
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: c.kaIdle, Interval: c.kaInterval, Count: c.kaCount}
	}
	timeout := ic.connectTimeout
	buf := make([]byte, 64)
	for {
		d.Timeout = timeout
		var conn net.Conn
		fd, err := c.dialer(d) // a forwarded probe's source follows route changes
		if err == nil {
			conn, err = fd.DialContext(ctx, "tcp", c.target())
		}
		if ctx.Err() != nil {
			if conn != nil {
				conn.Close()
			}
			return
		}
		if err != nil {
			name, msg := connectError(err)
			ic.env.each(func(service, host string) {
				ic.env.metrics.idleconnFailed.WithLabelValues(service, host, ic.env.name, name).Inc()
			})
			emit(Result{Reason: msg})
			timeout = ic.connectTimeout
			if !sleep(ctx, ic.env.clk, bo.next()) {
				return
			}
			continue
		}
		connectedAt := ic.env.clk.Now()
		emit(Result{Up: true})
		bo.reset()
		err = waitClosed(ctx, conn, buf)
		if ctx.Err() != nil {
			return
		}
		if err == io.EOF {
			// Clean close, maybe an idle timeout: fast reconnect, no state change.
			// Guard against a server that closes every connection at once, which
			// would otherwise spin (PyBal did).
			if ic.env.clk.Now().Sub(connectedAt) < time.Second && !sleep(ctx, ic.env.clk, bo.next()) {
				return
			}
			timeout = c.cleanReconnect
			continue
		}
		name, msg := lostError(err)
		ic.env.each(func(service, host string) {
			ic.env.metrics.idleconnLost.WithLabelValues(service, host, ic.env.name, name).Inc()
		})
		emit(Result{Reason: msg})
		timeout = ic.connectTimeout
		if !sleep(ctx, ic.env.clk, bo.next()) {
			return
		}
	}
}

// waitClosed blocks until the peer closes (io.EOF), the connection fails, or ctx
// ends; data the server sends is discarded, as PyBal's Protocol did.
func waitClosed(ctx context.Context, conn net.Conn, buf []byte) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	for {
		if _, err := conn.Read(buf); err != nil {
			return err
		}
	}
}

// connectError names a failed connect as Twisted would (the metric reason label)
// and gives its message.
func connectError(err error) (name, msg string) {
	var errno syscall.Errno
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "ConnectionRefusedError", "Connection was refused by other side: 111: Connection refused."
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "NoRouteError", "No route to host: " + errnoText(err)
	case errors.Is(err, syscall.ETIMEDOUT):
		return "TCPTimedOutError", "TCP connection timed out: 110: Connection timed out."
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return "TimeoutError", "User timeout caused connection failure."
	case errors.As(err, &errno):
		return "ConnectError", "An error occurred while connecting: " + errnoText(err)
	}
	return "ConnectError", "An error occurred while connecting: " + err.Error()
}

// lostError names an unclean connection loss (RST, keepalive timeout).
func lostError(err error) (name, msg string) {
	return "ConnectionLost", "Connection to the other side was lost in a non-clean fashion: " + errnoText(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return fmt.Sprintf("%d: %s.", int(errno), capitalize(errno.Error()))
	}
	return err.Error()
}

func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
