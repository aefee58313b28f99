package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
)

// tlsFiles is the admin listener's TLS setup (mTLS when admin-client-ca is set).
type tlsFiles struct{ cfg *tls.Config }

// adminHandler builds the admin API when it is configured: a token file, or TLS with a
// client CA. Without either, no admin listener runs (an unauthenticated admin API is
// never offered).
func (d *Daemon) adminHandler(g config.Global) (http.Handler, *tlsFiles, error) {
	var tlsOn *tlsFiles
	if g.AdminTLSCert != "" || g.AdminTLSKey != "" || g.AdminClientCA != "" {
		c, err := api.TLSConfig(g.AdminTLSCert, g.AdminTLSKey, g.AdminClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("admin TLS: %w", err)
		}
		tlsOn = &tlsFiles{cfg: c}
	}
	if g.AdminTokenFile == "" && (tlsOn == nil || g.AdminClientCA == "") {
		d.log.Warn("admin API disabled: set admin-token-file (or admin-tls-* with admin-client-ca) to enable it")
		return nil, nil, nil
	}
	auth, err := api.LoadAuth(g.AdminTokenFile)
	if err != nil {
		return nil, nil, fmt.Errorf("admin-token-file: %w", err)
	}
	return api.NewAdmin(d, d, auth, d.log.With("system", "admin"), api.WithMetrics(api.NewAdminMetrics(d.reg))), tlsOn, nil
}

func (d *Daemon) stopHTTP(srvs []*http.Server) {
	for _, s := range srvs {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.Shutdown(ctx)
		cancel()
	}
}

func (d *Daemon) startHTTP(cfg *config.Config) (servers []*http.Server, err error) {
	defer func() {
		if err != nil { // do not leak the listeners already started
			for _, s := range servers {
				_ = s.Close()
			}
		}
	}()
	g := cfg.Global
	if g.Instrumentation {
		h := api.NewInstrumentation(d, d.reg, d.log.With("system", "instrumentation"))
		ss, err := d.listenAll(g.InstrumentationIPs, g.InstrumentationPort, h, nil)
		servers = append(servers, ss...)
		if err != nil {
			return servers, fmt.Errorf("instrumentation: %w", err)
		}
	}
	admin, tlsOn, err := d.adminHandler(g)
	if err != nil {
		return servers, err
	}
	if admin != nil {
		ss, err := d.listenAll(g.AdminIPs, g.AdminPort, admin, tlsOn)
		servers = append(servers, ss...)
		if err != nil {
			return servers, fmt.Errorf("admin: %w", err)
		}
	}
	return servers, nil
}

// listenAll listens on port at every address. An address the host does not have
// (e.g. ::1 of the default list on a host without IPv6) is skipped with a warning;
// any other error, or no listener at all, fails.
func (d *Daemon) listenAll(ips []string, port int, h http.Handler, tlsOn *tlsFiles) ([]*http.Server, error) {
	var out []*http.Server
	for _, ip := range ips {
		s, err := d.listen(net.JoinHostPort(ip, strconv.Itoa(port)), h, tlsOn)
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			d.log.Warn("address not available on this host; not listening on it", "addr", ip, "port", port)
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

func (d *Daemon) listen(addr string, h http.Handler, tlsOn *tlsFiles) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	var tc *tls.Config
	if tlsOn != nil {
		tc = tlsOn.cfg
	}
	srv := api.NewHTTPServer(h, tc, d.log)
	go func() {
		var err error
		if tlsOn != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("HTTP listener stopped", "addr", addr, "err", err)
		}
	}()
	d.log.Info("listening", "addr", ln.Addr().String(), "tls", tlsOn != nil)
	return srv, nil
}
