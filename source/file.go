package source

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// PollInterval is how often file:// and http(s):// lists are re-read. PyBal polls every
// second; we stat twice as often so a change is always seen within 1 s.
const PollInterval = 500 * time.Millisecond

// New returns the source for a file://, http:// or https:// server-list URL.
func New(rawURL string, log *slog.Logger) (Source, error) {
	switch {
	case strings.HasPrefix(rawURL, "file://"):
		path := strings.TrimPrefix(rawURL, "file://")
		if !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("config %q: file:// needs an absolute path", rawURL)
		}
		return &File{Path: path, Log: log, Interval: PollInterval}, nil
	case strings.HasPrefix(rawURL, "http://"), strings.HasPrefix(rawURL, "https://"):
		if _, err := url.Parse(rawURL); err != nil {
			return nil, fmt.Errorf("config %q: %w", rawURL, err)
		}
		return &HTTP{URL: rawURL, Log: log, Interval: PollInterval}, nil
	}
	return nil, fmt.Errorf("config %q: no server-list handler for this URL scheme", rawURL)
}

// isJSONURL is PyBal's format rule: a .json suffix means JSON, anything else legacy.
func isJSONURL(u string) bool {
	if i := strings.IndexAny(u, "?#"); i >= 0 && strings.HasPrefix(u, "http") {
		u = u[:i]
	}
	return strings.HasSuffix(u, ".json")
}

// FailReportInterval bounds how often a list that keeps failing is logged and
// reported again through Events.Failed (the first failure and the recovery are
// reported at once).
const FailReportInterval = time.Minute

// readResult is one poll of a list.
type readResult struct {
	set Set
	bad []LineError
	// unchanged: the list is as it was at the last poll (an unchanged stat, a 304),
	// so it was not parsed again. With err set it is the same failure as before.
	unchanged bool
	err       error
}

// poller is the loop both list sources share: every interval, read; deliver a changed
// set; on errors keep the last good set and report the failure once per outage, then
// at most every FailReportInterval (and its recovery). Rejected lines are logged when
// they change and reported to a ProblemReporter receiver; a rejected line that names a
// server of the last good set keeps that server's previous state.
type poller struct {
	what     string // the path or URL, for logs
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time // nil: time.Now
	read     func(ctx context.Context) readResult
}

