package api

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/config"
)

// Listeners are kubal's HTTP listeners as [global] configures them: the PyBal
// instrumentation endpoints and, when authentication is configured, the admin API.
type Listeners struct {
	servers []*http.Server
	// Auth holds the admin tokens (nil without an admin listener); Reload re-reads them.
	Auth *Auth
}

// Registry is what the listeners need of the metrics registry.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// Listen starts the listeners of g. The admin API runs only with a token file or TLS
// with a client CA: an unauthenticated admin API is never offered. On error nothing
// keeps listening.
func Listen(g config.Global, st State, adm Admin, reg Registry, log *slog.Logger) (l *Listeners, err error) {
	l = &Listeners{}
	defer func() {
		if err != nil {
			for _, s := range l.servers {
				_ = s.Close()
			}
		}
	}()
	if g.Instrumentation {
		h := NewInstrumentation(st, reg, log.With("system", "instrumentation"))
		ss, err := ListenAll(g.InstrumentationIPs, g.InstrumentationPort, h, nil, log)
		l.servers = append(l.servers, ss...)
		if err != nil {
			return nil, fmt.Errorf("instrumentation: %w", err)
		}
	}
	var tlsOn *tls.Config
	if g.AdminTLSCert != "" || g.AdminTLSKey != "" || g.AdminClientCA != "" {
		if tlsOn, err = TLSConfig(g.AdminTLSCert, g.AdminTLSKey, g.AdminClientCA); err != nil {
			return nil, fmt.Errorf("admin TLS: %w", err)
		}
	}
	if g.AdminTokenFile == "" && (tlsOn == nil || g.AdminClientCA == "") {
		log.Warn("admin API disabled: set admin-token-file (or admin-tls-* with admin-client-ca) to enable it")
		return l, nil
	}
	if l.Auth, err = LoadAuth(g.AdminTokenFile); err != nil {
		return nil, fmt.Errorf("admin-token-file: %w", err)
	}
	h := NewAdmin(st, adm, l.Auth, log.With("system", "admin"), WithMetrics(NewAdminMetrics(reg)))
	ss, err := ListenAll(g.AdminIPs, g.AdminPort, h, tlsOn, log)
	l.servers = append(l.servers, ss...)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	return l, nil
}

// Shutdown stops the listeners, giving requests in flight 2 s.
func (l *Listeners) Shutdown() {
	for _, s := range l.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.Shutdown(ctx)
		cancel()
	}
}

// Reload applies a reloaded [global]: when the listener settings changed it restarts
// the listeners (requests in flight get 2 s) and, if the new ones cannot start, the
// previous ones again, returning why; otherwise it re-reads the admin tokens (a bad
// token file keeps the tokens in force: Auth.Err). It returns the listeners in force.
func (l *Listeners) Reload(old, cfg config.Global, st State, adm Admin, reg Registry, log *slog.Logger) (*Listeners, error) {
	if !config.ListenersChanged(&old, &cfg) {
		if err := l.Auth.Reload(); err != nil {
			log.Error("admin-token-file: cannot re-read it; the tokens read before stay in force", "err", err)
		}
		return l, nil
	}
	l.Shutdown()
	nl, err := Listen(cfg, st, adm, reg, log)
	if err == nil {
		return nl, nil
	}
	log.Error("reload: the new HTTP listeners cannot start; restarting the previous ones", "err", err)
	if nl, err2 := Listen(old, st, adm, reg, log); err2 == nil {
		return nl, err
	}
	return &Listeners{}, err
}

// TokenErr is the admin token file's last reload error (nil when fine or no listeners).
func (l *Listeners) TokenErr() error {
	if l == nil {
		return nil
	}
	return l.Auth.Err()
}
