// Command kubalctl is the SRE CLI for kubal's admin API.
//
//	kubalctl [--url URL] [--token-file F] [--json] [--timeout D] [--ca F --cert F --key F] COMMAND
//
//	status [POOL]                         pools, servers, enabled/up/pooled, weight, why
//	depool POOL HOST [--reason R] [--force]
//	pool   POOL HOST [--reason R]
//	weight POOL HOST N [--reason R]
//
// The token comes from --token-file (the file holds the token alone) or $KUBAL_TOKEN.
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
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kubal/kubal/api"
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

flags:
`

const exitCodesText = `
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
	rawURL := fs.String("url", defURL, "admin API base URL ($KUBAL_URL)")
	tokenFile := fs.String("token-file", "", "file holding the admin token (default: $KUBAL_TOKEN)")
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
	base, err := url.Parse(*rawURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		fmt.Fprintf(stderr, "kubalctl: --url %q: want http(s)://host:port\n", *rawURL)
		return exitUsage
	}
	c := &cli{base: base, json: *asJSON, stdout: stdout, stderr: stderr, timeout: *timeout}
	c.token = strings.TrimSpace(getenv("KUBAL_TOKEN"))
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "kubalctl: --token-file: %v\n", err)
			return exitUsage
		}
		c.token = strings.TrimSpace(string(b))
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
	case "depool", "pool", "weight":
		return c.action(ctx, api.Op(cmd), rest)
	case "help":
		fs.Usage()
		return exitOK
	default:
		return c.usage(fmt.Sprintf("unknown command %q", cmd))
	}
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
	if c.json {
		c.stdout.Write(resp)
		return exitOK
	}
	var res api.ActionResult
	if err := json.Unmarshal(resp, &res); err != nil {
		fmt.Fprintf(c.stderr, "kubalctl: unexpected response: %v\n", err)
		return exitRefused
	}
	verb := map[api.Op]string{api.OpDepool: "depooled", api.OpPool: "pooled", api.OpWeight: "set weight of"}[op]
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
	return exitOK
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
		msg = e.Error
		if e.Field != "" {
			msg += " (field " + e.Field + ")"
		}
	}
	fmt.Fprintf(c.stderr, "kubalctl: %s %s: %s: %s\n", method, path, resp.Status, msg)
	return nil, exitRefused
}
