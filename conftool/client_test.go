package conftool

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/credentials"

	"github.com/kubal/kubal/config"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url, endpoint, prefix, err string
	}{
		{url: "etcd://conf1007.eqiad.wmnet:4001/conftool/v1/pools/eqiad/text/varnish-fe/",
			endpoint: "conf1007.eqiad.wmnet:4001", prefix: "/conftool/v1/pools/eqiad/text/varnish-fe/"},
		{url: "etcd://conf1007/conftool/v1/pools/eqiad/text/varnish-fe",
			endpoint: "conf1007:2379", prefix: "/conftool/v1/pools/eqiad/text/varnish-fe/"},
		{url: "etcd://[2001:db8::1]:4001/p/", endpoint: "[2001:db8::1]:4001", prefix: "/p/"},
		{url: "etcd://[2001:db8::1]/p/", endpoint: "[2001:db8::1]:2379", prefix: "/p/"},
		{url: "http://conf1007/p/", err: "scheme must be etcd://"},
		{url: "etcd:///p/", err: "empty host"},
		{url: "etcd://h:2379/", err: "no key path"},
		{url: "etcd://h:2379", err: "no key path"},
		{url: "etcd://h/a//b/", err: "empty path component"},
		{url: "etcd://u:p@h/a/", err: "no user"},
		{url: "etcd://h/a/?wait=true", err: "no user, query"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			ep, p, err := ParseURL(tt.url)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || ep != tt.endpoint || p != tt.prefix {
				t.Errorf("= %q, %q, %v; want %q, %q", ep, p, err, tt.endpoint, tt.prefix)
			}
		})
	}
}

func TestKeyPrefix(t *testing.T) {
	tests := []struct {
		prefix, dcs, want, err string
	}{
		{"", "eqiad/kubernetes/kubesvc", "/conftool/v1/pools/eqiad/kubernetes/kubesvc/", ""},
		{"/custom/", "codfw/c/s", "/custom/codfw/c/s/", ""},
		{"", "eqiad/kubernetes", "", "want dc/cluster/service"},
		{"", "eqiad/kubernetes/kubesvc/x", "", "want dc/cluster/service"},
		{"", "eqiad//s", "", "bad component"},
		{"", "eqiad/../s", "", "bad component"},
		{"relative", "a/b/c", "", "must start with /"},
	}
	for _, tt := range tests {
		got, err := KeyPrefix(tt.prefix, tt.dcs)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("KeyPrefix(%q, %q) err = %v, want %q", tt.prefix, tt.dcs, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("KeyPrefix(%q, %q) = %q, %v; want %q", tt.prefix, tt.dcs, got, err, tt.want)
		}
	}
}

func TestSplitEndpoint(t *testing.T) {
	tests := []struct {
		in, want string
		https    bool
		err      string
	}{
		{in: "conf1001:4001", want: "conf1001:4001"},
		{in: "conf1001", want: "conf1001:2379"},
		{in: "http://10.0.0.1:2379", want: "10.0.0.1:2379"},
		{in: "https://conf1001", want: "conf1001:2379", https: true},
		{in: "[::1]", want: "[::1]:2379"},
		{in: "::1", want: "[::1]:2379"},
		{in: "unix://sock", err: "scheme must be http or https"},
		{in: "http://h:1/path", err: "no path"},
		{in: "", err: "empty host"},
	}
	for _, tt := range tests {
		got, https, err := splitEndpoint(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("splitEndpoint(%q) err = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want || https != tt.https {
			t.Errorf("splitEndpoint(%q) = %q, %v, %v; want %q, %v", tt.in, got, https, err, tt.want, tt.https)
		}
	}
}

func TestNewClientChoices(t *testing.T) {
	tests := []struct {
		name      string
		g         config.Global
		endpoints []string
		wantTLS   bool
		wantWarn  bool
		err       string
	}{
		{name: "no endpoints", err: "no etcd endpoints"},
		{name: "loopback plain: no warning", endpoints: []string{"127.0.0.1:2379"}},
		{name: "remote plain: warning", g: config.Global{EtcdEndpoints: []string{"conf1001:2379"}}, wantWarn: true},
		{name: "https endpoint: TLS", g: config.Global{EtcdEndpoints: []string{"https://conf1001:2379"}}, wantTLS: true},
		{name: "explicit endpoints win over global", g: config.Global{EtcdEndpoints: []string{"https://x"}},
			endpoints: []string{"localhost:2379"}},
		{name: "cert without key", g: config.Global{EtcdEndpoints: []string{"h"}, EtcdCert: "/c.pem"}, err: "set together"},
		{name: "missing CA file", g: config.Global{EtcdEndpoints: []string{"h"}, EtcdCA: "/nonexistent/ca.pem"}, err: "etcd-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			cfg, err := clientConfig(tt.g, tt.endpoints, slog.New(slog.NewTextHandler(&logs, nil)))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.TLS != nil; got != tt.wantTLS {
				t.Errorf("TLS = %v, want %v", got, tt.wantTLS)
			}
			if got := strings.Contains(logs.String(), "plain text"); got != tt.wantWarn {
				t.Errorf("plain-text warning = %v, want %v; logs: %s", got, tt.wantWarn, logs.String())
			}
		})
	}
}

// fakeConn returns its reads in order: data, or an error.
type fakeConn struct {
	net.Conn
	reads []error // nil: one byte of data
}

func (c *fakeConn) Read(b []byte) (int, error) {
	r := c.reads[0]
	c.reads = c.reads[1:]
	if r != nil {
		return 0, r
	}
	b[0] = 1
	return 1, nil
}

// The TLS 1.3 refusal of a missing client certificate arrives as an alert on the
// first read, after a handshake that succeeded; gRPC then reconnects (dial and
// handshake succeed again). The reason must survive the reconnects until the server
// sends data, or a deadline error may say only "context deadline exceeded"
// (TestNewClientTLS failed so in a CI run).
func TestConnRecorderKeepsTheReasonAcrossReconnects(t *testing.T) {
	rec := &connRecorder{}
	alert := errors.New("remote error: tls: certificate required")
	refused := recordingConn{&fakeConn{reads: []error{alert}}, rec}
	if _, err := refused.Read(make([]byte, 1)); err == nil {
		t.Fatal("want the alert")
	}
	// gRPC reconnects: dial and handshake succeed, no data yet.
	conn, err := rec.dialed(&fakeConn{}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := (recordingCreds{okCreds{}, rec}).ClientHandshake(context.Background(), "etcd", conn); err != nil {
		t.Fatal(err)
	}
	explained := rec.explain(context.DeadlineExceeded)
	if !strings.Contains(explained.Error(), "certificate required") || !errors.Is(explained, context.DeadlineExceeded) {
		t.Fatalf("after the alert: %v; want the TLS reason, still a deadline error", explained)
	}
	served := recordingConn{&fakeConn{reads: []error{nil}}, rec}
	if _, err := served.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := rec.explain(context.DeadlineExceeded); err.Error() != context.DeadlineExceeded.Error() {
		t.Errorf("after the server sent data: %v; want the plain deadline (nothing stale)", err)
	}
}

// okCreds is TLS credentials whose handshake always succeeds.
type okCreds struct {
	credentials.TransportCredentials
}

func (okCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, nil, nil
}
