package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func expected(t *testing.T, name string) Set {
	t.Helper()
	var raw map[string]struct {
		Enabled bool `json:"enabled"`
		Weight  int  `json:"weight"`
	}
	if err := json.Unmarshal(mustRead(t, name), &raw); err != nil {
		t.Fatal(err)
	}
	out := Set{}
	for h, v := range raw {
		out[h] = Server{Host: h, Enabled: v.Enabled, Weight: v.Weight}
	}
	return out
}

func TestParseListFixtures(t *testing.T) {
	tests := []struct {
		file    string
		json    bool
		want    Set
		badRows []int
	}{
		{"servers-legacy.txt", false, nil, nil}, // want filled from .expected.json
		// Every line rejected: a failed read (ErrNoServers), not an empty pool.
		{"servers-legacy-invalid.txt", false, nil, []int{1}},
		{"servers.json", true, nil, nil},
		{"servers-docstring-example.json", true, Set{
			"pybal-test2002.codfw.wmnet": {Host: "pybal-test2002.codfw.wmnet", Enabled: false, Weight: 10},
			"pybal-test2003.codfw.wmnet": {Host: "pybal-test2003.codfw.wmnet", Enabled: true, Weight: 5},
		}, nil},
		{"servers-docstring-example.legacy", false, Set{
			"pybal-test2002.codfw.wmnet": {Host: "pybal-test2002.codfw.wmnet", Enabled: true, Weight: 10},
			"pybal-test2003.codfw.wmnet": {Host: "pybal-test2003.codfw.wmnet", Enabled: true, Weight: 10},
		}, nil},
		// PyBal rejects lines 3-5 (no weight/enabled): SPEC §14 #14, kept compatible.
		{"text-servers.debian-sample", false, Set{
			"server1.example.com": {Host: "server1.example.com", Enabled: true, Weight: 20},
			"server2.example.com": {Host: "server2.example.com", Enabled: false, Weight: 15},
		}, []int{3, 4, 5}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			want := tc.want
			if want == nil && tc.badRows == nil {
				want = expected(t, "servers-legacy.expected.json")
			}
			got, bad, err := ParseList(mustRead(t, tc.file), tc.json)
			switch {
			case want == nil && !errors.Is(err, ErrNoServers):
				t.Fatalf("err = %v, want ErrNoServers", err)
			case want != nil && err != nil:
				t.Fatal(err)
			}
			if !equalSets(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
			var rows []int
			for _, b := range bad {
				rows = append(rows, b.Line)
			}
			if len(rows) != len(tc.badRows) {
				t.Fatalf("bad lines %v, want %v", rows, tc.badRows)
			}
			for i := range rows {
				if rows[i] != tc.badRows[i] {
					t.Errorf("bad lines %v, want %v", rows, tc.badRows)
				}
			}
		})
	}
}

func TestParseTypeFilter(t *testing.T) {
	tests := []struct {
		name string
		in   string
		json bool
		want Server
	}{
		{"legacy string weight ignored", `{'host': 'a', 'weight': '5', 'enabled': False}`, false, Server{Host: "a", Weight: 10, Enabled: false}},
		{"legacy string enabled ignored", `{'host': 'a', 'weight': 5, 'enabled': 'no'}`, false, Server{Host: "a", Weight: 5, Enabled: true}},
		{"legacy weight 0", `{"host": "a", "weight": 0, "enabled": True}`, false, Server{Host: "a", Weight: 0, Enabled: true}},
		{"json defaults", `{"a": {}}`, true, Server{Host: "a", Weight: 10, Enabled: true}},
		{"json float weight ignored", `{"a": {"weight": 2.5, "enabled": false}}`, true, Server{Host: "a", Weight: 10, Enabled: false}},
		{"json string enabled ignored", `{"a": {"weight": 3, "enabled": "yes"}}`, true, Server{Host: "a", Weight: 3, Enabled: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, bad, err := ParseList([]byte(tc.in), tc.json)
			if err != nil || len(bad) > 0 {
				t.Fatalf("err %v bad %v", err, bad)
			}
			if got["a"] != tc.want {
				t.Errorf("got %+v, want %+v", got["a"], tc.want)
			}
		})
	}
}

func TestParseLegacyRejects(t *testing.T) {
	for _, line := range []string{
		`{'host': 'a', 'weight': 1}`,
		`{'host': 'a', 'weight': 1, 'enabled': True`,
		`{'host': __import__('os'), 'weight': 1, 'enabled': True}`,
		`['host', 'a']`,
		`{'host': '', 'weight': 1, 'enabled': True}`,
	} {
		got, bad, err := ParseList([]byte(line+"\n"+`{'host': 'ok', 'weight': 1, 'enabled': True}`), false)
		if _, ok := got["ok"]; err != nil || len(got) != 1 || !ok || len(bad) != 1 || bad[0].Line != 1 {
			t.Errorf("%s: got %v bad %v err %v", line, got, bad, err)
		}
	}
	if _, _, err := ParseList([]byte(`[1,2]`), true); err == nil {
		t.Error("JSON array accepted")
	}
}

