package api

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"syscall"
)

// ListenAll serves h on port at every address, through NewHTTPServer with the
// DefaultHTTPLimits (TLS when tlsConfig is set). An address the host does not have (e.g. ::1 of the default list
// on a host without IPv6) is skipped with a warning; any other error, or no listener
// at all, fails, closing the listeners already started.
func ListenAll(ips []string, port int, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) (out []*http.Server, err error) {
	defer func() {
		if err != nil {
			for _, s := range out {
				_ = s.Close()
			}
			out = nil
		}
	}()
	for _, ip := range ips {
		s, err := listen(net.JoinHostPort(ip, strconv.Itoa(port)), h, tlsConfig, log)
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			log.Warn("address not available on this host; not listening on it", "addr", ip, "port", port)
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("none of %v is available for port %d", ips, port)
	}
	return out, nil
}

func listen(addr string, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	lim := DefaultHTTPLimits()
	srv := NewHTTPServer(h, tlsConfig, log, lim)
	ll := LimitListener(ln, lim.MaxConns)
	go func() {
		var err error
		if tlsConfig != nil {
			err = srv.ServeTLS(ll, "", "")
		} else {
			err = srv.Serve(ll)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP listener stopped", "addr", addr, "err", err)
		}
	}()
	log.Info("listening", "addr", ln.Addr().String(), "tls", tlsConfig != nil)
	return srv, nil
}
