// Command kubalctl is the SRE CLI for kubal's admin API.
//
//	kubalctl [-c pybal.conf] [--url URL] [--token-file F [--token-name N]] [--json] [--timeout D] [--ca F --cert F --key F] COMMAND
//
//	status [POOL]                         pools, servers, enabled/up/pooled, weight, why
//	depool POOL HOST [--reason R] [--force]
//	pool   POOL HOST [--reason R]
//	weight POOL HOST N [--reason R]
//	clear  POOL HOST [--reason R]          remove the admin override (the source's word counts)
//
// The token comes from --token-file or $KUBAL_TOKEN. The token file is the daemon's
// admin-token-file format, one "name:token" per line (# comments and blank lines
// skipped): kubalctl uses the line named by --token-name, or the first one; a line
// without ':' is taken as a bare token. -c reads the admin listener (admin_port,
// admin_ips, TLS) and admin-token-file from pybal.conf, so --url and --token-file
// are only needed to override them.
//
// Exit codes: 0 success; 1 the server refused the request or failed (HTTP 4xx/5xx:
// bad token, unknown pool or host, depool threshold, ...); 2 usage error; 3 the
// server is unreachable (connection refused, timeout, TLS failure).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
)

// Exit codes.
const (
	exitOK          = 0
	exitRefused     = 1
	exitUsage       = 2
	exitUnreachable = 3
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

const usageText = `usage: kubalctl [flags] COMMAND

commands:
  status [POOL]                               show pools and servers
  depool POOL HOST [--reason R] [--force]     disable a server (--force ignores the depool threshold)
  pool   POOL HOST [--reason R]               enable a server
  weight POOL HOST N [--reason R]             set a server's weight (0..65535)
  clear  POOL HOST [--reason R]               remove the admin override (depool and weight)

flags:
`

const exitCodesText = `
token file: the daemon's admin-token-file, one "name:token" per line; the first
line is used unless --token-name says which (a line without ':' is a bare token)
environment: KUBAL_TOKEN (admin token, if --token-file is not given), KUBAL_URL
exit codes: 0 ok, 1 refused or failed by the server, 2 usage, 3 server unreachable
`

// cli is one invocation's settings.
type cli struct {
	base    *url.URL
	token   string
	json    bool
	client  *http.Client
	stdout  io.Writer
	stderr  io.Writer
	timeout time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("kubalctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defURL := getenv("KUBAL_URL")
	if defURL == "" {
		defURL = "http://127.0.0.1:9091"
	}
	rawURL := fs.String("url", defURL, "admin API base URL ($KUBAL_URL; default from -c, else http://127.0.0.1:9091)")
	confFile := fs.String("c", "", "pybal.conf: take the admin URL and admin-token-file from its [global] section")
	fs.StringVar(confFile, "config", "", "same as -c")
	tokenFile := fs.String("token-file", "", "admin token file, name:token lines (default: $KUBAL_TOKEN, else admin-token-file from -c)")
	tokenName := fs.String("token-name", "", "which name:token line of --token-file to use (default: the first)")
	asJSON := fs.Bool("json", false, "print the server's JSON instead of a table")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	caFile := fs.String("ca", "", "CA bundle to verify an https:// server")
	certFile := fs.String("cert", "", "client certificate for mTLS")
	keyFile := fs.String("key", "", "client key for mTLS")
	showVersion := versionFlag(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
		fmt.Fprint(stderr, exitCodesText)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *showVersion {
		return printVersion(stdout)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *confFile != "" {
		cfg, err := config.Load(*confFile)
		if err != nil {
			fmt.Fprintf(stderr, "kubalctl: -c %s:\n%v\n", *confFile, err)
			return exitUsage
		}
		// An explicit --url wins; $KUBAL_URL does not (-c names this host's config).
		if !set["url"] {
			*rawURL = adminURL(cfg.Global)
		}
		if !set["token-file"] && getenv("KUBAL_TOKEN") == "" {
			*tokenFile = cfg.Global.AdminTokenFile
		}
	}
	base, err := url.Parse(*rawURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		fmt.Fprintf(stderr, "kubalctl: --url %q: want http(s)://host:port\n", *rawURL)
		return exitUsage
	}
	c := &cli{base: base, json: *asJSON, stdout: stdout, stderr: stderr, timeout: *timeout}
	c.token = strings.TrimSpace(getenv("KUBAL_TOKEN"))
	if *tokenName != "" && *tokenFile == "" {
		fmt.Fprintln(stderr, "kubalctl: --token-name needs a token file (--token-file or admin-token-file via -c)")
		return exitUsage
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "kubalctl: --token-file: %v\n", err)
			return exitUsage
		}
		tok, note, err := pickToken(*tokenFile, b, *tokenName)
		if err != nil {
			fmt.Fprintf(stderr, "kubalctl: %v\n", err)
			return exitUsage
		}
		if note != "" {
			fmt.Fprintf(stderr, "kubalctl: %s\n", note)
		}
		c.token = tok
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if *caFile != "" || *certFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				fmt.Fprintf(stderr, "kubalctl: --ca: %v\n", err)
				return exitUsage
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "kubalctl: --ca %s: no PEM certificate found\n", *caFile)
				return exitUsage
			}
		}
		if *certFile != "" {
			kp, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				fmt.Fprintf(stderr, "kubalctl: --cert/--key: %v\n", err)
				return exitUsage
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		tr.TLSClientConfig = tc
	}
	c.client = &http.Client{Transport: tr, Timeout: *timeout}

	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return exitUsage
	}
	switch cmd, rest := rest[0], rest[1:]; cmd {
	case "status":
		if len(rest) > 1 {
			return c.usage("status takes at most one POOL")
		}
		return c.status(ctx, rest)
	case "depool", "pool", "weight", "clear":
		return c.action(ctx, api.Op(cmd), rest)
	case "help":
		fs.Usage()
		return exitOK
	default:
		return c.usage(fmt.Sprintf("unknown command %q", cmd))
	}
}

