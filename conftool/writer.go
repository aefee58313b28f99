package conftool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrConflict: the key kept changing under the writer; the change was not applied.
var ErrConflict = errors.New("conflicting concurrent writes")

// AuditSuffix is appended to a pool's key prefix (minus its trailing "/") to make the
// audit tree: <prefix>/<dc>/<cluster>/<service>.audit/<UTC time>-<host>-r<revision>,
// where revision is the host key's mod revision before the change (0: key created).
// It sits next to the pool but outside the pool's prefix, so sources never see it; the
// revision makes each record's key unique.
const AuditSuffix = ".audit/"

const defaultMaxAttempts = 5

// Change is an admin action on one host's value. Nil/zero fields are left as they are.
type Change struct {
	Pooled *string // yes, no or inactive
	Weight *int    // absolute weight, >= 0
	// WeightDelta adds to the current weight (an absent weight counts as PyBal's 10);
	// it is applied to the value read in the same compare-and-swap, so concurrent
	// increments are never lost. Not allowed together with Weight.
	WeightDelta int
}

func (c Change) String() string {
	var parts []string
	if c.Pooled != nil {
		parts = append(parts, "pooled="+*c.Pooled)
	}
	if c.Weight != nil {
		parts = append(parts, fmt.Sprintf("weight=%d", *c.Weight))
	}
	if c.WeightDelta != 0 {
		parts = append(parts, fmt.Sprintf("weight%+d", c.WeightDelta))
	}
	return strings.Join(parts, " ")
}

func (c Change) validate() error {
	if c.Pooled == nil && c.Weight == nil && c.WeightDelta == 0 {
		return errors.New("empty change")
	}
	if c.Pooled != nil {
		switch *c.Pooled {
		case PooledYes, PooledNo, PooledInactive:
		default:
			return fmt.Errorf("pooled %q: want yes, no or inactive", *c.Pooled)
		}
	}
	if c.Weight != nil && (*c.Weight < 0 || *c.Weight > math.MaxInt32) {
		return fmt.Errorf("weight %d out of range 0..%d", *c.Weight, math.MaxInt32)
	}
	if c.Weight != nil && c.WeightDelta != 0 {
		return errors.New("weight and weight delta are exclusive")
	}
	return nil
}

// Writer applies admin actions to conftool keys.
type Writer struct {
	cli         *clientv3.Client
	log         *slog.Logger
	m           *Metrics
	now         func() time.Time
	maxAttempts int
}

// NewWriter returns a writer using cli.
func NewWriter(cli *clientv3.Client, log *slog.Logger, m *Metrics) *Writer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Writer{cli: cli, log: log, m: m, now: time.Now, maxAttempts: defaultMaxAttempts}
}

// AuditRecord is the JSON stored under the audit key of each applied change.
type AuditRecord struct {
	Time     time.Time       `json:"time"`
	Actor    string          `json:"actor"`
	Key      string          `json:"key"`
	Host     string          `json:"host"`
	Change   string          `json:"change"`
	Old      json.RawMessage `json:"old"` // null when the key did not exist
	New      json.RawMessage `json:"new"`
	Reason   string          `json:"reason"`
	Revision int64           `json:"prev_mod_revision"`
	Force    bool            `json:"force,omitempty"` // the depool threshold was overridden
}

// AuditKey returns the audit key of a change (see AuditSuffix).
func AuditKey(keyPrefix, host string, t time.Time, prevModRev int64) string {
	return strings.TrimSuffix(keyPrefix, "/") + AuditSuffix +
		t.UTC().Format("20060102T150405.000000000Z") + "-" + host + fmt.Sprintf("-r%d", prevModRev)
}

