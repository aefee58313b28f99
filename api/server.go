package api

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"
)

// NewHTTPServer wraps a handler of this package in an http.Server with timeouts that
// keep slow or idle clients from holding connections (the handlers never stream).
// tlsConfig may be nil (plain HTTP) or come from TLSConfig; serve it with
// srv.ServeTLS(l, "", "") in that case.
func NewHTTPServer(h http.Handler, tlsConfig *tls.Config, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}
