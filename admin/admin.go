// Package admin is the one home of admin intent: what SREs said about servers (pool,
// depool, weight), stored durably in conftool keys in etcd or in the local state file.
//
// A Store is chosen once per service. It delivers the current Intent (with a revision)
// to the service actor, which gates the source's servers with it (Intent.Gate), and it
// applies Changes durably (Apply), running the depool-threshold check against exactly
// the intent the change is written over. The caller then waits until the service has
// published a state that includes the returned revision: an acknowledged action is in
// force.
package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/kubal/kubal/source"
)

// Op is an admin operation.
type Op string

// Admin operations.
const (
	OpPool   Op = "pool"
	OpDepool Op = "depool"
	OpWeight Op = "weight"
	// OpClear removes the admin override: the source's word counts again.
	OpClear Op = "clear"
)

// MaxWeight is the largest weight an admin may set (IPVS weights are 16-bit in practice).
const MaxWeight = 65535

// Change is one admin action on one server.
type Change struct {
	Host   string
	Op     Op
	Weight int // OpWeight only
	Actor  string
	Reason string
	Force  bool // the caller skips the depool threshold; recorded in the audit trail
}

// Validate checks the change's fields.
func (c Change) Validate() error {
	switch c.Op {
	case OpPool, OpDepool, OpClear:
	case OpWeight:
		if c.Weight < 0 || c.Weight > MaxWeight {
			return fmt.Errorf("weight %d: want 0..%d", c.Weight, MaxWeight)
		}
	default:
		return fmt.Errorf("unknown operation %q", c.Op)
	}
	if c.Host == "" {
		return errors.New("empty host")
	}
	return nil
}

// Override is the admin intent for one server. The zero Override leaves the server as
// its source says.
type Override struct {
	Depooled bool // pooled=no: known, monitored, never pooled
	Inactive bool // conftool pooled=inactive: out of the pool as if absent
	Weight   *int // replaces the source's weight
	Reason   string
	Actor    string
	Time     time.Time
}

// Intent is a store's whole admin intent for one service at one revision. Revisions
// grow with every stored change, so "the service has applied revision >= r" answers
// "is my change in force".
type Intent struct {
	Revision  int64
	Loaded    bool // read at least once; a service is not synced before
	Overrides map[string]Override
	Err       error             // the store cannot be read now: Overrides are the last known
	Problems  map[string]string // per host: a stored value that could not be read
}

// Gate applies the intent to a source's server set: the one place admin intent meets
// servers. The result is a new set; set is not modified.
func (in Intent) Gate(set source.Set) source.Set {
	out := make(source.Set, len(set))
	for host, srv := range set {
		o, ok := in.Overrides[host]
		if !ok {
			out[host] = srv
			continue
		}
		if o.Inactive {
			continue
		}
		if o.Depooled && srv.Enabled {
			srv.Enabled = false
			srv.Reason = "depooled by admin"
			if o.Actor != "" {
				srv.Reason += " (" + o.Actor + ")"
			}
			if o.Reason != "" {
				srv.Reason += ": " + o.Reason
			}
		}
		if o.Weight != nil {
			srv.Weight = *o.Weight
		}
		out[host] = srv
	}
	return out
}

// With returns the intent after ch (for the threshold check). in is not modified.
func (in Intent) With(ch Change) Intent {
	out := in
	out.Overrides = maps.Clone(in.Overrides)
	if out.Overrides == nil {
		out.Overrides = map[string]Override{}
	}
	o := out.Overrides[ch.Host]
	switch ch.Op {
	case OpDepool:
		o.Depooled, o.Inactive = true, false
	case OpPool:
		o.Depooled, o.Inactive = false, false
	case OpWeight:
		w := ch.Weight
		o.Weight = &w
	case OpClear:
		delete(out.Overrides, ch.Host)
		return out
	}
	o.Actor, o.Reason = ch.Actor, ch.Reason
	out.Overrides[ch.Host] = o
	return out
}

// String tells an SRE what the override does, who set it, when and why.
func (o Override) String() string {
	var what []string
	switch {
	case o.Inactive:
		what = append(what, "inactive")
	case o.Depooled:
		what = append(what, "depooled")
	}
	if o.Weight != nil {
		what = append(what, fmt.Sprintf("weight %d", *o.Weight))
	}
	if len(what) == 0 {
		return ""
	}
	s := strings.Join(what, ", ")
	if o.Actor != "" {
		s += " by " + o.Actor
	}
	if !o.Time.IsZero() {
		s += " at " + o.Time.UTC().Format(time.RFC3339)
	}
	if o.Reason != "" {
		s += ": " + o.Reason
	}
	return s
}

// Receipt says what a store wrote: Revision is the intent revision that includes the
// change (0 when the change altered nothing), Where names the store.
type Receipt struct {
	Revision int64
	Where    string
}

// Check sees the intent before and after a change (as read by the store, in the same
// transaction as the write) and may refuse it.
type Check func(before, after Intent) error

// ErrUnknownOutcome wraps a store error after which the change may or may not have
// been stored (a lost answer from etcd).
var ErrUnknownOutcome = errors.New("the change may or may not have been stored")

// ErrConflict wraps a store error for changes that raced other writers too often.
var ErrConflict = errors.New("conflicting concurrent changes")

// Store is where one service's admin intent lives.
type Store interface {
	// Watch delivers the intent to out whenever it changes (the first call reports the
	// initial state or why it cannot be read) until ctx is done. out must not block.
	Watch(ctx context.Context, out func(Intent))
	// Apply stores ch durably if check (when not nil) accepts the resulting intent. On
	// error nothing was stored, unless the error wraps ErrUnknownOutcome.
	Apply(ctx context.Context, ch Change, check Check) (Receipt, error)
	// String names the store for messages ("conftool <prefix>", "state file <path>").
	String() string
}
