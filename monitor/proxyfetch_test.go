package monitor

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// httpBackend is a real HTTP server on loopback whose answer can be flipped.
type httpBackend struct {
	status  atomic.Int64
	delay   atomic.Int64 // nanoseconds before answering
	partial atomic.Bool  // announce a longer body than sent
	hits    atomic.Int64

	mu       sync.Mutex
	last     *http.Request
	paths    map[string]int
	sni      string
	perPath  map[string]int // status by path, overrides status
	port     uint16
	listener net.Listener
}

func newHTTPBackend(t *testing.T, tlsConf *tls.Config) *httpBackend {
	t.Helper()
	b := &httpBackend{paths: map[string]int{}, perPath: map[string]int{}}
	b.status.Store(200)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.port = uint16(ln.Addr().(*net.TCPAddr).Port)
	if tlsConf != nil {
		base := tlsConf
		tlsConf = &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			b.mu.Lock()
			b.sni = h.ServerName
			b.mu.Unlock()
			return base, nil
		}}
		ln = tls.NewListener(ln, tlsConf)
	}
	b.listener = ln
	srv := &http.Server{Handler: http.HandlerFunc(b.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *httpBackend) serve(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	b.mu.Lock()
	b.last = r
	b.paths[r.URL.Path]++
	st, ok := b.perPath[r.URL.Path]
	b.mu.Unlock()
	if !ok {
		st = int(b.status.Load())
	}
	if d := time.Duration(b.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	if st >= 300 && st < 400 {
		w.Header().Set("Location", "http://elsewhere.example/")
	}
	if b.partial.Load() {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(st)
		w.Write([]byte("short"))
		return // the server closes: 95 bytes missing
	}
	w.WriteHeader(st)
	fmt.Fprintf(w, "status %d\n", st)
}

func (b *httpBackend) lastRequest() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

func pfCheck(t *testing.T, m *Manager, port uint16, kv ...string) Checker {
	t.Helper()
	return checkerFor(t, m, testService("svc", []string{"ProxyFetch"}, kv...), "ProxyFetch", loopback(port), nil)
}

func TestProxyFetchRequestAndStatus(t *testing.T) {
	m, reg := newTestManager(t)
	b := newHTTPBackend(t, nil)
	// The URL names another host and port: PyBal connects to the server's address
	// and service port regardless, and sends the URL host as Host.
	ck := pfCheck(t, m, b.port, "proxyfetch.url", "['http://www.example.com:8080/health?full=1']")
	cases := []struct {
		status int
		up     bool
		reason string
	}{
		{200, true, ""},
		{201, true, ""},
		{202, true, ""},
		{204, false, "204 No Content"},
		{503, false, "503 Service Unavailable"},
		{301, false, "301 Moved Permanently to http://elsewhere.example/"},
		{404, false, "404 Not Found"},
	}
	for _, c := range cases {
		b.status.Store(int64(c.status))
		r := ck.Check(ctxTimeout(t, 5*time.Second))
		if r.Up != c.up || r.Reason != c.reason {
			t.Errorf("status %d: got %+v, want up=%v reason=%q", c.status, r, c.up, c.reason)
		}
	}
	req := b.lastRequest()
	if req.Host != "www.example.com:8080" || req.URL.RequestURI() != "/health?full=1" || req.Method != "GET" {
		t.Errorf("request: host %q uri %q method %s", req.Host, req.URL.RequestURI(), req.Method)
	}
	if ua := req.Header.Get("User-Agent"); ua != "kubal" {
		t.Errorf("User-Agent %q", ua)
	}
	if req.Header.Get("Accept-Encoding") != "" {
		t.Errorf("unexpected Accept-Encoding %q", req.Header.Get("Accept-Encoding"))
	}
	// Keep-alive is off: every check is its own connection.
	if !req.Close {
		t.Error("request did not ask to close the connection")
	}
	n := seriesCount(t, reg, "pybal_monitor_proxyfetch_request_duration_seconds")
	if n != 2 { // successful and failed series for the one URL
		t.Errorf("%d duration series, want 2", n)
	}
	if v, ok := metricValue(t, reg, "pybal_monitor_proxyfetch_request_duration_seconds", map[string]string{"service": "svc", "host": "host1", "monitor": "ProxyFetch", "result": "failed", "url": "http://www.example.com:8080/health?full=1"}); !ok || v <= 0 || v > 1 {
		t.Errorf("failed duration %v", v)
	}
}

func TestProxyFetchModes(t *testing.T) {
	m, _ := newTestManager(t)
	b := newHTTPBackend(t, nil)
	url := []string{"proxyfetch.url", "['http://x/']"}
	cases := []struct {
		name   string
		kv     []string
		status int
		up     bool
	}{
		{"redirect mode 302 ok", []string{"proxyfetch.http_status", "302"}, 302, true},
		{"redirect mode 301 ok", []string{"proxyfetch.http_status", "302"}, 301, true},
		{"redirect mode 303 ok", []string{"proxyfetch.http_status", "301"}, 303, true},
		{"redirect mode 200 fails", []string{"proxyfetch.http_status", "302"}, 200, false},
		{"redirect mode 304 fails", []string{"proxyfetch.http_status", "302"}, 304, false},
		{"http_status 404 still needs 2xx (quirk 2)", []string{"proxyfetch.http_status", "404"}, 404, false},
		{"http_status 404 with 200", []string{"proxyfetch.http_status", "404"}, 200, true},
		{"expect-status list 204", []string{"proxyfetch.expect-status", "[200, 204]"}, 204, true},
		{"expect-status list 201", []string{"proxyfetch.expect-status", "[200, 204]"}, 201, false},
		{"expect-status range 299", []string{"proxyfetch.expect-status", `"200-299"`}, 299, true},
		{"expect-status range 300", []string{"proxyfetch.expect-status", `"200-299"`}, 300, false},
		{"expect-status 503 ok (maintenance page)", []string{"proxyfetch.expect-status", "503"}, 503, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ck := pfCheck(t, m, b.port, append(url, c.kv...)...)
			b.status.Store(int64(c.status))
			if r := ck.Check(ctxTimeout(t, 5*time.Second)); r.Up != c.up {
				t.Fatalf("status %d: %+v, want up=%v", c.status, r, c.up)
			}
		})
	}
}

func TestProxyFetchTimeoutMessage(t *testing.T) {
	m, _ := newTestManager(t)
	b := newHTTPBackend(t, nil)
	b.delay.Store(int64(time.Second))
	svc := testService("svc", []string{"ProxyFetch"}, "proxyfetch.url", "['http://x.example/slow']", "proxyfetch.timeout", "0.2")
	v := newValidator(svc, "ProxyFetch")
	l := parsers["ProxyFetch"](v, loopback(b.port)).newRunner(testEnv(m, nil)).(*loop)
	start := time.Now()
	r := l.check.Check(ctxTimeout(t, l.timeout))
	if want := "Getting http://x.example/slow took longer than 0.2 seconds."; r.Up || r.Reason != want {
		t.Fatalf("got %+v, want %q", r, want)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Fatalf("timeout took %v", el)
	}
}

func TestProxyFetchPartialBodyFails(t *testing.T) {
	m, _ := newTestManager(t)
	b := newHTTPBackend(t, nil)
	b.partial.Store(true)
	r := pfCheck(t, m, b.port, "proxyfetch.url", "['http://x/']").Check(ctxTimeout(t, 5*time.Second))
	if r.Up || !strings.Contains(r.Reason, "partial download") {
		t.Fatalf("got %+v", r)
	}
}

func TestProxyFetchConnectionRefused(t *testing.T) {
	m, _ := newTestManager(t)
	r := pfCheck(t, m, closedTCPPort(t), "proxyfetch.url", "['http://x/']").Check(ctxTimeout(t, 5*time.Second))
	if r.Up || !strings.Contains(r.Reason, "connection refused") {
		t.Fatalf("got %+v", r)
	}
}

func TestProxyFetchRandomURLAndCheckAll(t *testing.T) {
	m, _ := newTestManager(t)
	b := newHTTPBackend(t, nil)
	b.mu.Lock()
	b.perPath["/bad1"] = 503
	b.perPath["/bad2"] = 500
	b.mu.Unlock()
	urls := "['http://x/a', 'http://x/b']"
	ck := pfCheck(t, m, b.port, "proxyfetch.url", urls)
	for range 40 {
		if r := ck.Check(ctxTimeout(t, 5*time.Second)); !r.Up {
			t.Fatal(r)
		}
	}
	b.mu.Lock()
	a, bb := b.paths["/a"], b.paths["/b"]
	b.mu.Unlock()
	if a+bb != 40 || a == 0 || bb == 0 {
		t.Fatalf("one random URL per check expected: /a %d, /b %d", a, bb)
	}

	three := "['http://x/a', 'http://x/bad1', 'http://x/bad2']"
	cases := []struct {
		maxFailures string
		up          bool
	}{{"0", false}, {"1", false}, {"2", true}}
	for _, c := range cases {
		before := b.hits.Load()
		r := pfCheck(t, m, b.port, "proxyfetch.url", three, "proxyfetch.check_all", "true",
			"proxyfetch.max_failures", c.maxFailures).Check(ctxTimeout(t, 5*time.Second))
		if hits := b.hits.Load() - before; hits != 3 {
			t.Errorf("check_all fetched %d URLs, want 3", hits)
		}
		if r.Up != c.up {
			t.Errorf("max_failures %s: %+v", c.maxFailures, r)
		}
		if !r.Up && r.Reason != "503 Service Unavailable\n500 Internal Server Error" {
			t.Errorf("reason %q", r.Reason)
		}
	}
	// max_failures is only honoured with check_all (PyBal).
	r := pfCheck(t, m, b.port, "proxyfetch.url", "['http://x/bad1']", "proxyfetch.max_failures", "5").Check(ctxTimeout(t, 5*time.Second))
	if r.Up {
		t.Error("max_failures without check_all made a failure up")
	}
}

// proxyfetch.port: traffic on the service (Node)port, health on another port.
func TestProxyFetchAlternatePort(t *testing.T) {
	m, _ := newTestManager(t)
	health := newHTTPBackend(t, nil)
	svcPort := closedTCPPort(t)
	ck := checkerFor(t, m, testService("svc", []string{"ProxyFetch"}, "proxyfetch.url", "['http://ingress/healthz/ready']",
		"proxyfetch.port", strconv.Itoa(int(health.port))), "ProxyFetch", loopback(svcPort), nil)
	if r := ck.Check(ctxTimeout(t, 5*time.Second)); !r.Up {
		t.Fatalf("health port not probed: %+v", r)
	}
	if p := health.lastRequest().URL.Path; p != "/healthz/ready" {
		t.Fatalf("path %q", p)
	}
}

func TestProxyFetchTLS(t *testing.T) {
	m, _ := newTestManager(t)
	ca := newTestCA(t)
	b := newHTTPBackend(t, &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "health.example.org")}})
	other := newTestCA(t)
	cases := []struct {
		name   string
		url    string
		kv     []string
		up     bool
		reason string
	}{
		{"no verification by default (PyBal)", "https://health.example.org/ok", nil, true, ""},
		{"verify without CA fails", "https://health.example.org/ok", []string{"proxyfetch.tls-verify", "true"}, false, "certificate signed by unknown authority"},
		{"verify with CA", "https://health.example.org/ok", []string{"proxyfetch.tls-verify", "true", "proxyfetch.ca", ca.file}, true, ""},
		{"verify with wrong CA", "https://health.example.org/ok", []string{"proxyfetch.tls-verify", "true", "proxyfetch.ca", other.file}, false, "unknown authority"},
		{"verify name mismatch", "https://other.example.org/ok", []string{"proxyfetch.tls-verify", "true", "proxyfetch.ca", ca.file}, false, "other.example.org"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := pfCheck(t, m, b.port, append([]string{"proxyfetch.url", "['" + c.url + "']"}, c.kv...)...).Check(ctxTimeout(t, 5*time.Second))
			if r.Up != c.up || !strings.Contains(r.Reason, c.reason) {
				t.Fatalf("got %+v, want up=%v reason ~%q", r, c.up, c.reason)
			}
			b.mu.Lock()
			sni := b.sni
			b.mu.Unlock()
			if want := strings.Split(strings.TrimPrefix(c.url, "https://"), "/")[0]; sni != want {
				t.Fatalf("SNI %q, want %q", sni, want)
			}
		})
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubal test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return &testCA{cert: cert, key: key, file: file}
}

func (ca *testCA) leaf(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// closedTCPPort returns a loopback port with nothing listening.
func closedTCPPort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	return p
}
