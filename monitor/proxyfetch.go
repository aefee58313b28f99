package monitor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// proxyFetchConfig is ProxyFetch (SPEC §3.2) plus kubal's port, TLS and
// expect-status keys.
type proxyFetchConfig struct {
	common
	urls        []fetchURL
	interval    time.Duration
	timeout     time.Duration
	redirect    bool // http_status in 301-303: PyBal's redirect mode
	expect      statusSet
	checkAll    bool
	maxFailures int
	tlsVerify   bool
	ca          *x509.CertPool
	caPath      string
}

type fetchURL struct {
	raw  string
	u    *url.URL
	host string // the Host header, Twisted style
	tls  *tls.Config
}

func parseProxyFetch(v *validator, t Target) spec {
	c := &proxyFetchConfig{common: v.common(t)}
	c.port = v.port(t.Port)
	c.interval = v.seconds("interval", 10*time.Second, false)
	c.timeout = v.seconds("timeout", 5*time.Second, false)
	status := v.int("http_status", 200, math.MinInt32, math.MaxInt32)
	c.redirect = status > 300 && status < 304
	c.checkAll = v.bool("check_all", false)
	c.maxFailures = v.int("max_failures", 0, 0, math.MaxInt32)
	c.tlsVerify = v.bool("tls-verify", false)
	if v.mo.Has("expect-status") {
		set, err := parseStatusSet(v.mo.String("expect-status", ""))
		if err != nil {
			v.errf("expect-status", "%v", err)
		}
		c.expect = set
	}
	if v.mo.Has("ca") {
		c.caPath = v.mo.String("ca", "")
		pem, err := os.ReadFile(c.caPath)
		if err != nil {
			v.errf("ca", "cannot read CA file: %v", err)
		} else {
			c.ca = x509.NewCertPool()
			if !c.ca.AppendCertsFromPEM(pem) {
				v.errf("ca", "no PEM certificate in %s", c.caPath)
			}
		}
	}
	for _, raw := range v.strings("url", true) {
		u, err := url.Parse(raw)
		if err != nil {
			v.errf("url", "bad URL %q: %v", raw, err)
			continue
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.errf("url", "bad URL %q: want http:// or https:// with a host", raw)
			continue
		}
		fu := fetchURL{raw: raw, u: u, host: hostHeader(u)}
		if u.Scheme == "https" {
			fu.tls = &tls.Config{
				ServerName:         u.Hostname(), // SNI from the URL host (PyBal sent none)
				InsecureSkipVerify: !c.tlsVerify, // PyBal never verified
				RootCAs:            c.ca,
			}
		}
		c.urls = append(c.urls, fu)
	}
	return c
}

// hostHeader is Twisted's Host: the URL host, plus :port only when non-default.
func hostHeader(u *url.URL) string {
	h, p := u.Hostname(), u.Port()
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	if p == "" || (u.Scheme == "http" && p == "80") || (u.Scheme == "https" && p == "443") {
		return h
	}
	return h + ":" + p
}

func (c *proxyFetchConfig) key() string { return c.common.key() }

func (c *proxyFetchConfig) newRunner(e *env) runner {
	return e.newLoop(c.interval, c.timeout, &ProxyFetch{cfg: c, transport: e.m.transport, env: e, header: http.Header{"User-Agent": {"kubal"}}})
}

// ProxyFetch is the HTTP(S) GET check.
type ProxyFetch struct {
	cfg       *proxyFetchConfig
	transport http.RoundTripper
	env       *env
	header    http.Header // every request's header; never modified
}

// Check fetches one random URL, or all of them with check_all.
func (p *ProxyFetch) Check(ctx context.Context) Result {
	c := p.cfg
	if !c.checkAll {
		return p.fetch(ctx, c.urls[rand.IntN(len(c.urls))])
	}
	results := make([]Result, len(c.urls))
	var wg sync.WaitGroup
	for i, u := range c.urls {
		wg.Go(func() { results[i] = p.fetch(ctx, u) })
	}
	wg.Wait()
	var failures []string
	for _, r := range results {
		if !r.Up {
			failures = append(failures, r.Reason)
		}
	}
	if len(failures) <= c.maxFailures {
		return Result{Up: true}
	}
	return Result{Reason: strings.Join(failures, "\n")}
}

func (p *ProxyFetch) fetch(ctx context.Context, fu fetchURL) Result {
	start := p.env.clk.Now()
	r := p.get(ctx, fu)
	d := p.env.clk.Now().Sub(start).Seconds()
	p.env.each(func(service, host string) {
		p.env.metrics.proxyfetchDuration.WithLabelValues(service, host, p.env.name, resultLabel(r.Up), fu.raw).Set(d)
	})
	return r
}

