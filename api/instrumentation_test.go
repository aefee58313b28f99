package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/pool"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// examplePool is the pool of PyBal's examples.txt.
func examplePool() pool.Snapshot {
	return pool.Snapshot{Name: "test_pool0", Threshold: 0.5, CanDepool: true, Servers: []pool.ServerState{
		srv("mw1001", "EUP", 10), srv("mw1002", "Ehp", 10), srv("mw1003", "edp", 10),
	}}
}

func get(t *testing.T, h http.Handler, path string, accept ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	u, err := url.Parse(path)
	if err != nil { // keep undecodable paths raw, as a client could send them
		u = &url.URL{Path: path, RawPath: path}
	}
	req.URL = u
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// examples parses testdata/examples.txt (PyBal's own examples) into header -> lines.
func examples(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("testdata/examples.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "GET "):
			cur = strings.Join(strings.Fields(line), " ")
		case line == "":
			cur = ""
		case cur != "":
			out[cur] = append(out[cur], line)
		}
	}
	return out
}

// TestExamplesFixture checks kubal's output against PyBal's examples, line for line.
func TestExamplesFixture(t *testing.T) {
	ex := examples(t)
	two := newFakeState(pool.Snapshot{Name: "text_80"}, pool.Snapshot{Name: "upload_443"})
	one := newFakeState(examplePool())
	small := newFakeState(pool.Snapshot{Name: "test_pool0", Threshold: 0.9, Servers: []pool.ServerState{srv("mw1001", "EUP", 10), srv("mw1002", "EUP", 10)}})
	crit := newFakeState(pool.Snapshot{Name: "test_pool0", Threshold: 0.5, PooledDown: []string{"mw1001", "mw1002"},
		Servers: []pool.ServerState{srv("mw1001", "EdP", 10), srv("mw1002", "EdP", 10), srv("mw1003", "EUP", 10)}})
	tests := []struct {
		header string
		st     State
		path   string
		json   bool
		line   int  // which example line (alerts list alternatives); -1: all lines
		prefix bool // the example is elided with "..."
	}{
		{"GET /pools (text/plain)", two, "/pools", false, -1, false},
		{"GET /pools Accept: application/json", newFakeState(pool.Snapshot{Name: "test_pool0"}), "/pools", true, -1, false},
		{"GET /pools/<pool> (text/plain; one line per server, dict order = arbitrary)", one, "/pools/test_pool0", false, -1, false},
		{"GET /pools/<pool> Accept: application/json", one, "/pools/test_pool0", true, 0, true},
		{"GET /pools/<pool>/<host> (text/plain)", one, "/pools/test_pool0/mw1001", false, -1, false},
		{"GET /pools/<pool>/<host> Accept: application/json", one, "/pools/test_pool0/mw1001", true, -1, false},
		{"GET /alerts (text/plain)", newFakeState(examplePool()), "/alerts", false, 0, false},
		{"GET /alerts (text/plain)", small, "/alerts", false, 1, false},
		{"GET /alerts (text/plain)", crit, "/alerts", false, 2, false},
		{"GET /alerts Accept: application/json", newFakeState(examplePool()), "/alerts", true, 0, false},
		{"GET /alerts Accept: application/json", small, "/alerts", true, 1, false},
		{"GET /alerts Accept: application/json", crit, "/alerts", true, 2, false},
	}
	for _, tc := range tests {
		t.Run(tc.header, func(t *testing.T) {
			lines, ok := ex[tc.header]
			if !ok {
				t.Fatalf("no example %q in examples.txt", tc.header)
			}
			var accept []string
			if tc.json {
				accept = []string{"application/json"}
			}
			got := body(t, get(t, NewInstrumentation(tc.st, nil, discard()), tc.path, accept...))
			var want string
			switch {
			case tc.line < 0:
				want = strings.Join(lines, "\n") + "\n"
				if tc.json { // JSON bodies carry no newline
					want = strings.TrimSuffix(want, "\n")
				}
			default:
				want = lines[tc.line]
			}
			if tc.prefix {
				want = strings.TrimSuffix(want, ", ...}")
				if !strings.HasPrefix(got, want) {
					t.Fatalf("got %q, want prefix %q", got, want)
				}
				return
			}
			if got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		})
	}
}

