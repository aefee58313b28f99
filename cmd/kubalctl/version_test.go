package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestVersionFlag(t *testing.T) {
	var out, errb bytes.Buffer
	// No command and no server needed.
	if code := run(context.Background(), []string{"--version"}, &out, &errb, func(string) string { return "" }); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if got := out.String(); !strings.HasPrefix(got, "kubalctl ") || !strings.Contains(got, "(commit ") {
		t.Errorf("--version printed %q, want kubalctl VERSION (commit C, goX)", got)
	}
}
