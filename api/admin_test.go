package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kubal/kubal/pool"
)

const (
	aliceToken = "alice-0123456789abcdef"
	bobToken   = "bob-fedcba9876543210xx"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testAuth(t *testing.T) *Auth {
	t.Helper()
	a, err := LoadAuth(writeFile(t, "tokens", "# SREs\nalice:"+aliceToken+"\n\n bob : "+bobToken+" \n"))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// adminPool has 4 servers; fakeAdmin refuses to go below 2 pooled.
func adminFixture(t *testing.T) (*fakeState, *fakeAdmin, *bytes.Buffer, http.Handler, *AdminMetrics) {
	st := newFakeState(pool.Snapshot{Name: "text_80", Threshold: 0.5, CanDepool: true, Servers: []pool.ServerState{
		srv("cp1001", "EUP", 10), srv("cp1002", "EUP", 10), srv("cp1003", "EUP", 10), srv("cp1004", "EUP", 10)}})
	adm := &fakeAdmin{st: st, minPooled: 2}
	var logs bytes.Buffer
	m := NewAdminMetrics(prometheus.NewRegistry())
	h := NewAdmin(st, adm, testAuth(t), slog.New(slog.NewJSONHandler(&logs, nil)), WithMetrics(m))
	return st, adm, &logs, h, m
}

func do(h http.Handler, method, path, token, body string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if method == http.MethodPost || method == http.MethodPut {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestLoadAuthErrors(t *testing.T) {
	for _, tc := range []struct{ content, want string }{
		{"alice\n", ":1: want name:token"},
		{"\n:" + aliceToken, ":2: empty name"},
		{"alice:", ":1: empty token"},
		{"alice:short", ":1: token for \"alice\" is shorter than 16"},
		{"alice:" + aliceToken + "\nalice:" + bobToken, `:2: name "alice" already used on line 1`},
		{"alice:" + aliceToken + "\nbob:" + aliceToken, `:2: token of "bob" repeats the token on line 1`},
	} {
		p := writeFile(t, "tokens", tc.content)
		_, err := LoadAuth(p)
		if err == nil || !strings.Contains(err.Error(), p+tc.want) {
			t.Errorf("%q: got %v, want %q", tc.content, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), aliceToken) || strings.Contains(err.Error(), bobToken)) {
			t.Errorf("error leaks a token: %v", err)
		}
	}
	if _, err := LoadAuth("/nonexistent/tokens"); err == nil || !strings.Contains(err.Error(), "/nonexistent/tokens") {
		t.Errorf("missing file: %v", err)
	}
	if a, err := LoadAuth(""); err != nil || a.Tokens() != 0 {
		t.Errorf("empty path: %v %v", a, err)
	}
}

func TestAuthMatrix(t *testing.T) {
	for _, tc := range []struct {
		name, auth string
		code       int
		actor      string
	}{
		{"no token", "", 401, ""},
		{"not bearer", "Basic YWxpY2U6eA==", 401, ""},
		{"empty bearer", "Bearer ", 401, ""},
		{"wrong token", "Bearer wrong-token-0123456789", 403, ""},
		{"prefix of a token", "Bearer " + aliceToken[:len(aliceToken)-1], 403, ""},
		{"good token", "Bearer " + aliceToken, 200, "alice"},
		{"scheme case", "bearer " + bobToken, 200, "bob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, adm, logs, h, m := adminFixture(t)
			rec := do(h, http.MethodPost, "/pools/text_80/cp1001/depool", tc.auth, `{"reason":"T1234"}`)
			if rec.Code != tc.code {
				t.Fatalf("got %d %s, want %d", rec.Code, rec.Body, tc.code)
			}
			if strings.Contains(logs.String(), aliceToken) || strings.Contains(logs.String(), bobToken) || strings.Contains(logs.String(), "wrong-token") {
				t.Fatalf("a token was logged: %s", logs)
			}
			if tc.code != 200 {
				if adm.callCount() != 0 {
					t.Fatal("Apply called without valid credentials")
				}
				var e ErrorResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Field != "Authorization" {
					t.Fatalf("error body %s (%v)", rec.Body, err)
				}
				if tc.code == 401 && rec.Header().Get("WWW-Authenticate") == "" {
					t.Fatal("401 without WWW-Authenticate")
				}
				result := map[int]string{401: "unauthorized", 403: "forbidden"}[tc.code]
				if v := counterValue(t, m, "depool", result); v != 1 {
					t.Fatalf("kubal_admin_actions_total{result=%q} = %v", result, v)
				}
				return
			}
			var res ActionResult
			if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
				t.Fatal(err)
			}
			if res.Actor != tc.actor || res.Old.Status != "enabled/up/pooled" || res.New.Status != "disabled/up/not pooled" || res.Reason != "T1234" {
				t.Fatalf("result %+v", res)
			}
			// The audit line says who, what, old, new and why.
			for _, want := range []string{`"actor":"` + tc.actor + `"`, `"op":"depool"`, `"old":"enabled/up/pooled"`, `"new":"disabled/up/not pooled"`, `"reason":"T1234"`, `"time":`} {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("audit log lacks %s: %s", want, logs)
				}
			}
			if v := counterValue(t, m, "depool", "ok"); v != 1 {
				t.Fatalf("ok counter %v", v)
			}
		})
	}
}

