package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestVersionFlag(t *testing.T) {
	var out, errb bytes.Buffer
	// --version wins over the config: it must work on a host without pybal.conf.
	if code := run([]string{"--version", "-c", "/nonexistent"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if got := out.String(); !strings.HasPrefix(got, "kubal ") || !strings.Contains(got, "(commit ") || !strings.Contains(got, "go1.") {
		t.Errorf("--version printed %q, want kubal VERSION (commit C, goX)", got)
	}
}
