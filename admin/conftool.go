package admin

import (
	"context"
	"errors"
	"fmt"

	"github.com/kubal/kubal/conftool"
)

// Conftool keeps admin intent in conftool keys in etcd: pooled=yes|no|inactive and a
// weight per server, shared by every LVS host of the site.
type Conftool struct {
	keys   *conftool.Keys
	writer *conftool.Writer
	prefix string
}

// NewConftool returns the store of the pool under prefix.
func NewConftool(keys *conftool.Keys, w *conftool.Writer, prefix string) *Conftool {
	return &Conftool{keys: keys, writer: w, prefix: prefix}
}

func (c *Conftool) String() string { return "conftool " + c.prefix }

// Watch implements Store.
func (c *Conftool) Watch(ctx context.Context, out func(Intent)) {
	c.keys.Run(ctx, func(ks conftool.KeySet) {
		out(Intent{Revision: ks.Revision, Loaded: ks.Loaded, Overrides: fromKeys(ks.Keys), Err: ks.Err, Problems: ks.Problems})
	})
}

func fromKeys(keys map[string]conftool.Key) map[string]Override {
	out := make(map[string]Override, len(keys))
	for host, k := range keys {
		var o Override
		switch k.Pooled {
		case "", conftool.PooledYes:
		case conftool.PooledInactive:
			o.Inactive = true
		default:
			o.Depooled, o.Reason = true, "conftool: pooled="+k.Pooled
		}
		o.Weight = k.Weight
		if o != (Override{}) {
			out[host] = o
		}
	}
	return out
}

// Apply implements Store: one compare-and-swap over the pool's keys, so the check and
// the write see the same keys on every LVS host.
func (c *Conftool) Apply(ctx context.Context, ch Change, check Check) (Receipt, error) {
	if err := ch.Validate(); err != nil {
		return Receipt{}, err
	}
	var cc conftool.Change
	switch ch.Op {
	case OpDepool:
		no := conftool.PooledNo
		cc.Pooled = &no
	case OpPool:
		yes := conftool.PooledYes
		cc.Pooled = &yes
	case OpWeight:
		w := ch.Weight
		cc.Weight = &w
	case OpClear:
		return Receipt{}, fmt.Errorf("%s: conftool keys are this pool's shared state on every LVS host: set pooled/weight instead of clearing", c)
	}
	wr := conftool.Write{Prefix: c.prefix, Host: ch.Host, Change: cc, Actor: ch.Actor, Reason: ch.Reason, Force: ch.Force}
	if check != nil {
		wr.Check = func(before, after map[string]conftool.Key) error {
			return check(Intent{Loaded: true, Overrides: fromKeys(before)}, Intent{Loaded: true, Overrides: fromKeys(after)})
		}
	}
	res, err := c.writer.ApplyChecked(ctx, wr)
	switch {
	case errors.Is(err, conftool.ErrUnknownOutcome):
		return Receipt{}, fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
	case errors.Is(err, conftool.ErrConflict):
		return Receipt{}, fmt.Errorf("%w: %w", ErrConflict, err)
	case err != nil:
		return Receipt{}, err
	}
	return Receipt{Revision: res.Revision, Where: c.String()}, nil
}
