package conftool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	if host == "" || strings.Contains(host, "/") {
		return Value{}, Value{}, fmt.Errorf("conftool: bad host %q", host)
	}
	if !strings.HasSuffix(keyPrefix, "/") {
		keyPrefix += "/"
	}
	key := keyPrefix + host
	if err := ch.validate(); err != nil {
		return Value{}, Value{}, fmt.Errorf("conftool: %s: %w", key, err)
	}
	for attempt := 1; ; attempt++ {
		old, new, done, err := w.try(ctx, keyPrefix, key, host, ch, actor, reason)
		if err != nil {
			w.m.write("error")
			return old, new, err
		}
		if done {
			return old, new, nil
		}
		w.m.conflict()
		if attempt >= w.maxAttempts {
			w.m.write("conflict")
			w.log.Warn("conftool: admin change not applied: concurrent writes", "key", key, "actor", actor,
				"change", ch.String(), "attempts", attempt)
			return Value{}, Value{}, fmt.Errorf("conftool: %s: %w (%d attempts); re-read and retry", key, ErrConflict, attempt)
		}
		// Short jittered pause so racing writers do not collide again in lockstep.
		if !sleep(ctx, time.Duration(rand.N(int64(attempt)*int64(5*time.Millisecond)))+time.Millisecond) {
			return Value{}, Value{}, fmt.Errorf("conftool: %s: %w", key, ctx.Err())
		}
	}
}

// try does one read-modify-compare-and-swap. done=false means the compare failed.
func (w *Writer) try(ctx context.Context, keyPrefix, key, host string, ch Change, actor, reason string) (old, new Value, done bool, err error) {
	get, err := w.cli.Get(ctx, key)
	if err != nil {
		return Value{}, Value{}, false, fmt.Errorf("conftool: read %s: %w", key, err)
	}
	fields := map[string]json.RawMessage{}
	var oldRaw []byte
	var modRev int64
	if len(get.Kvs) > 0 {
		oldRaw = get.Kvs[0].Value
		modRev = get.Kvs[0].ModRevision
		if fields, err = decodeFields(oldRaw); err != nil {
			return Value{}, Value{}, false, fmt.Errorf("conftool: %s holds a malformed value (%v): fix it by hand first", key, err)
		}
	}
	oe, err := entryOf(fields)
	if err != nil {
		return Value{}, Value{}, false, fmt.Errorf("conftool: %s holds a malformed value (%v): fix it by hand first", key, err)
	}
	old = oe.value()
	oldCanon, _ := json.Marshal(fields)

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
			return old, old, false, fmt.Errorf("conftool: %s: weight %d%+d out of range", key, cur, ch.WeightDelta)
		}
		fields["weight"], _ = json.Marshal(n)
	}
	newRaw, err := json.Marshal(fields) // map keys sorted: a stable encoding
	if err != nil {
		return old, old, false, fmt.Errorf("conftool: encode %s: %w", key, err)
	}
	ne, _ := entryOf(fields)
	new = ne.value()
	if oldRaw != nil && bytes.Equal(oldCanon, newRaw) {
		w.m.write("noop")
		w.log.Info("conftool: admin change: no change", "key", key, "actor", actor, "change", ch.String(), "reason", reason)
		return old, new, true, nil
	}

	now := w.now()
	rec := AuditRecord{Time: now.UTC(), Actor: actor, Key: key, Host: host, Change: ch.String(),
		Old: json.RawMessage("null"), New: newRaw, Reason: reason, Revision: modRev}
	if oldRaw != nil {
		rec.Old = compact(oldRaw)
	}
	audit, err := json.Marshal(rec)
	if err != nil {
		return old, new, false, fmt.Errorf("conftool: encode audit record: %w", err)
	}
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
	if modRev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	auditKey := AuditKey(keyPrefix, host, now, modRev)
	resp, err := w.cli.Txn(ctx).If(cmp).
		Then(clientv3.OpPut(key, string(newRaw)), clientv3.OpPut(auditKey, string(audit))).
		Commit()
	if err != nil {
		return old, new, false, fmt.Errorf("conftool: write %s: %w", key, err)
	}
	if !resp.Succeeded {
		return old, new, false, nil
	}
	w.m.write("ok")
	w.log.Info("conftool: admin change", "actor", actor, "key", key, "change", ch.String(),
		"old", string(rec.Old), "new", string(newRaw), "reason", reason,
		"audit_key", auditKey, "revision", resp.Header.Revision)
	return old, new, true, nil
}

// compact returns raw without insignificant whitespace (for a no-op check and audit).
func compact(raw []byte) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}