// Apply changes host's value under keyPrefix. It reads the key, applies ch (keeping
// every other JSON field), and writes the result and an audit record in one
// transaction that succeeds only if the key's mod revision is still the one read (or
// the key still does not exist). On a conflict it re-reads and re-applies, up to a few
// times, then returns ErrConflict: a concurrent change is never overwritten blindly.
// A change that alters nothing writes nothing. A missing key is created with only the
// changed fields. A malformed stored value is an error (fix it by hand first).
func (w *Writer) Apply(ctx context.Context, keyPrefix, host string, ch Change, actor, reason string) (old, new Value, err error) {
	r, err := w.ApplyChecked(ctx, Write{Prefix: keyPrefix, Host: host, Change: ch, Actor: actor, Reason: reason})
	return r.Old, r.New, err
}

// Write is one admin change for ApplyChecked.
type Write struct {
	Prefix, Host  string
	Change        Change
	Actor, Reason string
	Force         bool // recorded in the audit record
	// Check, when set, sees every key of the pool as it will be after the change and
	// may refuse it (the depool threshold). The write then commits only if no key of
	// the pool changed since the read, so two writers (two LVS hosts, two SREs) cannot
	// both pass a check that only one of them may pass.
	Check func(before, after map[string]Key) error
}

// Written is the result of ApplyChecked. Revision is the etcd revision of the write,
// 0 when nothing changed.
type Written struct {
	Old, New Value
	Revision int64
}

// Key is a pool key's decoded value; absent fields are "" / nil.
type Key struct {
	Pooled string
	Weight *int
}

// ApplyChecked is Apply with an optional check over the whole pool (see Write.Check).
// On error nothing was written, except when the error wraps ErrUnknownOutcome.
func (w *Writer) ApplyChecked(ctx context.Context, wr Write) (Written, error) {
	if wr.Host == "" || strings.Contains(wr.Host, "/") {
		return Written{}, fmt.Errorf("conftool: bad host %q", wr.Host)
	}
	if !strings.HasSuffix(wr.Prefix, "/") {
		wr.Prefix += "/"
	}
	key := wr.Prefix + wr.Host
	if err := wr.Change.validate(); err != nil {
		return Written{}, fmt.Errorf("conftool: %s: %w", key, err)
	}
	for attempt := 1; ; attempt++ {
		res, done, err := w.try(ctx, key, wr)
		if err != nil {
			w.m.write("error")
			return res, err
		}
		if done {
			return res, nil
		}
		w.m.conflict()
		if attempt >= w.maxAttempts {
			w.m.write("conflict")
			w.log.Warn("conftool: admin change not applied: concurrent writes", "key", key, "actor", wr.Actor,
				"change", wr.Change.String(), "attempts", attempt)
			return Written{}, fmt.Errorf("conftool: %s: %w (%d attempts); re-read and retry", key, ErrConflict, attempt)
		}
		// Short jittered pause so racing writers do not collide again in lockstep.
		if !sleep(ctx, time.Duration(rand.N(int64(attempt)*int64(5*time.Millisecond)))+time.Millisecond) {
			return Written{}, fmt.Errorf("conftool: %s: %w", key, ctx.Err())
		}
	}
}

// ErrUnknownOutcome: the transaction was sent but its answer was lost; it may have
// been applied.
var ErrUnknownOutcome = errors.New("outcome unknown")

