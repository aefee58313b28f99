package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/pool"
)

const token = "sre-token-0123456789abcdef"

// state is a tiny api.State + api.Admin: depool refuses to leave no server pooled.
type state struct {
	mu   sync.Mutex
	snap pool.Snapshot
	// srcDisabled hosts are disabled by their source: an admin pool leaves them
	// disabled, as the daemon does.
	srcDisabled map[string]bool
}

func (s *state) Pools() []string { return []string{"text_80", "empty"} }
func (s *state) Snapshot(p string) (pool.Snapshot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch p {
	case "text_80":
		c := s.snap
		c.Servers = append([]pool.ServerState(nil), s.snap.Servers...)
		return c, true
	case "empty":
		return pool.Snapshot{Name: "empty", Threshold: 0.5}, true
	}
	return pool.Snapshot{}, false
}
func (s *state) Alerts() []api.Alert { return nil }
func (s *state) Ready() error        { return nil }

func (s *state) Apply(_ context.Context, a api.Action) (api.Outcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pooled, idx := 0, -1
	for i, sv := range s.snap.Servers {
		if sv.Pooled {
			pooled++
		}
		if sv.Host == a.Host {
			idx = i
		}
	}
	old := s.snap.Servers[idx]
	nw := old
	switch a.Op {
	case api.OpDepool:
		if old.Pooled && pooled <= 1 && !a.Force {
			return api.Outcome{}, fmt.Errorf("depooling %s would leave %d of %d servers pooled, below depool-threshold 0.5: %w", a.Host, pooled-1, len(s.snap.Servers), api.ErrThreshold)
		}
		nw.Enabled, nw.Pooled, nw.Why = false, false, "depooled by "+a.Actor+": "+a.Reason
	case api.OpPool:
		if s.srcDisabled[a.Host] {
			break
		}
		nw.Enabled, nw.Pooled, nw.Why = true, nw.Up, ""
	case api.OpWeight:
		nw.Weight = a.Weight
	}
	s.snap.Servers[idx] = nw
	return api.Outcome{Old: old, New: nw}, nil
}

func newServer(t *testing.T) (*httptest.Server, *state) {
	t.Helper()
	st := &state{snap: pool.Snapshot{Name: "text_80", Threshold: 0.5, CanDepool: true, Servers: []pool.ServerState{
		{Host: "cp1001", Weight: 10, Enabled: true, Ready: true, Up: true, Pooled: true},
		{Host: "cp1002", Weight: 10, Enabled: true, Ready: true, Up: false, Pooled: false, Why: "ProxyFetch: 503 Service\nUnavailable",
			Monitors: map[string]pool.MonitorResult{"ProxyFetch": {Reason: "503"}, "IdleConnection": {Up: true}}},
		{Host: "cp1003", Weight: 20, Enabled: true, Ready: true, Up: true, Pooled: true},
	}}}
	tf := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tf, []byte("alice:"+token+"\n"), 0o600)
	auth, err := api.LoadAuth(tf)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.NewAdmin(st, st, auth, slog.New(slog.DiscardHandler)))
	t.Cleanup(srv.Close)
	return srv, st
}

func runCtl(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb, func(k string) string { return env[k] })
	return code, out.String(), errb.String()
}

