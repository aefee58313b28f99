package monitor

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kubal/kubal/internal/testutil"
)

func rcCheck(t *testing.T, m *Manager, tg Target, kv ...string) (Checker, *testutil.SyncBuffer) {
	t.Helper()
	log, buf := debugLogger()
	return checkerFor(t, m, testService("svc", []string{"RunCommand"}, kv...), "RunCommand", tg, log), buf
}

func TestRunCommandExit(t *testing.T) {
	m, reg := newTestManager(t)
	cases := []struct {
		script string
		up     bool
		reason string
		code   string
	}{
		{"exit 0", true, "", "0"},
		{"exit 1", false, "A process has ended with a probable error condition: process ended with exit code 1.", "1"},
		{"exit 3", false, "A process has ended with a probable error condition: process ended with exit code 3.", "3"},
		{"kill -TERM $$", false, "A process has ended with a probable error condition: process ended by signal 15.", "None"},
	}
	for _, c := range cases {
		ck, _ := rcCheck(t, m, loopback(80), "runcommand.command", "/bin/sh", "runcommand.arguments", "['-c', '"+c.script+"']")
		r := ck.Check(ctxTimeout(t, 5*time.Second))
		if r.Up != c.up || r.Reason != c.reason {
			t.Errorf("%s: got %+v, want up=%v %q", c.script, r, c.up, c.reason)
		}
		if _, ok := metricValue(t, reg, "pybal_monitor_runcommand_run_duration_seconds",
			map[string]string{"result": resultLabel(c.up), "exitcode": c.code}); !ok {
			t.Errorf("%s: no duration series with exitcode %s", c.script, c.code)
		}
	}
}

// Arguments: server.host/ip/port names; the environment is empty; the command
// leads its own session.
func TestRunCommandArgumentsEnvSession(t *testing.T) {
	m, _ := newTestManager(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	t.Setenv("KUBAL_SECRET_TEST_VAR", "leak")
	script := `printf "%s|%s|%s|%s\n" "$1" "$2" "$3" "$4" > ` + out + `; /usr/bin/env >> ` + out +
		`; echo "$$ $(cut -d" " -f6 /proc/$$/stat)" >> ` + out
	ck, _ := rcCheck(t, m, Target{Host: "cp1001.example", Addr: loopback(0).Addr, Port: 8080},
		"runcommand.command", "/bin/sh",
		"runcommand.arguments", "['-c', '"+strings.ReplaceAll(script, "'", `\'`)+"', 'argv0', server.host, server.ip, server.port, 'III']")
	if r := ck.Check(ctxTimeout(t, 5*time.Second)); !r.Up {
		t.Fatal(r)
	}
	b, _ := os.ReadFile(out)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if lines[0] != "cp1001.example|127.0.0.1|8080|III" {
		t.Errorf("arguments: %q", lines[0])
	}
	for _, l := range lines[1 : len(lines)-1] {
		// dash exports PWD itself; nothing may come from our environment.
		if !strings.HasPrefix(l, "PWD=") {
			t.Errorf("environment not empty: %q", l)
		}
	}
	f := strings.Fields(lines[len(lines)-1])
	if len(f) != 2 || f[0] != f[1] {
		t.Errorf("not a session leader: pid/sid %q", lines[len(lines)-1])
	}
}

// On timeout the whole process group is killed, children included.
func TestRunCommandTimeoutKillsGroup(t *testing.T) {
	m, _ := newTestManager(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	svc := testService("svc", []string{"RunCommand"}, "runcommand.command", "/bin/sh",
		"runcommand.arguments", "['-c', 'sleep 30 & echo $! > "+pidFile+"; wait']", "runcommand.timeout", "0.3")
	v := newValidator(svc, "RunCommand")
	l := parsers["RunCommand"](v, loopback(80)).newRunner(testEnv(m, nil)).(*loop)
	start := time.Now()
	r := l.check.Check(ctxTimeout(t, l.timeout))
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("timeout took %v", el)
	}
	if r.Up || r.Reason != "/bin/sh timed out after 0.3 seconds; killed" {
		t.Fatalf("got %+v", r)
	}
	assertDead(t, pidFile)
}

// Processes the command leaves behind are killed when it exits.
func TestRunCommandKillsLeftovers(t *testing.T) {
	m, _ := newTestManager(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	log, buf := debugLogger()
	ck := checkerFor(t, m, testService("svc", []string{"RunCommand"}, "runcommand.command", "/bin/sh",
		"runcommand.arguments", "['-c', 'sleep 30 > /dev/null 2>&1 & echo $! > "+pidFile+"; exit 0']"), "RunCommand", loopback(80), log)
	if r := ck.Check(ctxTimeout(t, 5*time.Second)); !r.Up {
		t.Fatal(r)
	}
	assertDead(t, pidFile)
	if !strings.Contains(buf.String(), "left processes behind") {
		t.Errorf("no leftover warning in log: %s", buf)
	}
}

func assertDead(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(2 * time.Second)
	for {
		// A killed orphan may linger as a zombie until PID 1 reaps it.
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("child %d still alive: %s", pid, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunCommandOutputLoggedEscaped(t *testing.T) {
	m, _ := newTestManager(t)
	ck, buf := rcCheck(t, m, loopback(80), "runcommand.command", "/bin/sh",
		"runcommand.arguments", `['-c', 'printf "line1\\nline2\\tx"; echo err >&2']`)
	ck.Check(ctxTimeout(t, 5*time.Second))
	// PyBal's wording: "Cmd stdout: " / "Cmd stderr: ", newlines and tabs escaped.
	// (slog's text handler quotes the message: each backslash is doubled.)
	if !strings.Contains(buf.String(), `msg="Cmd stdout: line1\\nline2\\tx"`) || !strings.Contains(buf.String(), `msg="Cmd stderr: err\\n"`) {
		t.Errorf("log: %s", buf)
	}
	ck, buf = rcCheck(t, m, loopback(80), "runcommand.command", "/bin/sh",
		"runcommand.arguments", `['-c', 'echo secret']`, "runcommand.log-output", "false")
	ck.Check(ctxTimeout(t, 5*time.Second))
	if strings.Contains(buf.String(), "secret") {
		t.Errorf("log-output false still logged: %s", buf)
	}
}

// PyBal: runcommand.arguments = [] runs the command with one empty argument, as a
// missing key does: a check script sees $# = 1.
func TestRunCommandEmptyArgumentsGiveOneEmptyArgument(t *testing.T) {
	m, _ := newTestManager(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "check")
	out := filepath.Join(dir, "out")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$# [$1]\" >> "+out+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range []string{"[]", ""} {
		os.Remove(out)
		opts := []string{"runcommand.command", script}
		if args != "" {
			opts = append(opts, "runcommand.arguments", args)
		}
		ck, _ := rcCheck(t, m, loopback(80), opts...)
		if r := ck.Check(ctxTimeout(t, 5*time.Second)); !r.Up {
			t.Fatalf("arguments %q: %+v", args, r)
		}
		b, _ := os.ReadFile(out)
		if got := strings.TrimSpace(string(b)); got != "1 []" {
			t.Errorf("arguments %q: script saw %q, want \"1 []\"", args, got)
		}
	}
}

func TestRunCommandMissingBinary(t *testing.T) {
	m, _ := newTestManager(t)
	ck, _ := rcCheck(t, m, loopback(80), "runcommand.command", "/nonexistent/check")
	if r := ck.Check(ctxTimeout(t, 5*time.Second)); r.Up || !strings.Contains(r.Reason, "cannot run /nonexistent/check") {
		t.Fatalf("%+v", r)
	}
}