// try does one read-modify-compare-and-swap. done=false means the compare failed.
// With a check, the whole pool is read and the compare covers every key of it.
func (w *Writer) try(ctx context.Context, key string, wr Write) (res Written, done bool, err error) {
	var get *clientv3.GetResponse
	if wr.Check != nil {
		get, err = w.cli.Get(ctx, wr.Prefix, clientv3.WithPrefix())
	} else {
		get, err = w.cli.Get(ctx, key)
	}
	if err != nil {
		return Written{}, false, fmt.Errorf("conftool: read %s: %w", key, err)
	}
	fields := map[string]json.RawMessage{}
	var oldRaw []byte
	var modRev int64
	pool := map[string]Key{}
	for _, it := range get.Kvs {
		if string(it.Key) == key {
			oldRaw, modRev = it.Value, it.ModRevision
			continue
		}
		host, ok := strings.CutPrefix(string(it.Key), wr.Prefix)
		if !ok || host == "" || strings.Contains(host, "/") {
			continue
		}
		if e, err := decodeEntry(it.Value); err == nil {
			pool[host] = e.key()
		}
	}
	if oldRaw != nil {
		if fields, err = decodeFields(oldRaw); err != nil {
			return Written{}, false, fmt.Errorf("conftool: %s holds a malformed value (%v): fix it by hand first", key, err)
		}
	}
	oe, err := entryOf(fields)
	if err != nil {
		return Written{}, false, fmt.Errorf("conftool: %s holds a malformed value (%v): fix it by hand first", key, err)
	}
	res.Old = oe.value()
	oldCanon, _ := json.Marshal(fields)

	ch := wr.Change
	if ch.Pooled != nil {
		fields["pooled"], _ = json.Marshal(*ch.Pooled)
	}
	switch {
	case ch.Weight != nil:
		fields["weight"], _ = json.Marshal(*ch.Weight)
	case ch.WeightDelta != 0:
		cur := defaultWeight
		if oe.weight != nil {
			cur = *oe.weight
		}
		n := cur + ch.WeightDelta
		if n < 0 || n > math.MaxInt32 {
			return res, false, fmt.Errorf("conftool: %s: weight %d%+d out of range", key, cur, ch.WeightDelta)
		}
		fields["weight"], _ = json.Marshal(n)
	}
	newRaw, err := json.Marshal(fields) // map keys sorted: a stable encoding
	if err != nil {
		return res, false, fmt.Errorf("conftool: encode %s: %w", key, err)
	}
	ne, _ := entryOf(fields)
	res.New = ne.value()
	if oldRaw != nil && bytes.Equal(oldCanon, newRaw) {
		w.m.write("noop")
		w.log.Info("conftool: admin change: no change", "key", key, "actor", wr.Actor, "change", ch.String(), "reason", wr.Reason)
		return res, true, nil
	}
	if wr.Check != nil {
		after := maps.Clone(pool)
		if oldRaw != nil {
			pool[wr.Host] = oe.key()
		}
		after[wr.Host] = ne.key()
		if err := wr.Check(pool, after); err != nil {
			return res, false, err
		}
	}

	now := w.now()
	rec := AuditRecord{Time: now.UTC(), Actor: wr.Actor, Key: key, Host: wr.Host, Change: ch.String(),
		Old: json.RawMessage("null"), New: newRaw, Reason: wr.Reason, Revision: modRev, Force: wr.Force}
	if oldRaw != nil {
		rec.Old = compact(oldRaw)
	}
	audit, err := json.Marshal(rec)
	if err != nil {
		return res, false, fmt.Errorf("conftool: encode audit record: %w", err)
	}
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
	if modRev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	cmps := []clientv3.Cmp{cmp}
	if wr.Check != nil {
		// Nothing in the pool changed since the read the check saw.
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(wr.Prefix), "<", get.Header.Revision+1).WithPrefix())
	}
	auditKey := AuditKey(wr.Prefix, wr.Host, now, modRev)
	resp, err := w.cli.Txn(ctx).If(cmps...).
		Then(clientv3.OpPut(key, string(newRaw)), clientv3.OpPut(auditKey, string(audit))).
		Commit()
	if err != nil {
		return res, false, fmt.Errorf("conftool: write %s: %w: %w", key, ErrUnknownOutcome, err)
	}
	if !resp.Succeeded {
		return res, false, nil
	}
	res.Revision = resp.Header.Revision
	w.m.write("ok")
	w.log.Info("conftool: admin change", "actor", wr.Actor, "key", key, "change", ch.String(),
		"old", string(rec.Old), "new", string(newRaw), "reason", wr.Reason, "force", wr.Force,
		"audit_key", auditKey, "revision", resp.Header.Revision)
	return res, true, nil
}

// compact returns raw without insignificant whitespace (for a no-op check and audit).
func compact(raw []byte) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

func (e entry) key() Key {
	var k Key
	if e.pooled != nil {
		k.Pooled = *e.pooled
	}
	if e.weight != nil {
		w := *e.weight
		k.Weight = &w
	}
	return k
}
