package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// renderDemo writes configs/demo/pybal.conf.in with its placeholders filled.
func renderDemo(t *testing.T) string {
	t.Helper()
	in, err := os.ReadFile("../../configs/demo/pybal.conf.in")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "pybal.conf")
	if err := os.WriteFile(p, bytes.ReplaceAll(in, []byte("@DEMO_DIR@"), []byte(dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	// run.sh writes the token file; --check-config reads it as the daemon does.
	if err := os.WriteFile(filepath.Join(dir, "admin-tokens"), []byte("demo:0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func renderDemoWithout(t *testing.T, file string) string {
	t.Helper()
	p := renderDemo(t)
	if err := os.Remove(filepath.Join(filepath.Dir(p), file)); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckConfig(t *testing.T) {
	fixtures, _ := filepath.Glob("../../config/testdata/*.conf")
	tests := []struct {
		name     string
		conf     string
		wantCode int
		wantOut  []string
	}{
		{"demo", renderDemo(t), 0, []string{"ingress_8080", "api_8080"}},
		{"five errors", "../../config/testdata/five-errors.conf", 1, nil},
		{"missing file", "/nonexistent/pybal.conf", 1, []string{"/nonexistent/pybal.conf"}},
		// The daemon refuses to start without its admin token file: so does the check.
		{"kubal-full.conf names absent files", "../../config/testdata/kubal-full.conf", 1, []string{"/etc/kubal/tokens", "/etc/kubal/admin.pem"}},
		{"demo without its token file", renderDemoWithout(t, "admin-tokens"), 1, []string{"admin-token-file", "admin-tokens"}},
	}
	for _, f := range fixtures {
		// kubal-full.conf names files under /etc/kubal that this machine lacks.
		if strings.Contains(f, "error") || strings.Contains(f, "kubal-full") {
			continue
		}
		tests = append(tests, struct {
			name     string
			conf     string
			wantCode int
			wantOut  []string
		}{filepath.Base(f), f, 0, nil})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run([]string{"--check-config", "-c", tc.conf}, &out, &errb)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.wantCode, out.String(), errb.String())
			}
			all := out.String() + errb.String()
			for _, w := range tc.wantOut {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
}

// The five-error config names five different lines.
func TestCheckConfigNamesAllFiveLines(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--check-config", "-c", "../../config/testdata/five-errors.conf"}, &out, &errb); code != 1 {
		t.Fatalf("exit %d", code)
	}
	lines := map[string]bool{}
	for _, m := range regexp.MustCompile(`five-errors\.conf:(\d+)`).FindAllStringSubmatch(errb.String(), -1) {
		lines[m[1]] = true
	}
	if len(lines) != 5 {
		t.Errorf("errors name lines %v, want 5 different lines:\n%s", lines, errb.String())
	}
}

func TestBadArguments(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--no-such-flag"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if code := run([]string{"--log-format", "xml"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	errb.Reset()
	if code := run([]string{"--dryrun-bgp", "--check-config"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "only applies with -n") {
		t.Errorf("--dryrun-bgp without -n: exit %d, want 2: %s", code, errb.String())
	}
}