// recorder collects source events.
type recorder struct {
	mu      sync.Mutex
	updates []Set
	fails   []error
	ch      chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 100)} }

func (r *recorder) Update(s Set) {
	r.mu.Lock()
	r.updates = append(r.updates, s)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *recorder) Failed(err error) {
	r.mu.Lock()
	r.fails = append(r.fails, err)
	r.mu.Unlock()
	r.ch <- struct{}{}
}

func (r *recorder) waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.After(d)
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("condition not met within %v (updates %v, fails %v)", d, r.updates, r.fails)
		}
	}
}

func TestFileSourcePicksUpChangesWithinOneSecond(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pool.json")
	write := func(s string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"a": {"weight": 1, "enabled": true}}`)
	src, err := New("file://"+path, quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRecorder()
	go src.Run(ctx, r)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 1 })

	start := time.Now()
	write(`{"a": {"weight": 2, "enabled": true}, "b": {}}`)
	r.waitFor(t, time.Second, func() bool { return len(r.updates) == 2 })
	if d := time.Since(start); d > time.Second {
		t.Errorf("change seen after %v", d)
	}
	if got := r.updates[1]["a"].Weight; got != 2 {
		t.Errorf("weight %d", got)
	}

	// Unreadable: last good list stays (no Update), Failed reported.
	write(`{not json`)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.fails) == 1 && r.fails[0] != nil })
	os.Remove(path)
	time.Sleep(2 * PollInterval)
	r.mu.Lock()
	if len(r.updates) != 2 {
		t.Errorf("a failing file delivered an update: %v", r.updates)
	}
	r.mu.Unlock()

	// Recovery.
	write(`{"c": {}}`)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 3 && r.fails[len(r.fails)-1] == nil })
	if _, ok := r.updates[2]["c"]; !ok {
		t.Errorf("recovered list %v", r.updates[2])
	}
}

func TestHTTPSourceKeepsLastGoodList(t *testing.T) {
	var fail atomic.Bool
	var body atomic.Value
	body.Store(`{'host': 'mw1', 'weight': 10, 'enabled': True}` + "\n")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, body.Load().(string))
	}))
	defer srv.Close()
	src := &HTTP{URL: srv.URL + "/pybal/eqiad/text", Log: quiet(), Interval: 50 * time.Millisecond, Client: srv.Client()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRecorder()
	go src.Run(ctx, r)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 1 })
	fail.Store(true)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.fails) > 0 })
	fail.Store(false)
	body.Store(`{'host': 'mw2', 'weight': 10, 'enabled': True}` + "\n")
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 2 })
	if _, ok := r.updates[1]["mw2"]; !ok {
		t.Errorf("got %v", r.updates[1])
	}
	if r.fails[len(r.fails)-1] != nil {
		t.Error("recovery not reported")
	}
}

func TestNewRejectsUnknownSchemes(t *testing.T) {
	for _, u := range []string{"ftp://x", "file://relative/path", "etcd://x/y"} {
		if _, err := New(u, quiet()); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}

// FuzzParseList: any bytes give either a failed read or a set whose every server
// passes the edge rules (a valid host name, a weight 0..65535) and can be used where
// the daemon uses it: as a Prometheus label value (the invalid-UTF-8 zone crash of
// issue 13 was there) and on one line of /pools.
func FuzzParseList(f *testing.F) {
	for _, n := range []string{"servers-legacy.txt", "servers.json", "text-servers.debian-sample"} {
		b, _ := os.ReadFile(filepath.Join("testdata", n))
		f.Add(b, n == "servers.json")
	}
	f.Add([]byte("{'host': '::ffff:127.0.0.1%\xff', 'weight': 1, 'enabled': True}\n"), false)
	f.Add([]byte(`{"a\nb": {"weight": -7}, "a": {"weight": 70000}, "a": {}}`), true)
	labels := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fuzz_server"}, []string{"service", "host"})
	f.Fuzz(func(t *testing.T, data []byte, isJSON bool) {
		set, bad, err := ParseList(data, isJSON)
		if err != nil && set != nil {
			t.Fatal("error with a set")
		}
		lines := bytes.Count(data, []byte{'\n'}) + 1
		for _, b := range bad {
			if b.Line < 1 || b.Line > lines {
				t.Fatalf("bad line number %d of %d", b.Line, lines)
			}
			if b.Host != "" && CheckHost(b.Host) != nil {
				t.Fatalf("rejected line names an invalid host %q", b.Host)
			}
		}
		for h, s := range set {
			if h != s.Host {
				t.Fatalf("key %q, host %q", h, s.Host)
			}
			if err := CheckHost(h); err != nil {
				t.Fatal(err)
			}
			if err := CheckWeight(int64(s.Weight)); err != nil {
				t.Fatal(err)
			}
			labels.WithLabelValues("p", h).Set(float64(s.Weight)) // panics on invalid UTF-8
			labels.DeleteLabelValues("p", h)
			if strings.ContainsAny(h, "\n\r\t/ ") {
				t.Fatalf("host %q would break a /pools line or an API path", h)
			}
		}
	})
}
