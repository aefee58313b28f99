package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kubal/kubal/internal/testutil"
)

// problemRecorder is a recorder that also takes Problems.
type problemRecorder struct {
	*recorder
	pmu      sync.Mutex
	problems []map[string]string
}

func (r *problemRecorder) Problems(p map[string]string) {
	r.pmu.Lock()
	r.problems = append(r.problems, p)
	r.pmu.Unlock()
	r.ch <- struct{}{}
}

func (r *problemRecorder) lastProblems() map[string]string {
	r.pmu.Lock()
	defer r.pmu.Unlock()
	if len(r.problems) == 0 {
		return nil
	}
	return r.problems[len(r.problems)-1]
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// A legacy list overwritten with garbage, emptied or truncated is a failed read: the
// last good set stays (no Update) and Failed reports it; before, the pool was emptied.
func TestFileListWithNoValidLineIsAFailedRead(t *testing.T) {
	good := "{'host': 'mw1', 'weight': 10, 'enabled': True}\n{'host': 'mw2', 'weight': 10, 'enabled': True}\n"
	for name, bad := range map[string]string{
		"binary garbage": "\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\n\x00\xff\xfe",
		"0-byte file":    "",
		"truncated":      "{'host': 'mw1', 'wei",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pool.txt")
			writeAtomic(t, path, []byte(good))
			src := &File{Path: path, Log: quiet(), Interval: 5 * time.Millisecond}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := newRecorder()
			go src.Run(ctx, r)
			r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 1 })
			writeAtomic(t, path, []byte(bad))
			r.waitFor(t, 2*time.Second, func() bool { return len(r.fails) == 1 && r.fails[0] != nil })
			if !errors.Is(r.fails[0], ErrNoServers) {
				t.Errorf("failure %v, want ErrNoServers", r.fails[0])
			}
			writeAtomic(t, path, []byte(good+"{'host': 'mw3', 'weight': 10, 'enabled': True}\n"))
			r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 2 })
			r.mu.Lock()
			defer r.mu.Unlock()
			if len(r.updates[1]) != 3 || r.fails[len(r.fails)-1] != nil {
				t.Errorf("after recovery: updates %v, fails %v", r.updates, r.fails)
			}
		})
	}
}

// An unchanged invalid list is parsed once, not every poll; a failing source logs and
// reports Failed once, not every poll (before: a 47 MB invalid .json was parsed every
// 500 ms and logged a WARN per poll).
func TestFailedFileReadIsNotRepeated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.json")
	writeAtomic(t, path, []byte(`{"a": {"weight": 1}, "b": `))
	var logs testutil.SyncBuffer
	var parses, polls atomic.Int64
	src := &File{Path: path, Log: slog.New(slog.NewTextHandler(&logs, nil)), Interval: time.Millisecond,
		onParse: func() { parses.Add(1) }}
	pollc := make(chan struct{}, 1000)
	src.onPoll = func() {
		polls.Add(1)
		select {
		case pollc <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRecorder()
	go src.Run(ctx, r)
	deadline := time.After(5 * time.Second)
	for polls.Load() < 50 {
		select {
		case <-pollc:
		case <-deadline:
			t.Fatalf("only %d polls", polls.Load())
		}
	}
	if n := parses.Load(); n != 1 {
		t.Errorf("%d parses over %d polls of an unchanged invalid list, want 1", n, polls.Load())
	}
	r.mu.Lock()
	if len(r.fails) != 1 || r.fails[0] == nil {
		t.Errorf("Failed calls %v, want one", r.fails)
	}
	r.mu.Unlock()
	if n := strings.Count(logs.String(), "\n"); n != 1 {
		t.Errorf("%d log lines over %d polls, want 1:\n%s", n, polls.Load(), logs.String())
	}
}

// file:// lists have the same 32 MiB cap as http:// ones, checked before reading.
func TestFileListSizeCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.json")
	writeAtomic(t, path, nil)
	if err := os.Truncate(path, 47<<20); err != nil { // sparse: no 47 MB written
		t.Fatal(err)
	}
	var parses atomic.Int64
	src := &File{Path: path, Log: quiet(), Interval: 5 * time.Millisecond, onParse: func() { parses.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRecorder()
	go src.Run(ctx, r)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.fails) == 1 })
	if err := r.fails[0]; err == nil || !strings.Contains(err.Error(), "larger than 32 MiB") {
		t.Errorf("failure %v", err)
	}
	if parses.Load() != 0 {
		t.Error("an oversized list was parsed")
	}
}

