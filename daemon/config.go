package daemon

import (
	"github.com/kubal/kubal/check"
	"github.com/kubal/kubal/config"
)

// LoadConfig is check.Config: what --check-config runs, so a config it accepts starts.
func LoadConfig(path string) (*config.Config, error) { return check.Config(path) }
