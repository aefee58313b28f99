package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// poller is the loop both list sources share: every interval, read; deliver a
// changed set; on errors keep the last good set and report the failure once per
// outage (and its recovery).
type poller struct {
	what     string // the path or URL, for logs
	log      *slog.Logger
	interval time.Duration
	// read returns the current set; unchanged=true means "same as last time"
	// without reading (an unchanged stat, a 304).
	read func(ctx context.Context) (set Set, unchanged bool, err error)
}

func (p *poller) run(ctx context.Context, ev Events) error {
	var (
		last      Set
		failing   bool
		delivered bool
	)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		set, unchanged, err := p.read(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			if !failing {
				p.log.Error("cannot read server list; keeping the last good one", "source", p.what, "err", err)
			}
			failing = true
			ev.Failed(err)
		case err == nil:
			if failing {
				p.log.Info("server list readable again", "source", p.what)
				ev.Failed(nil)
			}
			failing = false
			if !unchanged && (!delivered || !equalSets(set, last)) {
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

// File is a file:// server list, re-read when its stat changes.
type File struct {
	Path     string
	Log      *slog.Logger
	Interval time.Duration
}

// Run implements Source.
func (f *File) Run(ctx context.Context, ev Events) error {
	var lastStat os.FileInfo // of the last successful read
	p := &poller{what: f.Path, log: f.Log, interval: f.Interval,
		read: func(context.Context) (Set, bool, error) {
			st, err := os.Stat(f.Path)
			if err == nil && lastStat != nil && sameStat(st, lastStat) {
				return nil, true, nil
			}
			lastStat = nil
			set, err := f.read()
			if err != nil {
				return nil, false, err
			}
			lastStat = st
			return set, false, nil
		}}
	return p.run(ctx, ev)
}

func sameStat(a, b os.FileInfo) bool {
	return a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) && a.Mode() == b.Mode() &&
		os.SameFile(a, b)
}

func (f *File) read() (Set, error) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, err
	}
	set, bad, err := ParseList(data, isJSONURL(f.Path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	logLineErrors(f.Log, f.Path, bad)
	return set, nil
}

// HTTP is an http:// or https:// server list, fetched every Interval. (PyBal had no
// https support; certificate verification uses the system roots.)
type HTTP struct {
	URL      string
	Log      *slog.Logger
	Interval time.Duration
	Client   *http.Client // nil: a client with a 5 s timeout
}

// maxListBytes bounds a fetched list so a misbehaving server cannot exhaust memory.
const maxListBytes = 32 << 20

// Run implements Source.
func (h *HTTP) Run(ctx context.Context, ev Events) error {
	client := h.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	etag := ""
	p := &poller{what: h.URL, log: h.Log, interval: h.Interval,
		read: func(ctx context.Context) (Set, bool, error) {
			set, newTag, notModified, err := h.fetch(ctx, client, etag)
			switch {
			case err != nil:
				etag = ""
			case !notModified:
				etag = newTag
			}
			return set, notModified, err
		}}
	return p.run(ctx, ev)
}

func (h *HTTP) fetch(ctx context.Context, c *http.Client, etag string) (Set, string, bool, error) {
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
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxListBytes+1))
	if err != nil {
		return nil, "", false, fmt.Errorf("GET %s: %w", h.URL, err)
	}
	if len(data) > maxListBytes {
		return nil, "", false, errors.New("server list larger than 32 MiB")
	}
	set, bad, err := ParseList(data, isJSONURL(h.URL))
	if err != nil {
		return nil, "", false, fmt.Errorf("GET %s: %w", h.URL, err)
	}
	logLineErrors(h.Log, h.URL, bad)
	return set, resp.Header.Get("ETag"), false, nil
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