// TestGolden pins every read-only endpoint: status, content type and exact body.
func TestGolden(t *testing.T) {
	st := newFakeState(examplePool(), pool.Snapshot{Name: "empty"})
	crit := newFakeState(
		pool.Snapshot{Name: "a", Threshold: 0.5, PooledDown: []string{"h1", "h2"}, Servers: []pool.ServerState{srv("h1", "EdP", 1), srv("h2", "EdP", 1), srv("h3", "EUP", 1)}},
		pool.Snapshot{Name: "b", Threshold: 0.9, Servers: []pool.ServerState{srv("x", "EUP", 1), srv("y", "EUP", 1)}},
		pool.Snapshot{Name: "c", Threshold: 0.5, PooledDown: []string{"z"}, Servers: []pool.ServerState{srv("z", "EdP", 1), srv("w", "EUP", 1), srv("v", "EUP", 1)}},
	)
	warn2 := newFakeState(
		pool.Snapshot{Name: "b", Threshold: 0.9, Servers: []pool.ServerState{srv("x", "EUP", 1), srv("y", "EUP", 1)}},
		pool.Snapshot{Name: "single", Threshold: 0.9, Servers: []pool.ServerState{srv("x", "EUP", 1)}}, // total > 1 rule
		pool.Snapshot{Name: "d", Threshold: 0.6, Servers: []pool.ServerState{srv("x", "EUP", 1), srv("y", "EUP", 1)}},
		pool.Snapshot{Name: "e", Threshold: 0.5, Servers: []pool.ServerState{srv("x", "EUP", 1), srv("y", "EUP", 1)}}, // 2 < 2*0.5+1 is false
	)
	kubalWarn := newFakeState(examplePool())
	kubalWarn.alerts = []Alert{{Level: LevelWarning, Msg: "Source of pool test_pool0 is down since 10:00 (connection refused)"}}
	kubalCrit := newFakeState(warn2.snaps["b"])
	kubalCrit.alerts = []Alert{{Level: LevelWarning, Msg: "ignored when critical."}, {Level: LevelCritical, Msg: "config reload failed: pybal.conf:12: bad port"}}
	weird := newFakeState(pool.Snapshot{Name: "ü \"q\"", Servers: []pool.ServerState{srv("h\té", "EUP", 3)}})

	const (
		text = "text/plain"
		js   = "application/json"
	)
	tests := []struct {
		name   string
		st     State
		path   string
		accept []string
		code   int
		ctype  string
		body   string
	}{
		{"pools text", st, "/pools", nil, 200, text, "test_pool0\nempty\n"},
		{"pools slash", st, "/pools/", nil, 200, text, "test_pool0\nempty\n"},
		{"pools json", st, "/pools", []string{js}, 200, js, `["test_pool0", "empty"]`},
		{"pools none", newFakeState(), "/pools", nil, 200, text, "\n"},
		{"pools none json", newFakeState(), "/pools", []string{js}, 200, js, `[]`},
		{"accept list is text", st, "/pools", []string{"application/json, text/plain"}, 200, text, "test_pool0\nempty\n"},
		{"second accept value", st, "/pools", []string{"text/html", js}, 200, js, `["test_pool0", "empty"]`},
		{"accept with params is text", st, "/pools", []string{"application/json; q=1"}, 200, text, "test_pool0\nempty\n"},
		{"pool text sorted", st, "/pools/test_pool0", nil, 200, text, "mw1001:\tenabled/up/pooled\nmw1002:\tenabled/partially up/not pooled\nmw1003:\tdisabled/down/not pooled\n"},
		{"pool slash", st, "/pools/test_pool0/", nil, 200, text, "mw1001:\tenabled/up/pooled\nmw1002:\tenabled/partially up/not pooled\nmw1003:\tdisabled/down/not pooled\n"},
		{"pool json", st, "/pools/test_pool0", []string{js}, 200, js, `{"mw1001": {"pooled": true, "weight": 10, "up": true, "enabled": true}, "mw1002": {"pooled": false, "weight": 10, "up": false, "enabled": true}, "mw1003": {"pooled": false, "weight": 10, "up": false, "enabled": false}}`},
		{"pool verbose query ignored", st, "/pools/test_pool0?verbose=1", nil, 200, text, "mw1001:\tenabled/up/pooled\nmw1002:\tenabled/partially up/not pooled\nmw1003:\tdisabled/down/not pooled\n"},
		{"empty pool text", st, "/pools/empty", nil, 200, text, ""},
		{"empty pool json", st, "/pools/empty", []string{js}, 200, js, `{}`},
		{"server text", st, "/pools/test_pool0/mw1002", nil, 200, text, "enabled/partially up/not pooled\n"},
		{"server slash", st, "/pools/test_pool0/mw1002/", nil, 200, text, "enabled/partially up/not pooled\n"},
		{"server json", st, "/pools/test_pool0/mw1003", []string{js}, 200, js, `{"pooled": false, "weight": 10, "up": false, "enabled": false}`},
		{"escaped names", weird, "/pools/%C3%BC%20%22q%22", []string{js}, 200, js, `{"h\t\u00e9": {"pooled": true, "weight": 3, "up": true, "enabled": true}}`},
		{"escaped pools json", weird, "/pools", []string{js}, 200, js, `["\u00fc \"q\""]`},
		{"alerts ok", st, "/alerts", nil, 200, text, "OK - All pools are healthy"},
		{"alerts slash", st, "/alerts/", nil, 200, text, "OK - All pools are healthy"},
		{"alerts critical wins, pools joined", crit, "/alerts", nil, 200, text, "CRITICAL - a: Servers h1, h2 are marked down but pooled; c: Servers z are marked down but pooled"},
		{"alerts critical json", crit, "/alerts", []string{js}, 200, js, `{"status": "critical", "msg": "a: Servers h1, h2 are marked down but pooled; c: Servers z are marked down but pooled"}`},
		{"alerts warnings concatenate", warn2, "/alerts", nil, 200, text, "WARNING - Pool b is too small to allow depooling. Pool d is too small to allow depooling. "},
		{"kubal warning merged", kubalWarn, "/alerts", nil, 200, text, "WARNING - Source of pool test_pool0 is down since 10:00 (connection refused). "},
		{"kubal critical replaces warnings", kubalCrit, "/alerts", []string{js}, 200, js, `{"status": "critical", "msg": "config reload failed: pybal.conf:12: bad port"}`},
		{"404 root", st, "/", nil, 404, text, "The desired url was not found"},
		{"404 root json", st, "/", []string{js}, 404, js, `{"error": "The desired url was not found"}`},
		{"404 unknown pool", st, "/pools/nope", nil, 404, text, "The desired url was not found"},
		{"404 unknown host", st, "/pools/test_pool0/nope", []string{js}, 404, js, `{"error": "The desired url was not found"}`},
		{"404 too deep", st, "/pools/test_pool0/mw1001/x/y", nil, 404, text, "The desired url was not found"},
		{"404 double slash", st, "/pools//", nil, 404, text, "The desired url was not found"},
		{"404 metrics without gatherer", st, "/metrics", nil, 404, text, "The desired url was not found"},
		{"404 bad escape", st, "/pools/%zz", nil, 404, text, "The desired url was not found"},
		{"healthz", st, "/healthz", nil, 200, text, "ok\n"},
		{"readyz", st, "/readyz", nil, 200, text, "ready\n"},
		{"v1 server", st, "/v1/pools/test_pool0/mw1002", nil, 200, js, `{"host":"mw1002","addr":"192.0.2.1","weight":10,"enabled":true,"ready":true,"up":false,"pooled":false,"status":"enabled/partially up/not pooled","why":"ProxyFetch: 503 Service Unavailable","monitors":{"IdleConnection":{"up":true},"ProxyFetch":{"up":false,"reason":"503 Service Unavailable"}}}` + "\n"},
		{"v1 pool", newFakeState(pool.Snapshot{Name: "p", Threshold: 0.5, CanDepool: true, CouldNotDepool: 2, Servers: []pool.ServerState{srv("a", "EUP", 5)}}), "/v1/pools/p", nil, 200, js, `{"name":"p","depool_threshold":0.5,"can_depool":true,"could_not_depool":2,"pooled_down":[],"servers":[{"host":"a","addr":"192.0.2.1","weight":5,"enabled":true,"ready":true,"up":true,"pooled":true,"status":"enabled/up/pooled","monitors":{"IdleConnection":{"up":true},"ProxyFetch":{"up":true}}}]}` + "\n"},
		{"v1 pools", newFakeState(pool.Snapshot{Name: "p"}), "/v1/pools", nil, 200, js, `{"pools":[{"name":"p","depool_threshold":0,"can_depool":false,"could_not_depool":0,"pooled_down":[],"servers":[]}]}` + "\n"},
		{"v1 alerts", kubalWarn, "/v1/alerts", nil, 200, js, `{"status":"warning","msg":"Source of pool test_pool0 is down since 10:00 (connection refused). ","alerts":[{"level":"warning","msg":"Source of pool test_pool0 is down since 10:00 (connection refused)"}]}` + "\n"},
		{"v1 unknown pool", st, "/v1/pools/nope", []string{js}, 404, js, `{"error": "The desired url was not found"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := get(t, NewInstrumentation(tc.st, nil, discard()), tc.path, tc.accept...)
			got := body(t, resp)
			if resp.StatusCode != tc.code || resp.Header.Get("Content-Type") != tc.ctype || got != tc.body {
				t.Fatalf("got %d %q %q\nwant %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), got, tc.code, tc.ctype, tc.body)
			}
		})
	}
}

func TestReadyzAndMethods(t *testing.T) {
	st := newFakeState(examplePool())
	st.ready = errors.New("source conftool not synced")
	h := NewInstrumentation(st, nil, discard())
	resp := get(t, h, "/readyz")
	if b := body(t, resp); resp.StatusCode != 503 || b != "not ready: source conftool not synced\n" {
		t.Fatalf("readyz: %d %q", resp.StatusCode, b)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(m, "/pools/test_pool0/mw1001/depool", nil))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s on the read-only listener: %d, want 405", m, rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/pools", nil))
	if rec.Code != 200 {
		t.Fatalf("HEAD: %d", rec.Code)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	st := newFakeState(examplePool(), pool.Snapshot{Name: "p2", Threshold: 0.75, CouldNotDepool: 7, PooledDown: []string{"b"},
		Servers: []pool.ServerState{srv("a", "EUP", 1), srv("b", "EdP", 1)}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewServiceCollector(st))
	NewAdminMetrics(reg)
	got := body(t, get(t, NewInstrumentation(st, reg, discard()), "/metrics"))
	for _, want := range []string{
		`pybal_service_servers{service="test_pool0"} 3`,
		`pybal_service_servers_enabled{service="test_pool0"} 2`,
		`pybal_service_servers_up{service="test_pool0"} 1`,
		`pybal_service_servers_pooled{service="test_pool0"} 1`,
		`pybal_service_can_depool{service="test_pool0"} 1`,
		`pybal_service_pooled_down_servers{service="test_pool0"} 0`,
		`pybal_service_depool_threshold{service="test_pool0"} 0.5`,
		`pybal_service_could_not_depool_total{service="test_pool0"} 0`,
		`pybal_service_servers_pooled{service="p2"} 2`,
		`pybal_service_can_depool{service="p2"} 0`,
		`pybal_service_pooled_down_servers{service="p2"} 1`,
		`pybal_service_depool_threshold{service="p2"} 0.75`,
		`pybal_service_could_not_depool_total{service="p2"} 7`,
		"# TYPE pybal_service_could_not_depool_total counter",
		"# TYPE pybal_service_servers gauge",
		`kubal_admin_actions_total{op="depool",result="refused"} 0`,
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(got)
	}
}

// TestPyString compares with outputs of Python's json.dumps (ensure_ascii=True).
func TestPyString(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                  `"plain"`,
		"a\x7fb\u00e9\U0001F600": `"a\u007fb\u00e9\ud83d\ude00"`,
		"<&>\x01\"\\/":           `"<&>\u0001\"\\/"`,
		"\b\f\n\r\t":             `"\b\f\n\r\t"`,
		"\u2028":                 `"\u2028"`,
	} {
		if got := string(appendPyString(nil, in)); got != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
	}
}

func FuzzPyString(f *testing.F) {
	f.Add("mw1001.eqiad.wmnet")
	f.Add("\x00\u00e9\U0001F600\"\\")
	f.Fuzz(func(t *testing.T, s string) {
		b := appendPyString(nil, s)
		for _, c := range b {
			if c < 0x20 || c > 0x7e {
				t.Fatalf("non-printable-ASCII byte %#x in %q", c, b)
			}
		}
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%q does not parse: %v", b, err)
		}
		// Each invalid UTF-8 byte becomes U+FFFD, as []rune conversion does.
		if want := string([]rune(s)); back != want {
			t.Fatalf("round trip: %q -> %s -> %q", s, b, back)
		}
	})
}

func TestRenderCache(t *testing.T) {
	st := newFakeState(examplePool())
	h := NewInstrumentation(st, nil, discard())
	const first = "mw1001:\tenabled/up/pooled\nmw1002:\tenabled/partially up/not pooled\nmw1003:\tdisabled/down/not pooled\n"
	for i := 0; i < 2; i++ {
		if got := body(t, get(t, h, "/pools/test_pool0")); got != first {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	// White box: an in-place change (which State forbids) is not seen, proving that
	// the second request was served from the cache.
	snap, _ := st.Snapshot("test_pool0")
	snap.Servers[0].Pooled = false
	if got := body(t, get(t, h, "/pools/test_pool0")); got != first {
		t.Fatalf("not cached: %q", got)
	}
	// A newly published snapshot is rendered again, in both formats.
	next := examplePool()
	next.Servers[0] = srv("mw1001", "Edp", 7)
	st.set(next)
	if got := body(t, get(t, h, "/pools/test_pool0")); !strings.HasPrefix(got, "mw1001:\tenabled/down/not pooled\n") {
		t.Fatalf("stale text after a new snapshot: %q", got)
	}
	if got := body(t, get(t, h, "/pools/test_pool0", "application/json")); !strings.HasPrefix(got, `{"mw1001": {"pooled": false, "weight": 7, "up": false, "enabled": true}, `) {
		t.Fatalf("stale JSON after a new snapshot: %q", got)
	}
	// Same length, new array: still a miss.
	again := examplePool()
	st.set(again)
	if got := body(t, get(t, h, "/pools/test_pool0")); got != first {
		t.Fatalf("same-length snapshot: %q", got)
	}
	// A pool that disappears (config reload) is a 404 and leaves the cache.
	st.mu.Lock()
	delete(st.snaps, "test_pool0")
	st.mu.Unlock()
	if resp := get(t, h, "/pools/test_pool0"); resp.StatusCode != 404 {
		t.Fatalf("removed pool: %d", resp.StatusCode)
	}
}

func TestFindServer(t *testing.T) {
	sorted := pool.Snapshot{Servers: []pool.ServerState{srv("a", "EUP", 1), srv("b", "EUP", 2), srv("c", "EUP", 3)}}
	unsorted := pool.Snapshot{Servers: []pool.ServerState{srv("c", "EUP", 3), srv("a", "EUP", 1), srv("b", "EUP", 2)}}
	for _, tc := range []struct {
		snap pool.Snapshot
		host string
		w    int
		ok   bool
	}{
		{sorted, "a", 1, true}, {sorted, "c", 3, true}, {sorted, "bb", 0, false}, {sorted, "", 0, false},
		{unsorted, "c", 3, true}, {unsorted, "a", 1, true}, {unsorted, "b", 2, true}, {unsorted, "d", 0, false},
		{pool.Snapshot{}, "a", 0, false},
	} {
		s, ok := findServer(&tc.snap, tc.host)
		if ok != tc.ok || s.Weight != tc.w {
			t.Errorf("%s: %v %v", tc.host, s.Weight, ok)
		}
	}
}

// FuzzReadPaths: any request path on either listener's read side answers 200, 404 or
// 405 without panicking, and a text answer carries no control character but newline
// and tab (a path must not forge lines in a body, nor reach a handler twice decoded).
func FuzzReadPaths(f *testing.F) {
	for _, p := range []string{"/pools", "/pools/test_pool0/mw1001", "/pools/test_pool0%2Fmw1001", "/v1/pools/test_pool0/mw1001/",
		"/alerts", "/v1/alerts", "/pools/%0d%1b", "/pools/test_pool0/%FF", "//pools", "/pools/../alerts", "/metrics", "/readyz"} {
		f.Add(p, false)
		f.Add(p, true)
	}
	st := newFakeState(examplePool())
	handlers := []http.Handler{NewInstrumentation(st, nil, discard()), NewAdmin(st, &fakeAdmin{st: st}, &Auth{}, discard())}
	f.Fuzz(func(t *testing.T, path string, asJSON bool) {
		req, err := http.NewRequest(http.MethodGet, "http://kubal"+path, nil)
		if err != nil || req.URL.Path == "" {
			return
		}
		if asJSON {
			req.Header.Set("Accept", "application/json")
		}
		for _, h := range handlers {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			switch rec.Code {
			case 200, 404, 405, 503:
			default:
				t.Fatalf("%q: status %d", path, rec.Code)
			}
			if strings.IndexFunc(rec.Body.String(), func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' }) >= 0 {
				t.Fatalf("%q: control character in the body %q", path, rec.Body)
			}
		}
	})
}