func (p *ProxyFetch) get(ctx context.Context, fu fetchURL) Result {
	c := p.cfg
	deadline, _ := ctx.Deadline()
	ctx = context.WithValue(ctx, dialKey{}, &dialTarget{addr: c.target(), c: &c.common, tls: fu.tls, deadline: deadline})
	// The URL is parsed once and the header map is shared read-only (RoundTrip
	// must not modify a request): nothing is re-parsed per check.
	req := (&http.Request{
		Method: http.MethodGet, URL: fu.u, Host: fu.host, Header: p.header,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Close: true,
	}).WithContext(ctx)
	timedOut := func(err error) bool {
		return errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		if timedOut(err) {
			return p.timeoutResult(fu)
		}
		return Result{Reason: err.Error()}
	}
	defer resp.Body.Close()
	// Read the body as Twisted did: a short body (PartialDownloadError) fails.
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	if err != nil {
		if timedOut(err) {
			return p.timeoutResult(fu)
		}
		return Result{Reason: fmt.Sprintf("%s: partial download: %v", resp.Status, err)}
	}
	if c.ok(resp.StatusCode) {
		return Result{Up: true}
	}
	reason := resp.Status
	if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode >= 300 && resp.StatusCode < 400 {
		reason += " to " + loc // Twisted PageRedirect
	}
	return Result{Reason: reason}
}

// maxBody bounds how much of a health page is read.
const maxBody = 1 << 20

func (p *ProxyFetch) timeoutResult(fu fetchURL) Result {
	return Result{Reason: fmt.Sprintf("Getting %s took longer than %s seconds.", fu.raw, secondsText(p.cfg.timeout))}
}

// ok is PyBal's success rule, or kubal's expect-status when set.
func (c *proxyFetchConfig) ok(status int) bool {
	switch {
	case c.expect != nil:
		return c.expect.has(status)
	case c.redirect:
		return status >= 301 && status <= 303
	default:
		return status >= 200 && status <= 202
	}
}

// statusSet is a list of inclusive ranges of HTTP status codes.
type statusSet [][2]int

func (s statusSet) has(code int) bool {
	for _, r := range s {
		if code >= r[0] && code <= r[1] {
			return true
		}
	}
	return false
}

// parseStatusSet reads `[200, 204]`, `"200-299"`, `200` or `['200-204', 301]`.
func parseStatusSet(raw string) (statusSet, error) {
	clean := strings.Map(func(r rune) rune {
		switch r {
		case '[', ']', '(', ')', '\'', '"':
			return -1
		}
		return r
	}, raw)
	var set statusSet
	for _, part := range strings.Split(clean, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
			return nil, fmt.Errorf("bad status %q in %q: want codes 100-599 or ranges like \"200-299\"", part, raw)
		}
		set = append(set, [2]int{a, b})
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("empty status list %q", raw)
	}
	return set, nil
}

// dialTarget rides in the request context: the shared Transport dials the server
// (not the URL host) and does the TLS handshake with the URL's SNI.
type dialTarget struct {
	addr     string
	tls      *tls.Config
	deadline time.Time
	c        *common // readies the dialer (forwarded probes)
}

type dialKey struct{}

// newTransport is the one Transport every ProxyFetch shares. Keep-alives are off:
// each check is a fresh connection (as PyBal's HTTP/1.0 GET), and since the pool is
// keyed by URL host a kept connection could otherwise be reused for another server.
func newTransport() *http.Transport {
	dial := func(ctx context.Context) (net.Conn, *dialTarget, error) {
		dt, _ := ctx.Value(dialKey{}).(*dialTarget)
		if dt == nil {
			return nil, nil, errors.New("monitor: request without a dial target")
		}
		d, err := dt.c.dialer(net.Dialer{Deadline: dt.deadline, Timeout: 30 * time.Second, KeepAlive: -1})
		if err != nil {
			return nil, dt, err
		}
		conn, err := d.DialContext(ctx, "tcp", dt.addr)
		return conn, dt, err
	}
	return &http.Transport{
		Proxy: nil, // never an environment proxy: the probe must reach the server itself
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			conn, _, err := dial(ctx)
			return conn, err
		},
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			conn, dt, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(conn, dt.tls)
			if err := tc.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return tc, nil
		},
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
		WriteBufferSize:        1 << 10,
		ReadBufferSize:         1 << 10, // a health answer's head is small; long lines still parse
	}
}