func (p *poller) run(ctx context.Context, ev Events) error {
	now := p.now
	if now == nil {
		now = time.Now
	}
	var (
		last       Set
		delivered  bool
		failing    bool
		reportedAt time.Time // of the last failure report
		lastBad    string    // the rejected lines last logged
		problems   map[string]string
	)
	pr, _ := ev.(ProblemReporter)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		res := p.read(ctx)
		switch {
		case res.err != nil && ctx.Err() == nil:
			switch {
			case !failing:
				p.log.Error("cannot read server list; keeping the last good one", "source", p.what, "err", res.err)
				ev.Failed(res.err)
				reportedAt = now()
			case now().Sub(reportedAt) >= FailReportInterval:
				p.log.Warn("server list still failing; keeping the last good one", "source", p.what,
					"err", res.err, "since", reportedAt.Format(time.RFC3339))
				ev.Failed(res.err)
				reportedAt = now()
			}
			failing = true
		case res.err == nil:
			if failing {
				p.log.Info("server list readable again", "source", p.what)
				ev.Failed(nil)
			}
			failing = false
			if res.unchanged {
				break
			}
			set := res.set
			if fp := fingerprint(res.bad); fp != lastBad {
				logLineErrors(p.log, p.what, res.bad)
				lastBad = fp
			}
			for _, b := range res.bad {
				if old, known := last[b.Host]; b.Host != "" && known {
					if _, present := set[b.Host]; !present {
						set[b.Host] = old
					}
				}
			}
			if pr != nil {
				if np := p.problems(res.bad); !maps.Equal(np, problems) {
					problems = np
					pr.Problems(maps.Clone(np))
				}
			}
			if !delivered || !equalSets(set, last) {
				last, delivered = set, true
				ev.Update(set.Clone())
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// problems keys each rejected line by "<path or URL>:<line>".
func (p *poller) problems(bad []LineError) map[string]string {
	out := make(map[string]string, len(bad))
	for _, b := range bad {
		msg := b.Err.Error()
		if b.Host != "" {
			msg += " (the server keeps its previous state, if it had one)"
		} else {
			msg += " (line skipped)"
		}
		out[fmt.Sprintf("%s:%d", p.what, b.Line)] = msg
	}
	return out
}

func fingerprint(bad []LineError) string {
	var b strings.Builder
	for _, e := range bad {
		b.WriteString(e.Error())
		b.WriteByte('\n')
	}
	return b.String()
}

// File is a file:// server list, re-read when its stat changes.
type File struct {
	Path     string
	Log      *slog.Logger
	Interval time.Duration

	onParse, onPoll func() // tests count parses and polls
}

// Run implements Source. The stat of the last read is kept whether the read succeeded
// or not, so an unchanged invalid file is not read and parsed again every poll.
func (f *File) Run(ctx context.Context, ev Events) error {
	var (
		lastStat os.FileInfo // of the last read, good or bad
		lastErr  error       // of that read
	)
	p := &poller{what: f.Path, log: f.Log, interval: f.Interval,
		read: func(context.Context) readResult {
			if f.onPoll != nil {
				f.onPoll()
			}
			st, err := os.Stat(f.Path)
			if err != nil {
				lastStat, lastErr = nil, nil
				return readResult{err: err}
			}
			if lastStat != nil && sameStat(st, lastStat) {
				return readResult{unchanged: true, err: lastErr}
			}
			set, bad, err := f.read(st)
			lastStat, lastErr = st, err
			return readResult{set: set, bad: bad, err: err}
		}}
	return p.run(ctx, ev)
}

func sameStat(a, b os.FileInfo) bool {
	return a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) && a.Mode() == b.Mode() &&
		os.SameFile(a, b)
}

func (f *File) read(st os.FileInfo) (Set, []LineError, error) {
	if st.Size() > maxListBytes {
		return nil, nil, fmt.Errorf("%s: server list of %d bytes is larger than %d MiB", f.Path, st.Size(), maxListBytes>>20)
	}
	fh, err := os.Open(f.Path)
	if err != nil {
		return nil, nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxListBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	if len(data) > maxListBytes { // it grew since the stat
		return nil, nil, fmt.Errorf("%s: server list larger than %d MiB", f.Path, maxListBytes>>20)
	}
	if f.onParse != nil {
		f.onParse()
	}
	set, bad, err := ParseList(data, isJSONURL(f.Path))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	return set, bad, nil
}

// HTTP is an http:// or https:// server list, fetched every Interval. (PyBal had no
// https support; certificate verification uses the system roots.)
type HTTP struct {
	URL      string
	Log      *slog.Logger
	Interval time.Duration
	Client   *http.Client // nil: a client with a 5 s timeout

	onParse func() // tests count parses
}

// maxListBytes bounds a list (fetched or read from a file) so a misbehaving server or
// a runaway file cannot exhaust memory or CPU.
const maxListBytes = 32 << 20

// Run implements Source. A body identical to the last one parsed (same ETag answered
// with 304, or the same bytes) is not parsed again: an unchanged invalid list costs a
// GET and a hash per poll, not a parse.
func (h *HTTP) Run(ctx context.Context, ev Events) error {
	client := h.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	var (
		etag    string
		parsed  bool     // lastSum and lastErr describe a parsed body
		lastSum [32]byte // of the last body parsed
		lastErr error    // its parse error
	)
	p := &poller{what: h.URL, log: h.Log, interval: h.Interval,
		read: func(ctx context.Context) readResult {
			data, newTag, notModified, err := h.fetch(ctx, client, etag)
			switch {
			case err != nil:
				etag = ""
				return readResult{err: err}
			case notModified && parsed:
				return readResult{unchanged: true, err: lastErr}
			case notModified: // a 304 to a request without If-None-Match: a broken server
				etag = ""
				return readResult{err: fmt.Errorf("GET %s: 304 Not Modified to an unconditional request", h.URL)}
			}
			etag = newTag
			sum := sha256.Sum256(data)
			if parsed && sum == lastSum {
				return readResult{unchanged: true, err: lastErr}
			}
			if h.onParse != nil {
				h.onParse()
			}
			set, bad, err := ParseList(data, isJSONURL(h.URL))
			if err != nil {
				err = fmt.Errorf("GET %s: %w", h.URL, err)
			}
			parsed, lastSum, lastErr = true, sum, err
			return readResult{set: set, bad: bad, err: err}
		}}
	return p.run(ctx, ev)
}

// fetch GETs the list body (at most maxListBytes).
func (h *HTTP) fetch(ctx context.Context, c *http.Client, etag string) (data []byte, newTag string, notModified bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return nil, "", false, err
	}
	req.Header.Set("User-Agent", "kubal")
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return nil, etag, true, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", false, fmt.Errorf("GET %s: %s", h.URL, resp.Status)
	}
	data, err = io.ReadAll(io.LimitReader(resp.Body, maxListBytes+1))
	if err != nil {
		return nil, "", false, fmt.Errorf("GET %s: %w", h.URL, err)
	}
	if len(data) > maxListBytes {
		return nil, "", false, fmt.Errorf("GET %s: server list larger than %d MiB", h.URL, maxListBytes>>20)
	}
	return data, resp.Header.Get("ETag"), false, nil
}

func equalSets(a, b Set) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
