package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"time"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
)

// adminHandler builds the admin API when it is configured: a token file, or TLS with a
// client CA. Without either, no admin listener runs (an unauthenticated admin API is
// never offered).
func (d *Daemon) adminHandler(g config.Global) (http.Handler, *tls.Config, error) {
	var tlsOn *tls.Config
	if g.AdminTLSCert != "" || g.AdminTLSKey != "" || g.AdminClientCA != "" {
		c, err := api.TLSConfig(g.AdminTLSCert, g.AdminTLSKey, g.AdminClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("admin TLS: %w", err)
		}
		tlsOn = c
	}
	if g.AdminTokenFile == "" && (tlsOn == nil || g.AdminClientCA == "") {
		d.log.Warn("admin API disabled: set admin-token-file (or admin-tls-* with admin-client-ca) to enable it")
		return nil, nil, nil
	}
	auth, err := api.LoadAuth(g.AdminTokenFile)
	if err != nil {
		return nil, nil, fmt.Errorf("admin-token-file: %w", err)
	}
	d.auth = auth // re-read on reload
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
		ss, err := api.ListenAll(g.InstrumentationIPs, g.InstrumentationPort, h, nil, d.log)
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
		ss, err := api.ListenAll(g.AdminIPs, g.AdminPort, admin, tlsOn, d.log)
		servers = append(servers, ss...)
		if err != nil {
			return servers, fmt.Errorf("admin: %w", err)
		}
	}
	return servers, nil
}
