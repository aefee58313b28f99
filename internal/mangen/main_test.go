package main

import (
	"os"
	"strings"
	"testing"
)

const kubalHelp = "Usage of kubal:\n  -c string\n    \tconfig file (default \"/etc/pybal/pybal.conf\")\n" +
	"  -d\tdebug logging\n  -debug\n    \tsame as -d\n  -log-format string\n    \tlog format: text\n    \tor json\n"

func TestParseFlags(t *testing.T) {
	got := parseFlags(kubalHelp)
	want := []option{
		{Names: []string{"-c"}, Arg: "string", Usage: `config file (default "/etc/pybal/pybal.conf")`},
		{Names: []string{"-d", "--debug"}, Usage: "debug logging"},
		{Names: []string{"--log-format"}, Arg: "string", Usage: "log format: text or json"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d options %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if strings.Join(got[i].Names, ",") != strings.Join(want[i].Names, ",") || got[i].Arg != want[i].Arg || got[i].Usage != want[i].Usage {
			t.Errorf("option %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestParseCommands(t *testing.T) {
	got := parseCommands("usage\n\ncommands:\n  status [POOL]      show\n  pool   POOL HOST [--reason R]    enable a server\n\nflags:\n")
	if len(got) != 2 || got[1].Synopsis != "pool POOL HOST [--reason R]" || got[1].Usage != "enable a server" {
		t.Errorf("got %+v", got)
	}
}

// Every key table of the real config reference reaches the page, monitor options as
// monitor.option.
func TestConfigReferenceKeys(t *testing.T) {
	md, err := os.ReadFile("../../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	keys := parseConfigTables(string(md))
	names := map[string]bool{}
	for _, k := range keys {
		names[k.Name] = true
	}
	for _, want := range []string{"bgp-local-asn", "admin-token-file", "depool-threshold", "scheduler-flags", "rise", "proxyfetch.url", "proxyfetch.interval"} {
		if !names[want] {
			t.Errorf("key %q missing from the parsed config reference (%d keys)", want, len(keys))
		}
	}
	page := renderKubal(pageMeta{Date: "2026-01-01", Version: "1"}, parseFlags(kubalHelp), keys)
	for _, want := range []string{`.B bgp\-local\-asn`, `\fB\-\-debug\fR`, ".SS [global]"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{`.dot`: `\&.dot`, `a\b`: `a\eb`, `-x`: `\-x`} {
		if got := esc(in); got != want {
			t.Errorf("esc(%q) = %q, want %q", in, got, want)
		}
	}
}