// testPKI is a CA with a server and client certificate, written as PEM files.
type testPKI struct {
	dir                   string
	ca                    *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	serverCert, serverKey string
	caFile                string
	client, otherCAClient tls.Certificate
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.ca, p.caKey = mkCert(t, "test CA", nil, nil, true)
	p.caFile = writePEM(t, p.dir, "ca.pem", "CERTIFICATE", p.ca.Raw)
	srvCert, srvKey := mkCert(t, "kubal", p.ca, p.caKey, false)
	p.serverCert = writePEM(t, p.dir, "server.pem", "CERTIFICATE", srvCert.Raw)
	kb, _ := x509.MarshalECPrivateKey(srvKey)
	p.serverKey = writePEM(t, p.dir, "server-key.pem", "EC PRIVATE KEY", kb)
	cl, clKey := mkCert(t, "sre-carol", p.ca, p.caKey, false)
	p.client = tls.Certificate{Certificate: [][]byte{cl.Raw}, PrivateKey: clKey}
	otherCA, otherKey := mkCert(t, "other CA", nil, nil, true)
	ocl, oclKey := mkCert(t, "mallory", otherCA, otherKey, false)
	p.otherCAClient = tls.Certificate{Certificate: [][]byte{ocl.Raw}, PrivateKey: oclKey}
	return p
}