// adminURL is the admin API URL of a kubal running with g: the first admin_ips
// address (loopback for "" or an unspecified address), https when admin-tls-cert is set.
func adminURL(g config.Global) string {
	host := "127.0.0.1"
	if len(g.AdminIPs) > 0 {
		if a, err := netip.ParseAddr(g.AdminIPs[0]); err == nil && !a.IsUnspecified() {
			host = a.String()
		} else if err == nil && a.Is6() {
			host = "::1"
		}
	}
	scheme := "http"
	if g.AdminTLSCert != "" {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.Itoa(g.AdminPort))
}

// pickToken reads the daemon's admin-token-file format ("name:token" lines, # comments)
// and returns the token of the line named name, or of the first line. note, when not
// empty, tells which line was used out of several.
func pickToken(file string, data []byte, name string) (tok, note string, err error) {
	type entry struct {
		line      int
		name, tok string
	}
	var entries []entry
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		n, t, ok := strings.Cut(line, ":")
		if !ok { // a bare token (kubalctl's earlier format)
			n, t = "", line
		}
		entries = append(entries, entry{i + 1, strings.TrimSpace(n), strings.TrimSpace(t)})
	}
	if len(entries) == 0 {
		return "", "", fmt.Errorf("token file %s holds no token (want name:token lines)", file)
	}
	e := entries[0]
	if name != "" {
		found := false
		var names []string
		for _, x := range entries {
			names = append(names, x.name)
			if x.name == name {
				e, found = x, true
				break
			}
		}
		if !found {
			return "", "", fmt.Errorf("token file %s: no line named %q (names: %s)", file, name, strings.Join(names, ", "))
		}
	} else if len(entries) > 1 {
		note = fmt.Sprintf("using the token of %q (%s:%d, the first of %d; --token-name to choose)", e.name, file, e.line, len(entries))
	}
	if e.tok == "" {
		return "", "", fmt.Errorf("%s:%d: empty token", file, e.line)
	}
	return e.tok, note, nil
}