func TestStatusTable(t *testing.T) {
	srv, _ := newServer(t)
	code, out, errs := runCtl(t, nil, "--url", srv.URL, "status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := `POOL     HOST    ENABLED  UP       POOLED  WEIGHT  WHY
text_80  cp1001  yes      yes      yes     10      -
text_80  cp1002  yes      partial  no      10      ProxyFetch: 503 Service Unavailable
text_80  cp1003  yes      yes      yes     20      -
text_80: 2/3 pooled, depool-threshold 0.5
empty: 0/0 pooled, depool-threshold 0.5, cannot depool more
`
	if out != want {
		t.Fatalf("table:\n%s\nwant:\n%s", out, want)
	}
	code, out, _ = runCtl(t, nil, "--url", srv.URL, "--json", "status", "text_80")
	if code != 0 || !strings.HasPrefix(out, `{"name":"text_80"`) || !strings.Contains(out, `"why":"ProxyFetch: 503 Service\nUnavailable"`) {
		t.Fatalf("json status: %d %s", code, out)
	}
}

func TestActionsAndExitCodes(t *testing.T) {
	srv, st := newServer(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	env := map[string]string{"KUBAL_URL": srv.URL}
	envTok := map[string]string{"KUBAL_URL": srv.URL, "KUBAL_TOKEN": token}

	// Unreachable: a port nobody listens on.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		code    int
		out     string // substring of stdout
		errPart string // substring of stderr
	}{
		{"no command", env, nil, 2, "", "usage: kubalctl"},
		{"unknown command", env, []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"bad flag", env, []string{"--nope", "status"}, 2, "", "flag provided but not defined"},
		{"depool missing host", envTok, []string{"depool", "text_80"}, 2, "", "usage: depool POOL HOST"},
		{"weight not a number", envTok, []string{"weight", "text_80", "cp1001", "ten"}, 2, "", `weight "ten"`},
		{"weight out of range", envTok, []string{"weight", "text_80", "cp1001", "70000"}, 2, "", "0..65535"},
		{"bad url", env, []string{"--url", "ftp://x", "status"}, 2, "", "--url"},
		{"missing token file", env, []string{"--token-file", "/nonexistent", "status"}, 2, "", "/nonexistent"},
		{"unreachable", env, []string{"--url", dead, "status"}, 3, "", "cannot reach kubal"},
		{"no token", env, []string{"depool", "text_80", "cp1001"}, 1, "", "401 Unauthorized: missing credentials"},
		{"wrong token", map[string]string{"KUBAL_URL": srv.URL, "KUBAL_TOKEN": "wrong-token-0123456789"}, []string{"depool", "text_80", "cp1001"}, 1, "", "403 Forbidden: invalid token"},
		{"unknown pool", envTok, []string{"status", "nope"}, 1, "", "404 Not Found"},
		{"unknown host", envTok, []string{"depool", "text_80", "nope"}, 1, "", `no host "nope" in pool "text_80" (field host)`},
		{"depool", env, []string{"--token-file", tokenFile, "depool", "text_80", "cp1001", "--reason", "T1234 reimage"}, 0, "depooled cp1001 in text_80 (by alice)\n  before: enabled/up/pooled, weight 10\n  after:  disabled/up/not pooled, weight 10\n  why:    depooled by alice: T1234 reimage", ""},
		{"threshold refused", envTok, []string{"depool", "text_80", "cp1003"}, 1, "", `409 Conflict: depooling cp1003 would leave 0 of 3 servers pooled, below depool-threshold 0.5: refused by depool threshold (use --force to override)`},
		{"forced", envTok, []string{"depool", "--force", "text_80", "cp1003"}, 0, "after:  disabled/up/not pooled", ""},
		{"pool", envTok, []string{"pool", "text_80", "cp1001", "--reason", "done"}, 0, "pooled cp1001", ""},
		{"force on pool is usage", envTok, []string{"pool", "text_80", "cp1001", "--force"}, 2, "", "flag provided but not defined: -force"},
		{"weight", envTok, []string{"weight", "text_80", "cp1001", "0"}, 0, "after:  enabled/up/pooled, weight 0", ""},
		{"weight json", envTok, []string{"--json", "weight", "text_80", "cp1001", "7"}, 0, `"weight":7,`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCtl(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.errPart) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stdout ~ %q, stderr ~ %q", code, tc.code, out, errs, tc.out, tc.errPart)
			}
		})
	}
	snap, _ := st.Snapshot("text_80")
	if s, _ := snap.Server("cp1001"); s.Weight != 7 || !s.Enabled {
		t.Fatalf("final cp1001 %+v", s)
	}
}

// The daemon's token file format (name:token lines) works as --token-file: the
// README's install recipe writes that file and then runs kubalctl with it.
func TestTokenFileDaemonFormat(t *testing.T) {
	srv, _ := newServer(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	daemonFmt := write("daemon", "# admin tokens\n\nalice:"+token+"\n")
	several := write("several", "bob:other-token-0123456789abc\nalice:"+token+"\n")
	bare := write("bare", token+"\n")
	empty := write("empty", "# nothing\n")
	env := map[string]string{"KUBAL_URL": srv.URL}
	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		out     string
		errPart string
	}{
		{"name:token line", []string{"--token-file", daemonFmt, "pool", "text_80", "cp1001"}, 0, "pooled cp1001 in text_80 (by alice)", ""},
		{"bare token still works", []string{"--token-file", bare, "pool", "text_80", "cp1001"}, 0, "(by alice)", ""},
		{"first line of several, and says so", []string{"--token-file", several, "pool", "text_80", "cp1001"}, 1, "",
			`using the token of "bob" (` + several + `:1, the first of 2; --token-name to choose)`},
		{"--token-name picks the line", []string{"--token-file", several, "--token-name", "alice", "pool", "text_80", "cp1001"}, 0, "(by alice)", ""},
		{"--token-name unknown", []string{"--token-file", several, "--token-name", "carol", "status"}, 2, "", `no line named "carol" (names: bob, alice)`},
		{"--token-name without a file", []string{"--token-name", "alice", "status"}, 2, "", "--token-name needs a token file"},
		{"no token in file", []string{"--token-file", empty, "status"}, 2, "", "holds no token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCtl(t, env, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.errPart) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant stdout ~ %q, stderr ~ %q", code, tc.code, out, errs, tc.out, tc.errPart)
			}
		})
	}
}

// -c pybal.conf finds the admin listener (admin_port, admin_ips) and the token file.
func TestConfigFindsAdminURLAndToken(t *testing.T) {
	srv, _ := newServer(t)
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	dir := t.TempDir()
	tf := filepath.Join(dir, "admin-tokens")
	os.WriteFile(tf, []byte("alice:"+token+"\n"), 0o600)
	conf := filepath.Join(dir, "pybal.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`[global]
admin_port = %s
admin_ips = ["%s"]
admin-token-file = %s

[text_80]
protocol = tcp
ip = 192.0.2.1
port = 80
scheduler = wrr
config = file:///etc/pybal/pools/text
monitors = ["IdleConnection"]
`, port, host, tf)), 0o644)
	code, out, errs := runCtl(t, nil, "-c", conf, "pool", "text_80", "cp1001")
	if code != 0 || !strings.Contains(out, "(by alice)") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	// An explicit --url still wins.
	code, _, errs = runCtl(t, nil, "-c", conf, "--url", "http://127.0.0.1:1", "status")
	if code != exitUnreachable || !strings.Contains(errs, "127.0.0.1:1") {
		t.Fatalf("--url with -c: exit %d: %s", code, errs)
	}
	bad := filepath.Join(dir, "bad.conf")
	os.WriteFile(bad, []byte("[global]\nadmin_port = nope\n"), 0o644)
	if code, _, errs := runCtl(t, nil, "-c", bad, "status"); code != exitUsage || !strings.Contains(errs, "bad.conf:2: admin_port") {
		t.Fatalf("bad config: exit %d: %s", code, errs)
	}
}

func TestAdminURL(t *testing.T) {
	for _, tc := range []struct {
		g    config.Global
		want string
	}{
		{config.Global{AdminPort: 9091, AdminIPs: []string{"127.0.0.1", "::1"}}, "http://127.0.0.1:9091"},
		{config.Global{AdminPort: 9191, AdminIPs: []string{"::1"}}, "http://[::1]:9191"},
		{config.Global{AdminPort: 9091, AdminIPs: []string{""}}, "http://127.0.0.1:9091"},
		{config.Global{AdminPort: 9091, AdminIPs: []string{"0.0.0.0"}}, "http://127.0.0.1:9091"},
		{config.Global{AdminPort: 9091, AdminIPs: []string{"::"}}, "http://[::1]:9091"},
		{config.Global{AdminPort: 9091, AdminIPs: []string{"10.0.0.5"}, AdminTLSCert: "/c"}, "https://10.0.0.5:9091"},
	} {
		if got := adminURL(tc.g); got != tc.want {
			t.Errorf("adminURL(%v) = %s, want %s", tc.g.AdminIPs, got, tc.want)
		}
	}
}

// pool on a server its source disables changes nothing: kubalctl says so and exits 1
// (it printed "pooled" with exit 0).
func TestPoolSourceDisabled(t *testing.T) {
	srv, st := newServer(t)
	st.mu.Lock()
	st.srcDisabled = map[string]bool{"cp1004": true}
	st.snap.Servers = append(st.snap.Servers, pool.ServerState{Host: "cp1004", Weight: 10, Ready: true, Up: true,
		Why: "disabled in the server list"})
	st.mu.Unlock()
	env := map[string]string{"KUBAL_URL": srv.URL, "KUBAL_TOKEN": token}
	for _, args := range [][]string{{"pool", "text_80", "cp1004"}, {"--json", "pool", "text_80", "cp1004"}} {
		code, out, errs := runCtl(t, env, args...)
		if code != exitRefused || !strings.Contains(errs, "cp1004 in text_80 is still disabled (disabled in the server list)") ||
			strings.Contains(out, "pooled cp1004") {
			t.Fatalf("%v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errs)
		}
	}
}