func mkCert(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		IsCA:        isCA, BasicConstraintsValid: true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMTLS runs the admin handler on a real TLS listener configured by TLSConfig.
func TestMTLS(t *testing.T) {
	pki := newPKI(t)
	_, adm, logs, h, _ := adminFixture(t)
	cfg, err := TLSConfig(pki.serverCert, pki.serverKey, pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(pki.ca)
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
	}
	postAs := func(c *http.Client, host, auth, ctype, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/pools/text_80/"+host+"/depool", strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(c *http.Client, host, auth string) (int, string) {
		return postAs(c, host, auth, "application/json", `{"reason":"mtls"}`)
	}
	// What a browser holding the client certificate can send cross-site without a
	// preflight: a form post, a text/plain post, a no-cors fetch without a type.
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", ""} {
		if code, b := postAs(client(pki.client), "cp1001", "", ct, ""); code != 415 {
			t.Fatalf("cross-site %q post with a client certificate: %d %s", ct, code, b)
		}
	}
	if code, b := post(client(), "cp1001", ""); code != 401 {
		t.Fatalf("TLS without cert or token: %d %s", code, b)
	}
	if code, b := post(client(pki.otherCAClient), "cp1001", ""); code == 200 {
		t.Fatalf("cert from another CA accepted: %d %s", code, b)
	}
	if code, b := post(client(pki.client), "cp1001", "Bearer wrong-token-0123456789"); code != 403 {
		t.Fatalf("valid cert but wrong token must be 403: %d %s", code, b)
	}
	if adm.callCount() != 0 {
		t.Fatal("Apply called on refused requests")
	}
	code, b := post(client(pki.client), "cp1001", "")
	if code != 200 || !strings.Contains(b, `"actor":"cert:sre-carol"`) {
		t.Fatalf("client cert: %d %s", code, b)
	}
	if !strings.Contains(logs.String(), `"actor":"cert:sre-carol"`) {
		t.Fatalf("audit lacks cert identity: %s", logs)
	}
	if code, b := post(client(), "cp1002", "Bearer "+aliceToken); code != 200 || !strings.Contains(b, `"actor":"alice"`) {
		t.Fatalf("token over TLS without cert: %d %s", code, b)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	pki := newPKI(t)
	if _, err := TLSConfig("/nope/cert.pem", pki.serverKey, ""); err == nil || !strings.Contains(err.Error(), "/nope/cert.pem") {
		t.Errorf("missing cert: %v", err)
	}
	bad := writeFile(t, "ca.pem", "not a pem")
	if _, err := TLSConfig(pki.serverCert, pki.serverKey, bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad CA: %v", err)
	}
	cfg, err := TLSConfig(pki.serverCert, pki.serverKey, "")
	if err != nil || cfg.ClientCAs != nil || cfg.ClientAuth != tls.NoClientCert {
		t.Errorf("no client CA: %+v %v", cfg, err)
	}
}

func TestAdminRequests(t *testing.T) {
	tok := "Bearer " + aliceToken
	for _, tc := range []struct {
		name, method, path, body string
		adminErr                 error
		code                     int
		field, errPart           string
		applied                  bool
	}{
		{"depool", "POST", "/pools/text_80/cp1001/depool", "", nil, 200, "", "", true},
		{"depool reason force", "POST", "/pools/text_80/cp1001/depool", `{"reason": "T1", "force": true}`, nil, 200, "", "", true},
		{"pool", "POST", "/pools/text_80/cp1001/pool", `{"reason":"back"}`, nil, 200, "", "", true},
		{"weight", "PUT", "/pools/text_80/cp1001/weight", `{"weight": 0}`, nil, 200, "", "", true},
		{"weight max", "PUT", "/pools/text_80/cp1001/weight", `{"weight": 65535}`, nil, 200, "", "", true},
		{"weight missing", "PUT", "/pools/text_80/cp1001/weight", `{}`, nil, 400, "weight", "missing", false},
		{"weight no body", "PUT", "/pools/text_80/cp1001/weight", ``, nil, 400, "weight", "missing", false},
		{"weight negative", "PUT", "/pools/text_80/cp1001/weight", `{"weight": -1}`, nil, 400, "weight", "out of range", false},
		{"weight too big", "PUT", "/pools/text_80/cp1001/weight", `{"weight": 65536}`, nil, 400, "weight", "out of range", false},
		{"weight string", "PUT", "/pools/text_80/cp1001/weight", `{"weight": "10"}`, nil, 400, "weight", "must be int", false},
		{"weight float", "PUT", "/pools/text_80/cp1001/weight", `{"weight": 1.5}`, nil, 400, "weight", "", false},
		{"weight on depool", "POST", "/pools/text_80/cp1001/depool", `{"weight": 1}`, nil, 400, "weight", "not allowed", false},
		{"force on pool", "POST", "/pools/text_80/cp1001/pool", `{"force": true}`, nil, 400, "force", "only applies", false},
		{"unknown field", "POST", "/pools/text_80/cp1001/depool", `{"reasn": "typo"}`, nil, 400, "reasn", "unknown field", false},
		{"syntax", "POST", "/pools/text_80/cp1001/depool", `{"reason": }`, nil, 400, "body", "byte", false},
		{"truncated", "POST", "/pools/text_80/cp1001/depool", `{"reason": "x"`, nil, 400, "body", "", false},
		{"trailing data", "POST", "/pools/text_80/cp1001/depool", `{"reason": "x"} {}`, nil, 400, "body", "after", false},
		{"not an object", "POST", "/pools/text_80/cp1001/depool", `[1]`, nil, 400, "body", "", false},
		{"reason too long", "POST", "/pools/text_80/cp1001/depool", `{"reason": "` + strings.Repeat("x", MaxReasonLen+1) + `"}`, nil, 400, "reason", "longer", false},
		{"reason control", "POST", "/pools/text_80/cp1001/depool", `{"reason": "a\u001b[31m"}`, nil, 400, "reason", "control", false},
		{"body too large", "POST", "/pools/text_80/cp1001/depool", `{"reason": "` + strings.Repeat("x", MaxBodyBytes) + `"}`, nil, 413, "body", "larger", false},
		{"unknown pool", "POST", "/pools/nope/cp1001/depool", "", nil, 404, "pool", "no pool", false},
		{"unknown host", "POST", "/pools/text_80/nope/depool", "", nil, 404, "host", "no host", false},
		{"wrong method depool", "GET", "/pools/text_80/cp1001/depool", "", nil, 405, "", "needs POST", false},
		{"wrong method weight", "POST", "/pools/text_80/cp1001/weight", `{"weight": 1}`, nil, 405, "", "needs PUT", false},
		{"threshold", "POST", "/pools/text_80/cp1001/depool", "", fmt.Errorf("would leave 1 of 4 pooled (threshold 0.5): %w", ErrThreshold), 409, "", "force", true},
		{"conflict", "POST", "/pools/text_80/cp1001/depool", "", fmt.Errorf("etcd key changed: %w", ErrConflict), 409, "", "etcd key changed", true},
		{"admin not found", "POST", "/pools/text_80/cp1001/depool", "", fmt.Errorf("host vanished: %w", ErrNotFound), 404, "", "vanished", true},
		{"admin failure", "POST", "/pools/text_80/cp1001/depool", "", fmt.Errorf("state file: disk full"), 500, "", "disk full", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, adm, _, h, _ := adminFixture(t)
			adm.err = tc.adminErr
			before, _ := st.Snapshot("text_80")
			rec := do(h, tc.method, tc.path, tok, tc.body)
			if rec.Code != tc.code {
				t.Fatalf("got %d %s, want %d", rec.Code, rec.Body, tc.code)
			}
			if got := adm.callCount() > 0; got != tc.applied {
				t.Fatalf("Apply called: %v, want %v", got, tc.applied)
			}
			if rec.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("content type %q", rec.Header().Get("Content-Type"))
			}
			if tc.code == 200 {
				return
			}
			var e ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("error body %q: %v", rec.Body, err)
			}
			if e.Field != tc.field || !strings.Contains(e.Error, tc.errPart) {
				t.Fatalf("error %+v, want field %q and %q", e, tc.field, tc.errPart)
			}
			after, _ := st.Snapshot("text_80")
			if fmt.Sprint(before) != fmt.Sprint(after) {
				t.Fatal("state changed on an error")
			}
		})
	}
}