func (c *cli) usage(msg string) int {
	fmt.Fprintf(c.stderr, "kubalctl: %s (see kubalctl -h)\n", msg)
	return exitUsage
}

// parseInterspersed parses fs allowing flags after positional arguments
// ("depool P H --reason x"), which the flag package alone stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (c *cli) action(ctx context.Context, op api.Op, args []string) int {
	fs := flag.NewFlagSet("kubalctl "+string(op), flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	reason := fs.String("reason", "", "why (recorded in the audit log)")
	var force *bool
	if op == api.OpDepool {
		force = fs.Bool("force", false, "depool even below the depool threshold")
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return exitUsage
	}
	want := 2
	if op == api.OpWeight {
		want = 3
	}
	if len(pos) != want {
		if op == api.OpWeight {
			return c.usage("usage: weight POOL HOST N [--reason R]")
		}
		return c.usage(fmt.Sprintf("usage: %s POOL HOST [--reason R]%s", op, map[bool]string{true: " [--force]"}[op == api.OpDepool]))
	}
	body := map[string]any{}
	if *reason != "" {
		body["reason"] = *reason
	}
	if force != nil && *force {
		body["force"] = true
	}
	method := http.MethodPost
	if op == api.OpWeight {
		n, err := strconv.Atoi(pos[2])
		if err != nil || n < 0 || n > api.MaxWeight {
			return c.usage(fmt.Sprintf("weight %q: want an integer 0..%d", pos[2], api.MaxWeight))
		}
		body["weight"] = n
		method = http.MethodPut
	}
	if c.token == "" {
		fmt.Fprintln(c.stderr, "kubalctl: warning: no token (--token-file or $KUBAL_TOKEN); relying on a client certificate")
	}
	b, _ := json.Marshal(body)
	path := "/pools/" + url.PathEscape(pos[0]) + "/" + url.PathEscape(pos[1]) + "/" + string(op)
	resp, code := c.do(ctx, method, path, b)
	if code != exitOK {
		return code
	}
	var res api.ActionResult
	if err := json.Unmarshal(resp, &res); err != nil {
		fmt.Fprintf(c.stderr, "kubalctl: unexpected response: %v\n", err)
		return exitRefused
	}
	// An admin pool only lifts an admin depool: a server its source disables (the
	// server list, etcd, Kubernetes) stays disabled, and the API answers 200 with the
	// server still disabled. That is not what the SRE asked for: say so, exit 1.
	stillDisabled := op == api.OpPool && !res.New.Enabled
	if c.json {
		c.stdout.Write(resp)
	}
	if stillDisabled {
		why := res.New.Why
		if why == "" {
			why = "disabled by its source"
		}
		fmt.Fprintf(c.stderr, "kubalctl: %s in %s is still disabled (%s): pool lifts only an admin depool; enable the server where its source disables it (server list, etcd, Kubernetes)\n",
			res.Host, res.Pool, oneLine(why))
		return exitRefused
	}
	if c.json {
		return exitOK
	}
	verb := map[api.Op]string{api.OpDepool: "depooled", api.OpPool: "pooled", api.OpWeight: "set weight of", api.OpClear: "cleared the admin override of"}[op]
	fmt.Fprintf(c.stdout, "%s %s in %s (by %s)\n  before: %s, weight %d\n  after:  %s, weight %d\n",
		verb, res.Host, res.Pool, res.Actor, res.Old.Status, res.Old.Weight, res.New.Status, res.New.Weight)
	if res.New.Why != "" {
		fmt.Fprintf(c.stdout, "  why:    %s\n", res.New.Why)
	}
	return exitOK
}

