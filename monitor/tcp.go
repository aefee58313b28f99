package monitor

import (
	"context"
	"net"
	"time"
)

// tcpConfig is kubal's TCP connect check: up iff a connection can be opened within
// the timeout; the connection is closed at once.
type tcpConfig struct {
	common
	interval, timeout time.Duration
}

func parseTCP(v *validator, t Target) spec {
	c := &tcpConfig{common: v.common(t)}
	c.port = v.port(t.Port)
	c.interval = v.seconds("interval", 10*time.Second, false)
	c.timeout = v.seconds("timeout", 5*time.Second, false)
	return c
}

func (c *tcpConfig) key() string { return c.common.key() }

func (c *tcpConfig) newRunner(e *env) runner {
	return e.newLoop(c.interval, c.timeout, &TCP{addr: c.target(), cfg: c})
}

// TCP is the connect check.
type TCP struct {
	addr string
	cfg  *tcpConfig
}

// Check connects and closes.
func (t *TCP) Check(ctx context.Context) Result {
	d, err := t.cfg.dialer(net.Dialer{KeepAlive: -1})
	if err != nil {
		return Result{Reason: err.Error()}
	}
	conn, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		_, msg := connectError(err)
		return Result{Reason: msg}
	}
	conn.Close()
	return Result{Up: true}
}