// The bounded report: a list still failing is reported again after FailReportInterval,
// not before (driven by the poller's clock, no sleeping a minute).
func TestPollerReportsFailureAtBoundedRate(t *testing.T) {
	var mu sync.Mutex
	clock := time.Unix(1000, 0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	var logs testutil.SyncBuffer
	polls := make(chan struct{})
	p := &poller{what: "x", log: slog.New(slog.NewTextHandler(&logs, nil)), interval: time.Millisecond, now: now,
		read: func(context.Context) readResult {
			polls <- struct{}{}
			return readResult{err: errors.New("boom")}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRecorder()
	go p.run(ctx, r)
	step := func(n int) {
		for range n {
			<-polls
		}
	}
	step(20)
	advance(FailReportInterval - time.Second)
	step(20)
	advance(time.Second)
	step(2)
	r.mu.Lock()
	n := len(r.fails)
	r.mu.Unlock()
	if n != 2 {
		t.Errorf("%d Failed reports, want 2 (the first, then one after %v)", n, FailReportInterval)
	}
	if c := strings.Count(logs.String(), "\n"); c != 2 {
		t.Errorf("%d log lines, want 2:\n%s", c, logs.String())
	}
}

// A rejected line that names a known server keeps that server's previous state, and
// every rejected line is reported as a problem (path:line) until fixed.
func TestRejectedLineKeepsPreviousStateAndIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.txt")
	writeAtomic(t, path, []byte("{'host': 'mw1', 'weight': 10, 'enabled': True}\n{'host': 'mw2', 'weight': 5, 'enabled': True}\n"))
	src := &File{Path: path, Log: quiet(), Interval: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &problemRecorder{recorder: newRecorder()}
	go src.Run(ctx, r)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 1 })
	writeAtomic(t, path, []byte("{'host': 'mw1', 'weight': 11, 'enabled': True}\n{'host': 'mw2', 'weight': -7, 'enabled': True}\n{'host': 'a\\nb', 'weight': 1, 'enabled': True}\n"))
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 2 })
	if got := r.updates[1]["mw2"]; got.Weight != 5 {
		t.Errorf("mw2 = %+v, want its previous weight 5", got)
	}
	if got := r.updates[1]["mw1"]; got.Weight != 11 {
		t.Errorf("mw1 = %+v", got)
	}
	p := r.lastProblems()
	if len(p) != 2 || !strings.Contains(p[path+":2"], "out of range") || !strings.Contains(p[path+":3"], "control character") {
		t.Errorf("problems %v", p)
	}
	writeAtomic(t, path, []byte("{'host': 'mw1', 'weight': 11, 'enabled': True}\n"))
	r.waitFor(t, 2*time.Second, func() bool { return len(r.updates) == 3 })
	if p := r.lastProblems(); len(p) != 0 {
		t.Errorf("problems after the fix: %v", p)
	}
	if !maps.Equal(map[string]int{"mw1": 11}, weights(r.updates[2])) {
		t.Errorf("got %v", r.updates[2])
	}
}

func weights(s Set) map[string]int {
	out := map[string]int{}
	for h, v := range s {
		out[h] = v.Weight
	}
	return out
}

// An unchanged invalid list over HTTP is parsed once: with an ETag (304s), and without
// one (the same bytes again).
func TestHTTPInvalidListNotReparsed(t *testing.T) {
	for _, withETag := range []bool{true, false} {
		t.Run(fmt.Sprintf("etag=%v", withETag), func(t *testing.T) { testHTTPInvalidListNotReparsed(t, withETag) })
	}
}

func testHTTPInvalidListNotReparsed(t *testing.T, withETag bool) {
	var full, notMod atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if withETag && r.Header.Get("If-None-Match") == `"v1"` {
			notMod.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		full.Add(1)
		if withETag {
			w.Header().Set("ETag", `"v1"`)
		}
		io.WriteString(w, "\x00\x01garbage\n")
	}))
	defer srv.Close()
	var parses atomic.Int64
	src := &HTTP{URL: srv.URL + "/pool", Log: quiet(), Interval: time.Millisecond, Client: srv.Client(),
		onParse: func() { parses.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := newRecorder()
	go src.Run(ctx, r)
	r.waitFor(t, 2*time.Second, func() bool { return len(r.fails) == 1 })
	deadline := time.Now().Add(5 * time.Second)
	for notMod.Load()+full.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // waiting for the server to count requests
	}
	if parses.Load() != 1 || withETag && full.Load() != 1 || full.Load()+notMod.Load() < 20 {
		t.Errorf("%d parses, %d full responses, %d 304s; want 1 parse", parses.Load(), full.Load(), notMod.Load())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.fails) != 1 || !errors.Is(r.fails[0], ErrNoServers) {
		t.Errorf("fails %v", r.fails)
	}
}