func (c *cli) status(ctx context.Context, args []string) int {
	path := "/v1/pools"
	if len(args) == 1 {
		path += "/" + url.PathEscape(args[0])
	}
	resp, code := c.do(ctx, http.MethodGet, path, nil)
	if code != exitOK {
		return code
	}
	if c.json {
		c.stdout.Write(resp)
		return exitOK
	}
	var pools []api.PoolStatus
	if len(args) == 1 {
		var p api.PoolStatus
		if err := json.Unmarshal(resp, &p); err != nil {
			fmt.Fprintf(c.stderr, "kubalctl: unexpected response: %v\n", err)
			return exitRefused
		}
		pools = []api.PoolStatus{p}
	} else {
		var ps api.PoolsStatus
		if err := json.Unmarshal(resp, &ps); err != nil {
			fmt.Fprintf(c.stderr, "kubalctl: unexpected response: %v\n", err)
			return exitRefused
		}
		pools = ps.Pools
	}
	printTable(c.stdout, pools)
	c.printAlerts(ctx, pools)
	return exitOK
}

// printAlerts lists every current problem of the pools shown (all of kubal's when no
// pool was named), not only the worst one that /alerts (check_pybal) shows.
func (c *cli) printAlerts(ctx context.Context, pools []api.PoolStatus) {
	resp, code := c.do(ctx, http.MethodGet, "/v1/alerts", nil)
	var as api.AlertsStatus
	if code != exitOK || json.Unmarshal(resp, &as) != nil {
		return // an older kubal: the table is still right
	}
	for _, a := range as.Alerts {
		if len(pools) == 1 && a.Pool != "" && a.Pool != pools[0].Name {
			continue
		}
		fmt.Fprintf(c.stdout, "%s: %s\n", strings.ToUpper(a.Level), oneLine(a.Msg))
	}
}

func printTable(w io.Writer, pools []api.PoolStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tHOST\tENABLED\tUP\tPOOLED\tWEIGHT\tWHY")
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	for _, p := range pools {
		for _, s := range p.Servers {
			up := yn(s.Up)
			if !s.Up && strings.Contains(s.Status, "/partially up/") {
				up = "partial"
			}
			why := s.Why
			if why == "" {
				why = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.Name, s.Host, yn(s.Enabled), up, yn(s.Pooled), s.Weight, oneLine(why))
		}
	}
	tw.Flush()
	for _, p := range pools {
		pooled := 0
		for _, s := range p.Servers {
			if s.Pooled {
				pooled++
			}
		}
		for _, s := range p.Servers {
			if s.Override != "" {
				fmt.Fprintf(w, "%s: admin override on %s: %s\n", p.Name, s.Host, oneLine(s.Override))
			}
		}
		line := fmt.Sprintf("%s: %d/%d pooled, depool-threshold %g", p.Name, pooled, len(p.Servers), p.Threshold)
		if !p.CanDepool {
			line += ", cannot depool more"
		}
		if len(p.PooledDown) > 0 {
			line += ", down but kept pooled: " + strings.Join(p.PooledDown, ", ")
		}
		fmt.Fprintln(w, line)
	}
}

// oneLine keeps a reason from breaking the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// do sends a request and returns the body of a 2xx answer, or an exit code after
// printing the server's error.
func (c *cli) do(ctx context.Context, method, path string, body []byte) ([]byte, int) {
	// path is already escaped (url.PathEscape of each name).
	target := strings.TrimSuffix(c.base.String(), "/") + path
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		fmt.Fprintf(c.stderr, "kubalctl: %v\n", err)
		return nil, exitUsage
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		fmt.Fprintf(c.stderr, "kubalctl: cannot reach kubal at %s: %v\n", c.base, err)
		return nil, exitUnreachable
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		fmt.Fprintf(c.stderr, "kubalctl: reading the answer from %s: %v\n", c.base, err)
		return nil, exitUnreachable
	}
	if resp.StatusCode/100 == 2 {
		return data, exitOK
	}
	msg := strings.TrimSpace(string(data))
	var e api.ErrorResponse
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		// The API's hint is for HTTP clients; a CLI user needs the flag.
		msg = strings.Replace(e.Error, `(send "force": true to override)`, "(use --force to override)", 1)
		if e.Field != "" {
			msg += " (field " + e.Field + ")"
		}
	}
	fmt.Fprintf(c.stderr, "kubalctl: %s %s: %s: %s\n", method, path, resp.Status, msg)
	return nil, exitRefused
}
