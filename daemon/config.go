package daemon

import (
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
)

// LoadConfig parses and validates a config file, including every monitor's options.
// It is what --check-config runs, so a config it accepts starts.
func LoadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	var diags config.Diagnostics
	for _, svc := range cfg.Services {
		diags = append(diags, monitor.Validate(svc)...)
	}
	if len(diags) > 0 {
		return nil, diags
	}
	return cfg, nil
}
