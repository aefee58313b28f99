package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/monitor"
)

// One pass, every error, in line order (issue 19): a monitor-option error before a
// parser error is reported with it, in line order, not in a second run after the
// parser's errors are fixed.
func TestWithServiceCheckOnePassLineOrder(t *testing.T) {
	text := `[a]
protocol = tcp
ip = 10.0.0.1
port = 80
scheduler = wrr
config = file:///etc/pybal/pools/a
monitors = ['IdleConnection', 'ProxyFetch']
idleconnection.max-delay = soon
proxyfetch.url = ['http://x/']

[b]
protocol = tcp
ip = 10.0.0.2
port = eighty
scheduler = wrr
config = file:///etc/pybal/pools/b
monitors = ['RunCommand']
runcommand.timeout = later
`
	path := filepath.Join(t.TempDir(), "pybal.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// Without the check: only the parser's error.
	_, err := config.Load(path)
	var ds config.Diagnostics
	if !errors.As(err, &ds) || len(ds) != 1 {
		t.Fatalf("plain Load: %v", err)
	}
	_, err = config.Load(path, config.WithServiceCheck(monitor.Validate))
	if !errors.As(err, &ds) {
		t.Fatalf("want Diagnostics, got %v", err)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.Pos.String()+" "+d.Key)
	}
	want := []string{path + ":8 idleconnection.max-delay", path + ":14 port", path + ":17 runcommand.command", path + ":18 runcommand.timeout"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("findings:\n%s\nwant:\n%s\n(full: %v)", strings.Join(got, "\n"), strings.Join(want, "\n"), err)
	}
	// A config check's findings merge too; one without a position names the file.
	_, err = config.Load(path, config.WithConfigCheck(func(*config.Config) config.Diagnostics {
		return config.Diagnostics{{Key: "admin-token-file", Msg: "cannot read"}}
	}))
	if !errors.As(err, &ds) || len(ds) != 2 || ds[0].String() != path+": admin-token-file: cannot read" {
		t.Fatalf("config check: %v", err)
	}
}
