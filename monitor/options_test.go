package monitor

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "bad.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	cases := []struct {
		name     string
		monitors []string
		kv       []string
		want     []string // substrings of each diagnostic, in order; nil = valid
	}{
		{"pybal sample is valid", []string{"ProxyFetch", "IdleConnection", "RunCommand"}, []string{
			"proxyfetch.url", "[ 'http://www.example.com/' ]",
			"idleconnection.timeout-clean-reconnect", "3",
			"idleconnection.max-delay", "300",
			"runcommand.command", "/bin/sh",
			"runcommand.arguments", "[ '/etc/pybal/command-test', server.host, 'one', '2', 'III' ]",
			"runcommand.interval", "60", "runcommand.timeout", "10", "runcommand.log-output", "true",
		}, nil},
		{"all kubal keys valid", []string{"ProxyFetch", "DNSQuery", "UDP", "TCP"}, []string{
			"proxyfetch.url", `["https://a.example/healthz/ready"]`, "proxyfetch.port", "15021",
			"proxyfetch.tls-verify", "yes", "proxyfetch.expect-status", `"200-299"`,
			"proxyfetch.rise", "2", "proxyfetch.fall", "3", "proxyfetch.check_all", "true",
			"proxyfetch.max_failures", "1", "proxyfetch.http_status", "302",
			"dnsquery.hostnames", "['en.wikipedia.org']", "dnsquery.port", "5353", "dnsquery.fail-on-nxdomain", "on",
			"udp.icmp-timeout", "5", "udp.interval", "1", "tcp.port", "8080", "tcp.timeout", "0.5",
		}, nil},
		{"unknown monitor", []string{"Mock"}, nil, []string{`test.conf:2: monitors: unknown monitor "Mock"`}},
		{"monitor names are case-sensitive", []string{"proxyfetch"}, nil, []string{`unknown monitor "proxyfetch"`}},
		{"url required", []string{"ProxyFetch"}, nil, []string{"test.conf:2: proxyfetch.url: required"}},
		{"url not a list", []string{"ProxyFetch"}, []string{"proxyfetch.url", "[1]"}, []string{"test.conf:10: proxyfetch.url: want a list of strings"}},
		{"url bad scheme", []string{"ProxyFetch"}, []string{"proxyfetch.url", "['ftp://x/']"}, []string{"test.conf:10: proxyfetch.url: bad URL"}},
		{"bad ints and bools", []string{"ProxyFetch"}, []string{
			"proxyfetch.url", "['http://x/']", "proxyfetch.http_status", "abc",
			"proxyfetch.check_all", "maybe", "proxyfetch.max_failures", "-1",
		}, []string{"test.conf:11: proxyfetch.http_status: not an integer", "test.conf:12: proxyfetch.check_all: not a boolean", "test.conf:13: proxyfetch.max_failures: -1 out of range"}},
		{"port range", []string{"ProxyFetch"}, []string{"proxyfetch.url", "['http://x/']", "proxyfetch.port", "70000"}, []string{"test.conf:11: proxyfetch.port: 70000 out of range [1, 65535]"}},
		{"rise/fall >= 1", []string{"TCP"}, []string{"tcp.rise", "0", "tcp.fall", "-2"}, []string{"test.conf:10: tcp.rise: 0 out of range", "test.conf:11: tcp.fall: -2 out of range"}},
		{"expect-status syntax", []string{"ProxyFetch"}, []string{"proxyfetch.url", "['http://x/']", "proxyfetch.expect-status", "[200, 'abc']"}, []string{"test.conf:11: proxyfetch.expect-status: bad status"}},
		{"ca unreadable", []string{"ProxyFetch"}, []string{"proxyfetch.url", "['https://x/']", "proxyfetch.ca", filepath.Join(dir, "missing.pem")}, []string{"test.conf:11: proxyfetch.ca: cannot read CA file"}},
		{"ca not PEM", []string{"ProxyFetch"}, []string{"proxyfetch.url", "['https://x/']", "proxyfetch.ca", notPEM}, []string{"test.conf:11: proxyfetch.ca: no PEM certificate"}},
		{"interval positive", []string{"TCP"}, []string{"tcp.interval", "0"}, []string{"test.conf:10: tcp.interval: must be positive"}},
		{"runcommand needs command", []string{"RunCommand"}, nil, []string{"test.conf:2: runcommand.command: required"}},
		{"runcommand timeout 0 ok", []string{"RunCommand"}, []string{"runcommand.command", "/bin/true", "runcommand.timeout", "0"}, nil},
		{"runcommand unknown name", []string{"RunCommand"}, []string{"runcommand.command", "/bin/true", "runcommand.arguments", "[server.name]"}, []string{"test.conf:11: runcommand.arguments: unknown name server.name"}},
		{"runcommand args not a literal", []string{"RunCommand"}, []string{"runcommand.command", "/bin/true", "runcommand.arguments", "[os.system('x')"}, []string{"test.conf:11: runcommand.arguments: does not parse"}},
		{"dnsquery hostnames required", []string{"DNSQuery"}, nil, []string{"test.conf:2: dnsquery.hostnames: required"}},
		{"dnsquery empty list", []string{"DNSQuery"}, []string{"dnsquery.hostnames", "[]"}, []string{"test.conf:10: dnsquery.hostnames: must not be empty"}},
		{"idleconnection keepalive retries", []string{"IdleConnection"}, []string{"idleconnection.keepalive-retries", "x", "idleconnection.keepalive", "2"}, []string{"test.conf:11: idleconnection.keepalive: not a boolean", "test.conf:10: idleconnection.keepalive-retries: not an integer"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ds := Validate(testService("svc_80", c.monitors, c.kv...))
			if len(ds) != len(c.want) {
				t.Fatalf("got %d diagnostics, want %d:\n%v", len(ds), len(c.want), ds)
			}
			for i, w := range c.want {
				if !strings.Contains(ds[i].String(), w) {
					t.Errorf("diagnostic %d = %q, want it to contain %q", i, ds[i], w)
				}
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	svc := testService("svc_80", []string{"IdleConnection"},
		"idleconnection.max-dealy", "300", "proxyfetch.url", "['http://x/']", "idleconnection.port", "81")
	ds := Warnings(svc)
	got := map[string]string{}
	for _, d := range ds {
		got[d.Key] = d.String()
	}
	if len(ds) != 2 {
		t.Fatalf("warnings: %v", ds)
	}
	if !strings.Contains(got["idleconnection.max-dealy"], "test.conf:10: idleconnection.max-dealy: unknown IdleConnection option") {
		t.Errorf("typo warning: %q", got["idleconnection.max-dealy"])
	}
	if !strings.Contains(got["proxyfetch.url"], "test.conf:11: proxyfetch.url: ignored") {
		t.Errorf("inactive monitor warning: %q", got["proxyfetch.url"])
	}
}

func TestNamesAndOptions(t *testing.T) {
	for _, n := range Names() {
		if _, ok := parsers[n]; !ok {
			t.Errorf("%s has no parser", n)
		}
		if len(Options(n)) == 0 {
			t.Errorf("%s has no options", n)
		}
	}
	if len(Names()) != len(parsers) {
		t.Errorf("Names %v vs %d parsers", Names(), len(parsers))
	}
}

func TestParseStatusSet(t *testing.T) {
	cases := []struct {
		raw      string
		in, out  []int
		parseErr bool
	}{
		{"[200, 204]", []int{200, 204}, []int{201, 203, 500}, false},
		{`"200-299"`, []int{200, 250, 299}, []int{199, 300}, false},
		{"200", []int{200}, []int{201}, false},
		{"['200-202', 301]", []int{201, 301}, []int{302}, false},
		{"[]", nil, nil, true},
		{"[600]", nil, nil, true},
		{"'300-200'", nil, nil, true},
		{"2xx", nil, nil, true},
	}
	for _, c := range cases {
		s, err := parseStatusSet(c.raw)
		if (err != nil) != c.parseErr {
			t.Errorf("%s: err = %v", c.raw, err)
			continue
		}
		for _, code := range c.in {
			if !s.has(code) {
				t.Errorf("%s: %d not accepted", c.raw, code)
			}
		}
		for _, code := range c.out {
			if s.has(code) {
				t.Errorf("%s: %d accepted", c.raw, code)
			}
		}
	}
}

func TestHostHeader(t *testing.T) {
	cases := map[string]string{
		"http://www.example.com/":        "www.example.com",
		"http://www.example.com:80/x":    "www.example.com",
		"http://www.example.com:8080/x":  "www.example.com:8080",
		"https://www.example.com:443/":   "www.example.com",
		"https://www.example.com:8443/":  "www.example.com:8443",
		"http://[2001:db8::1]:8080/":     "[2001:db8::1]:8080",
		"https://healthcheck.example/ok": "healthcheck.example",
	}
	for raw, want := range cases {
		u, _ := url.Parse(raw)
		if got := hostHeader(u); got != want {
			t.Errorf("hostHeader(%s) = %q, want %q", raw, got, want)
		}
	}
}

// Probe keys: identical config and target share; any option, address or port
// difference does not; DNSQuery ignores the service port; RunCommand with
// server.host keys on the host.
func TestProbeKeys(t *testing.T) {
	key := func(name string, tg Target, kv ...string) string {
		v := newValidator(testService("x", []string{name}, kv...), name)
		sp := parsers[name](v, tg)
		if len(v.ds) > 0 {
			t.Fatal(v.ds)
		}
		return sp.key()
	}
	a := loopback(80)
	b := loopback(81)
	pf := []string{"proxyfetch.url", "['http://x/']"}
	if k1, k2 := key("ProxyFetch", a, pf...), key("ProxyFetch", a, pf...); k1 != k2 {
		t.Error("identical ProxyFetch keys differ")
	}
	if key("ProxyFetch", a, pf...) == key("ProxyFetch", b, pf...) {
		t.Error("different service ports share a key")
	}
	if key("ProxyFetch", a, append(pf, "proxyfetch.port", "15021")...) != key("ProxyFetch", b, append(pf, "proxyfetch.port", "15021")...) {
		t.Error("same proxyfetch.port on different service ports should share")
	}
	if key("ProxyFetch", a, pf...) == key("ProxyFetch", a, "proxyfetch.url", "['http://y/']") {
		t.Error("different URLs share a key")
	}
	if key("ProxyFetch", a, pf...) == key("ProxyFetch", a, append(pf, "proxyfetch.fall", "2")...) {
		t.Error("different fall share a key")
	}
	dns := []string{"dnsquery.hostnames", "['a.example']"}
	if key("DNSQuery", a, dns...) != key("DNSQuery", b, dns...) {
		t.Error("DNSQuery should not depend on the service port")
	}
	rc := []string{"runcommand.command", "/bin/true", "runcommand.arguments", "[server.host]"}
	h2 := a
	h2.Host = "host2"
	if key("RunCommand", a, rc...) == key("RunCommand", h2, rc...) {
		t.Error("RunCommand with server.host shares across hosts")
	}
	if key("TCP", a) == key("IdleConnection", a) {
		t.Error("different monitors share a key")
	}
}
