// Package check is the one validation of a config: everything the daemon checks
// before it starts, so that `kubal --check-config` accepts exactly what starts.
package check

import (
	"strings"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/monitor"
)

// Config parses and validates a config file in one pass: the parser's checks (BGP
// included), every monitor's options, the Kubernetes URLs and [k8s-services] template,
// and the admin token and TLS files. Errors come in line order, each with file:line.
func Config(path string) (*config.Config, error) {
	return config.Load(path,
		config.WithServiceCheck(monitor.Validate),
		config.WithServiceCheck(source),
		config.WithConfigCheck(k8ssource.CheckTemplate),
		config.WithConfigCheck(adminFiles))
}

func source(svc *config.Service) config.Diagnostics {
	if !strings.HasPrefix(svc.ConfigURL, "k8s://") {
		return nil
	}
	if _, err := k8ssource.ParseURL(svc.ConfigURL); err != nil {
		return config.Diagnostics{{Pos: svc.Pos, Key: "config", Msg: err.Error()}}
	}
	return nil
}

func adminFiles(cfg *config.Config) config.Diagnostics {
	g := cfg.Global
	var ds config.Diagnostics
	if g.AdminTokenFile != "" {
		if _, err := api.LoadAuth(g.AdminTokenFile); err != nil {
			ds = append(ds, config.Diagnostic{Pos: config.Pos{File: cfg.Path}, Key: "admin-token-file", Msg: err.Error()})
		}
	}
	if g.AdminTLSCert != "" || g.AdminTLSKey != "" || g.AdminClientCA != "" {
		if _, err := api.TLSConfig(g.AdminTLSCert, g.AdminTLSKey, g.AdminClientCA); err != nil {
			ds = append(ds, config.Diagnostic{Pos: config.Pos{File: cfg.Path}, Key: "admin-tls-cert", Msg: err.Error()})
		}
	}
	return ds
}
