package api

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPLimits bounds what one client can hold on a listener. The handlers of this
// package never stream and cap request bodies at MaxBodyBytes, so a healthy request
// finishes well within these; a slow or idle client is cut off by them.
type HTTPLimits struct {
	// ReadHeaderTimeout: a connection that has not sent a request's headers within it
	// is closed (idle new connections, slowloris headers).
	ReadHeaderTimeout time.Duration
	// ReadTimeout: the whole request, body included (slow bodies).
	ReadTimeout time.Duration
	// WriteTimeout: from the end of the request headers to the end of the response
	// (a client that does not read).
	WriteTimeout time.Duration
	// IdleTimeout: a keep-alive connection waiting for its next request.
	IdleTimeout time.Duration
	// MaxConns caps the open connections of one listener; a connection beyond it is
	// closed at once (it does not queue in the kernel's backlog behind slow clients).
	MaxConns int
}

// DefaultHTTPLimits are the limits of kubal's instrumentation and admin listeners.
// MaxConns is above the 2,000 slow connections a single client can open before the
// timeouts close them, so that a normal client is still served meanwhile; it bounds
// memory (about 20 KiB per idle connection) and file descriptors.
func DefaultHTTPLimits() HTTPLimits {
	return HTTPLimits{
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxConns:          4096,
	}
}

// NewHTTPServer wraps a handler of this package in an http.Server with lim's
// timeouts. tlsConfig may be nil (plain HTTP) or come from TLSConfig; serve it with
// srv.ServeTLS(l, "", "") in that case. Serve on a LimitListener(l, lim.MaxConns) to
// cap the connections.
func NewHTTPServer(h http.Handler, tlsConfig *tls.Config, log *slog.Logger, lim HTTPLimits) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		// Client-caused errors (TLS handshakes from scanners, timeouts) are noise at
		// WARN: they go to DEBUG.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// LimitedListener is a net.Listener that keeps at most a fixed number of accepted
// connections open; see LimitListener.
type LimitedListener struct {
	net.Listener
	sem      chan struct{}
	rejected atomic.Uint64
}

// LimitListener caps the connections open at once on l at max (<= 0: no cap). A
// connection accepted beyond the cap is closed immediately and counted (Rejected).
func LimitListener(l net.Listener, max int) *LimitedListener {
	ll := &LimitedListener{Listener: l}
	if max > 0 {
		ll.sem = make(chan struct{}, max)
	}
	return ll
}

// Accept returns the next connection within the cap.
func (l *LimitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.sem == nil {
			return c, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			l.rejected.Add(1)
			_ = c.Close()
		}
	}
}

// Rejected is how many connections were closed because the cap was reached.
func (l *LimitedListener) Rejected() uint64 { return l.rejected.Load() }

// Open is how many accepted connections are open.
func (l *LimitedListener) Open() int { return len(l.sem) }

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