func TestAdminServesReadOnly(t *testing.T) {
	_, _, _, h, _ := adminFixture(t)
	for path, want := range map[string]string{
		"/pools":                "text_80\n",
		"/pools/text_80/cp1001": "enabled/up/pooled\n",
		"/healthz":              "ok\n",
	} {
		rec := do(h, http.MethodGet, path, "", "")
		if rec.Code != 200 || rec.Body.String() != want {
			t.Errorf("%s: %d %q", path, rec.Code, rec.Body)
		}
	}
	if rec := do(h, http.MethodGet, "/v1/pools/text_80", "", ""); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"host":"cp1004"`) {
		t.Errorf("/v1: %d %s", rec.Code, rec.Body)
	}
	if rec := do(h, http.MethodDelete, "/pools", "Bearer "+aliceToken, ""); rec.Code != 405 {
		t.Errorf("DELETE /pools: %d", rec.Code)
	}
}

// TestConcurrentDepools fires many depools at once: the admin's threshold check is
// racy on its own (it pauses between check and write), so only the handler's
// serialisation keeps at least 2 of 4 servers pooled.
func TestConcurrentDepools(t *testing.T) {
	st, adm, _, h, m := adminFixture(t)
	adm.pause = time.Millisecond
	hosts := []string{"cp1001", "cp1002", "cp1003", "cp1004"}
	var wg sync.WaitGroup
	codes := make(chan int, 4*len(hosts))
	for i := 0; i < 4; i++ {
		for _, host := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes <- do(h, http.MethodPost, "/pools/text_80/"+host+"/depool", "Bearer "+bobToken, "").Code
			}()
		}
	}
	wg.Wait()
	close(codes)
	n := map[int]int{}
	for c := range codes {
		n[c]++
	}
	snap, _ := st.Snapshot("text_80")
	pooled := 0
	for _, s := range snap.Servers {
		if s.Pooled {
			pooled++
		}
	}
	if pooled != 2 {
		t.Fatalf("%d servers pooled after concurrent depools (codes %v), want 2", pooled, n)
	}
	if n[409] == 0 || n[200]+n[409] != 16 {
		t.Fatalf("codes %v", n)
	}
	if ok, refused := counterValue(t, m, "depool", "ok"), counterValue(t, m, "depool", "refused"); int(ok) != n[200] || int(refused) != n[409] {
		t.Fatalf("metrics ok=%v refused=%v, codes %v", ok, refused, n)
	}
}

// FuzzAdmin sends arbitrary methods, paths and bodies: the handler must not panic, and
// Apply is only reached by a well-formed request for a known pool and host.
func FuzzAdmin(f *testing.F) {
	f.Add("POST", "/pools/text_80/cp1001/depool", `{"reason":"x","force":true}`, true)
	f.Add("PUT", "/pools/text_80/cp1001/weight", `{"weight": 5}`, true)
	f.Add("PUT", "/pools/text_80/cp1001/weight", `{"weight": -5}`, true)
	f.Add("POST", "/pools/text_80/cp1001/pool", `{"reason":"\u0000"}`, false)
	f.Add("GET", "/pools/text_80%2Fcp1001/x", ``, false)
	f.Add("POST", "/pools/../pools/text_80/cp1001/depool", `null`, true)
	f.Fuzz(func(t *testing.T, method, path, reqBody string, withToken bool) {
		ctype := "application/json"
		if len(reqBody) > 0 && reqBody[0] == '!' { // some inputs go without the type
			ctype = ""
		}
		st := newFakeState(pool.Snapshot{Name: "text_80", Servers: []pool.ServerState{srv("cp1001", "EUP", 10), srv("cp1002", "EUP", 10)}})
		adm := &fakeAdmin{st: st}
		auth, _ := LoadAuth("")
		auth.tokens.Store(&[]token{testAuthToken()})
		h := NewAdmin(st, adm, auth, discard())
		req, err := http.NewRequest(method, "http://kubal"+path, strings.NewReader(reqBody))
		if err != nil {
			return // not a request a client could send
		}
		if withToken {
			req.Header.Set("Authorization", "Bearer "+aliceToken)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if adm.callCount() == 0 {
			return
		}
		// Apply was called: the request must have been a valid one.
		a := adm.calls[0]
		valid := withToken && ctype != "" && a.Pool == "text_80" && (a.Host == "cp1001" || a.Host == "cp1002")
		switch a.Op {
		case OpPool, OpDepool:
			valid = valid && method == http.MethodPost && a.Weight == 0
		case OpWeight:
			valid = valid && method == http.MethodPut && a.Weight >= 0 && a.Weight <= MaxWeight
		default:
			valid = false
		}
		if !valid || len(a.Reason) > MaxReasonLen || strings.ContainsAny(a.Reason, "\x00\n\r\x1b") {
			t.Fatalf("Apply reached with bad input: %s %q %q -> %+v", method, path, reqBody, a)
		}
		if rec.Code != 200 {
			t.Fatalf("applied but answered %d", rec.Code)
		}
	})
}

// Admin requests need Content-Type: application/json, with or without a body; host
// names in the path follow the server-list rules.
func TestAdminContentTypeAndHostNames(t *testing.T) {
	tok := "Bearer " + aliceToken
	for _, tc := range []struct {
		name, path, ctype, body string
		code                    int
		field                   string
	}{
		{"json", "/pools/text_80/cp1001/depool", "application/json", "", 200, ""},
		{"json with charset", "/pools/text_80/cp1001/depool", "application/json; charset=utf-8", `{}`, 200, ""},
		{"no type, empty body", "/pools/text_80/cp1001/depool", "", "", 415, "Content-Type"},
		{"no type, json body", "/pools/text_80/cp1001/depool", "", `{"reason":"x"}`, 415, "Content-Type"},
		{"form", "/pools/text_80/cp1001/depool", "application/x-www-form-urlencoded", "reason=x", 415, "Content-Type"},
		{"text", "/pools/text_80/cp1001/depool", "text/plain", `{"reason":"x"}`, 415, "Content-Type"},
		{"look-alike type", "/pools/text_80/cp1001/depool", "application/jsonp", `{}`, 415, "Content-Type"},
		{"newline in host", "/pools/text_80/cp1001%0Aforged/depool", "application/json", "", 404, "host"},
		{"escape in host", "/pools/text_80/cp%1B1001/depool", "application/json", "", 404, "host"},
		{"invalid utf-8 zone", "/pools/text_80/::ffff:127.0.0.1%25%FF/depool", "application/json", "", 404, "host"},
		{"host too long", "/pools/text_80/" + strings.Repeat("a.", 127) + "/depool", "application/json", "", 404, "host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, adm, _, h, _ := adminFixture(t)
			var rd io.Reader
			if tc.body != "" {
				rd = strings.NewReader(tc.body)
			}
			req := httptest.NewRequest(http.MethodPost, tc.path, rd)
			req.Header.Set("Authorization", tok)
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.code {
				t.Fatalf("got %d %s, want %d", rec.Code, rec.Body, tc.code)
			}
			if applied := adm.callCount() > 0; applied != (tc.code == 200) {
				t.Fatalf("applied = %v", applied)
			}
			if tc.code != 200 {
				var e ErrorResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Field != tc.field {
					t.Fatalf("error %s, want field %q", rec.Body, tc.field)
				}
				if strings.ContainsAny(e.Error, "\n\x1b") {
					t.Fatalf("raw control character echoed: %q", e.Error)
				}
			}
		})
	}
}

func testAuthToken() token {
	sum := sha256Sum(aliceToken)
	return token{name: "alice", sum: sum}
}

func sha256Sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func counterValue(t *testing.T, m *AdminMetrics, op, result string) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.actions.WithLabelValues(op, result).Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

// TestNewHTTPServerTLS serves the admin handler the way the daemon does: a loopback
// listener, NewHTTPServer and ServeTLS with TLSConfig's certificates.
func TestNewHTTPServerTLS(t *testing.T) {
	pki := newPKI(t)
	_, _, _, h, _ := adminFixture(t)
	cfg, err := TLSConfig(pki.serverCert, pki.serverKey, pki.caFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer(h, cfg, discard(), DefaultHTTPLimits())
	go srv.ServeTLS(l, "", "")
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(pki.ca)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pki.client}}}}
	resp, err := c.Post("https://"+l.Addr().String()+"/pools/text_80/cp1001/depool", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"actor":"cert:sre-carol"`) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

func TestAdminMetricsTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := NewAdminMetrics(reg), NewAdminMetrics(reg) // must not panic
	a.inc(OpPool, "ok")
	b.inc(OpPool, "ok")
	if v := counterValue(t, a, "pool", "ok"); v != 2 {
		t.Fatalf("shared counter = %v, want 2", v)
	}
}

// confirmAdmin is a fakeAdmin that can confirm held removals.
type confirmAdmin struct {
	*fakeAdmin
	held      map[string]bool
	confirmed []string
}

func (c *confirmAdmin) ConfirmRemoval(_ context.Context, pool, actor string) (bool, error) {
	if !c.held[pool] {
		return false, nil
	}
	c.held[pool] = false
	c.confirmed = append(c.confirmed, pool+" by "+actor)
	return true, nil
}

func TestConfirmRemoval(t *testing.T) {
	st, adm, _, _, _ := adminFixture(t)
	ca := &confirmAdmin{fakeAdmin: adm, held: map[string]bool{"text_80": true}}
	h := NewAdmin(st, ca, testAuth(t), discard())
	tok := "Bearer " + aliceToken
	for _, tc := range []struct {
		name, method, path, token, body string
		code                            int
	}{
		{"no token", "POST", "/pools/text_80/confirm-removal", "", "", 401},
		{"unknown pool", "POST", "/pools/nope/confirm-removal", tok, "", 404},
		{"force is not for this", "POST", "/pools/text_80/confirm-removal", tok, `{"force": true}`, 400},
		{"confirm", "POST", "/pools/text_80/confirm-removal", tok, `{"reason": "decommissioned rack"}`, 200},
		{"nothing held any more", "POST", "/pools/text_80/confirm-removal", tok, "", 409},
		{"PUT", "PUT", "/pools/text_80/confirm-removal", tok, "", 405},
		{"GET reads a host of that name", "GET", "/pools/text_80/confirm-removal", "", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(h, tc.method, tc.path, tc.token, tc.body)
			if rec.Code != tc.code {
				t.Fatalf("got %d %s, want %d", rec.Code, rec.Body, tc.code)
			}
		})
	}
	if len(ca.confirmed) != 1 || ca.confirmed[0] != "text_80 by alice" {
		t.Fatalf("confirmed %v", ca.confirmed)
	}
	// An Admin without the capability says so.
	if rec := do(NewAdmin(st, adm, testAuth(t), discard()), "POST", "/pools/text_80/confirm-removal", tok, ""); rec.Code != 501 {
		t.Fatalf("plain Admin: %d %s", rec.Code, rec.Body)
	}
}
