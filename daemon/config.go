package daemon

import (
	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/monitor"
)

// LoadConfig parses and validates a config file in one pass: the parser's checks (BGP
// included), every monitor's options, the Kubernetes URLs and the admin token file.
// It is what --check-config runs, so a config it accepts starts.
func LoadConfig(path string) (*config.Config, error) {
	return config.Load(path,
		config.WithServiceCheck(monitor.Validate),
		config.WithServiceCheck(checkSource),
		config.WithConfigCheck(checkAdmin))
}

func checkSource(svc *config.Service) config.Diagnostics {
	if scheme(svc.ConfigURL) != "k8s" {
		return nil
	}
	if _, err := k8ssource.ParseURL(svc.ConfigURL); err != nil {
		return config.Diagnostics{{Pos: svc.Pos, Key: "config", Msg: err.Error()}}
	}
	return nil
}

func checkAdmin(cfg *config.Config) config.Diagnostics {
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
