// Package adminstate is kubal's local store for admin overrides (pool, depool, weight)
// of services without conftool: one JSON file (state-file, default
// /var/lib/kubal/state.json) rewritten atomically on every change (temporary file in
// the same directory, fsync, rename, fsync of the directory), so that an SRE's depool
// survives a crash, a restart and a config reload. The file also keeps the last
// AuditLimit admin actions, written in the same atomic step as the change they
// describe.
package adminstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kubal/kubal/source"
)

// AuditLimit is how many audit entries the file keeps (oldest dropped first).
const AuditLimit = 1000

const version = 1

// Override is an admin decision about one server. A nil Enabled or Weight leaves that
// attribute to the server list.
type Override struct {
	Enabled *bool     `json:"enabled,omitempty"`
	Weight  *int      `json:"weight,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Actor   string    `json:"actor,omitempty"`
	Time    time.Time `json:"time"`
}

// IsZero reports whether o overrides nothing.
func (o Override) IsZero() bool { return o.Enabled == nil && o.Weight == nil }

// Audit describes the admin action behind a Set.
type Audit struct {
	Actor  string // token name or "cert:<CN>"
	Action string // "pool", "depool", "weight", ...
	Reason string
	Force  bool
	Time   time.Time // zero: now
}

// Entry is one record of the audit trail.
type Entry struct {
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Pool   string    `json:"pool"`
	Host   string    `json:"host"`
	Reason string    `json:"reason,omitempty"`
	Force  bool      `json:"force,omitempty"`
	Old    *Override `json:"old,omitempty"`
	New    *Override `json:"new,omitempty"`
}

type content struct {
	Version int                            `json:"version"`
	Pools   map[string]map[string]Override `json:"pools"`
	Audit   []Entry                        `json:"audit"`
}

// File is the state file. It is safe for concurrent use.
type File struct {
	path string
	log  *slog.Logger
	now  func() time.Time
	// auditLimit is AuditLimit; tests lower it.
	auditLimit int

	mu sync.Mutex
	c  content
}

// Open loads the state file at path. A missing file is an empty state (it is created
// on the first Set, with its directory). A file that does not parse is an error naming
// the path and the byte offset (line:column): it is never dropped silently. Temporary
// files left by a crash during a write are removed; the state file itself is either
// the old or the new version, never a mix.
func Open(path string, log *slog.Logger) (*File, error) {
	f := &File{path: path, log: log, now: time.Now, auditLimit: AuditLimit, c: content{Version: version, Pools: map[string]map[string]Override{}}}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Info("admin state file does not exist yet; starting with no overrides", "path", path)
	case err != nil:
		return nil, fmt.Errorf("state-file: %w", err)
	default:
		if err := decode(path, data, &f.c); err != nil {
			return nil, err
		}
	}
	f.removeStaleTemps()
	return f, nil
}

func decode(path string, data []byte, c *content) error {
	// A syntax pass first: it reports the offset of truncation and trailing garbage too.
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var off int64
		var se *json.SyntaxError
		if errors.As(err, &se) {
			off = se.Offset
		}
		line, col := position(data, off)
		return fmt.Errorf("state-file %s: corrupt at offset %d (line %d, column %d): %w; fix or move the file away (it holds the admin overrides)", path, off, line, col, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var v content
	if err := dec.Decode(&v); err != nil {
		off := dec.InputOffset()
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			off = se.Offset
		case errors.As(err, &te):
			off = te.Offset
		}
		line, col := position(data, off)
		return fmt.Errorf("state-file %s: corrupt at offset %d (line %d, column %d): %w; fix or move the file away (it holds the admin overrides)", path, off, line, col, err)
	}
	if v.Version != version {
		return fmt.Errorf("state-file %s: version %d, this kubal reads version %d", path, v.Version, version)
	}
	for p, hosts := range v.Pools {
		if p == "" {
			return fmt.Errorf("state-file %s: empty pool name", path)
		}
		for h, o := range hosts {
			if h == "" {
				return fmt.Errorf("state-file %s: pool %q: empty host name", path, p)
			}
			if o.Weight != nil {
				if err := source.CheckWeight(int64(*o.Weight)); err != nil {
					return fmt.Errorf("state-file %s: pool %q host %q: field \"weight\": %w", path, p, h, err)
				}
			}
		}
	}
	if v.Pools == nil {
		v.Pools = map[string]map[string]Override{}
	}
	*c = v
	return nil
}

// position converts a byte offset into a 1-based line and column.
func position(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

func (f *File) tempPattern() string { return filepath.Base(f.path) + ".tmp-*" }

func (f *File) removeStaleTemps() {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(f.path), f.tempPattern()))
	for _, m := range matches {
		if err := os.Remove(m); err == nil {
			f.log.Warn("removed a temporary state file left by an interrupted write", "path", m)
		}
	}
}

// Path returns the file's path.
func (f *File) Path() string { return f.path }

// Pools returns the pools that have overrides, sorted.
func (f *File) Pools() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.c.Pools))
	for p := range f.c.Pools {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Overrides returns a copy of the pool's overrides by host (empty when none).
func (f *File) Overrides(pool string) map[string]Override {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]Override, len(f.c.Pools[pool]))
	for h, o := range f.c.Pools[pool] {
		out[h] = o.clone()
	}
	return out
}

// AuditTrail returns a copy of the audit trail, oldest first.
func (f *File) AuditTrail() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Entry(nil), f.c.Audit...)
}

// Set replaces the override of pool/host with o (a zero o, see IsZero, removes it),
// appends an audit entry and writes the file durably before returning. It returns
// the previous override (zero when none). On error nothing changed, in memory or on
// disk. An empty o.Actor or zero o.Time is filled from audit.
func (f *File) Set(pool, host string, o Override, audit Audit) (old Override, err error) {
	if pool == "" || host == "" {
		return Override{}, fmt.Errorf("state-file: empty pool or host name")
	}
	if err := source.CheckHost(host); err != nil {
		return Override{}, fmt.Errorf("state-file: pool %q: %w", pool, err)
	}
	if o.Weight != nil {
		if err := source.CheckWeight(int64(*o.Weight)); err != nil {
			return Override{}, fmt.Errorf("state-file: pool %q host %q: %w", pool, host, err)
		}
	}
	if audit.Time.IsZero() {
		audit.Time = f.now().UTC()
	}
	if o.Time.IsZero() {
		o.Time = audit.Time
	}
	if o.Actor == "" {
		o.Actor = audit.Actor
	}
	if o.Reason == "" {
		o.Reason = audit.Reason
	}
	o = o.clone()

	f.mu.Lock()
	defer f.mu.Unlock()
	old, had := f.c.Pools[pool][host]

	// Build the next content without touching the current one, so a failed write
	// changes nothing.
	next := content{Version: version, Pools: make(map[string]map[string]Override, len(f.c.Pools)+1)}
	for p, hosts := range f.c.Pools {
		next.Pools[p] = hosts
	}
	hosts := make(map[string]Override, len(f.c.Pools[pool])+1)
	for h, v := range f.c.Pools[pool] {
		hosts[h] = v
	}
	if o.IsZero() {
		delete(hosts, host)
	} else {
		hosts[host] = o
	}
	if len(hosts) == 0 {
		delete(next.Pools, pool)
	} else {
		next.Pools[pool] = hosts
	}
	e := Entry{Time: audit.Time, Actor: audit.Actor, Action: audit.Action, Pool: pool, Host: host,
		Reason: audit.Reason, Force: audit.Force}
	if had {
		oc := old.clone()
		e.Old = &oc
	}
	if !o.IsZero() {
		nc := o.clone()
		e.New = &nc
	}
	keep := f.c.Audit
	if n := len(keep) + 1 - f.auditLimit; n > 0 {
		keep = keep[n:]
	}
	next.Audit = append(append(make([]Entry, 0, len(keep)+1), keep...), e)
	if err := f.write(&next); err != nil {
		return Override{}, err
	}
	f.c = next
	f.log.Info("admin override stored", "path", f.path, "pool", pool, "host", host,
		"actor", audit.Actor, "action", audit.Action, "reason", audit.Reason, "force", audit.Force,
		"old", old.String(), "new", o.String())
	return old.clone(), nil
}

// write replaces the file atomically and durably.
func (f *File) write(c *content) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("state-file %s: encoding: %w", f.path, err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("state-file %s: %w", f.path, err)
	}
	tmp, err := os.CreateTemp(dir, f.tempPattern())
	if err != nil {
		return fmt.Errorf("state-file %s: %w", f.path, err)
	}
	tmpName := tmp.Name()
	fail := func(err error) error {
		_ = tmp.Close()
		_ = os.Remove(tmpName)
		return fmt.Errorf("state-file %s: %w", f.path, err)
	}
	if err := tmp.Chmod(0o640); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(tmpName)
		return fmt.Errorf("state-file %s: %w", f.path, err)
	}
	if err := os.Rename(tmpName, f.path); err != nil {
		_ = os.Remove(tmpName)
		return fmt.Errorf("state-file %s: %w", f.path, err)
	}
	// The rename is durable only once the directory entry is on disk.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("state-file %s: syncing directory: %w", f.path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("state-file %s: syncing directory: %w", f.path, err)
	}
	return nil
}

func (o Override) clone() Override {
	if o.Enabled != nil {
		v := *o.Enabled
		o.Enabled = &v
	}
	if o.Weight != nil {
		v := *o.Weight
		o.Weight = &v
	}
	return o
}

// String is a short human form for logs: "enabled=false weight=5" or "none".
func (o Override) String() string {
	var parts []string
	if o.Enabled != nil {
		parts = append(parts, fmt.Sprintf("enabled=%t", *o.Enabled))
	}
	if o.Weight != nil {
		parts = append(parts, fmt.Sprintf("weight=%d", *o.Weight))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
