package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/service"
)

// service returns the actor of a pool, nil when there is none.
func (d *Daemon) service(name string) *service.Service {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if r, ok := d.services[name]; ok {
		return r.svc
	}
	return nil
}

// Pools implements api.State.
func (d *Daemon) Pools() []string {
	cfg := d.Config()
	out := make([]string, 0, len(cfg.Services))
	for _, svc := range cfg.Services {
		if d.service(svc.Name) != nil {
			out = append(out, svc.Name)
		}
	}
	return out
}

// Snapshot implements api.State.
func (d *Daemon) Snapshot(name string) (pool.Snapshot, bool) {
	s := d.service(name)
	if s == nil {
		return pool.Snapshot{}, false
	}
	return *s.State().Snapshot, true
}

// Ready implements api.State.
func (d *Daemon) Ready() error {
	var waiting []string
	for _, name := range d.Pools() {
		if s := d.service(name); s != nil && !s.State().Synced {
			waiting = append(waiting, name)
		}
	}
	if len(waiting) > 0 {
		sort.Strings(waiting)
		return fmt.Errorf("waiting for the first server list (and admin state) of: %s", strings.Join(waiting, ", "))
	}
	return nil
}

// Alerts implements api.State: kubal's own alerts beyond PyBal's pool alerts.
func (d *Daemon) Alerts() []api.Alert {
	var out []api.Alert
	warn := func(format string, args ...any) {
		out = append(out, api.Alert{Level: api.LevelWarning, Msg: fmt.Sprintf(format, args...)})
	}
	d.mu.RLock()
	reloadErr, keys := d.reloadErr, d.restartKeys
	d.mu.RUnlock()
	if reloadErr != nil {
		warn("config reload failed, running the previous config: %s", firstLine(reloadErr.Error()))
	}
	if len(keys) > 0 {
		warn("restart kubal to apply changed [global] settings: %s", strings.Join(keys, ", "))
	}
	for _, svc := range d.Config().Services {
		s := d.service(svc.Name)
		if s == nil {
			warn("%s: service not running (see the log: its source could not be built)", svc.Name)
			continue
		}
		st := s.State()
		if !st.Synced {
			warn("%s: waiting for the first server list and admin state: keeping the kernel's destinations as they are", svc.Name)
		}
		if st.SourceErr != nil {
			warn("%s: server-list source failing, keeping last known servers: %s", svc.Name, firstLine(st.SourceErr.Error()))
		}
		if st.Intent.Err != nil {
			warn("%s: admin store failing, keeping last known admin state: %s", svc.Name, firstLine(st.Intent.Err.Error()))
		}
		// With an etcd:// source the store reads the same keys: one alert per key.
		problems := maps.Clone(st.Intent.Problems)
		if problems == nil {
			problems = map[string]string{}
		}
		maps.Copy(problems, st.Problems)
		for _, h := range slices.Sorted(maps.Keys(problems)) {
			warn("%s: %s keeps its previous state: %s", svc.Name, h, firstLine(problems[h]))
		}
	}
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (and more)"
	}
	return s
}

// errThreshold marks a refusal by the depool threshold check.
type errThreshold struct{ error }

// Apply implements api.Admin: the pool's admin store checks the depool threshold
// (unless forced) against the intent it writes over and stores the change durably;
// then Apply waits until the service has published a state that includes it. The
// store write is not cut by the client going away: once stored, a change is applied.
func (d *Daemon) Apply(ctx context.Context, a api.Action) (api.Outcome, error) {
	s := d.service(a.Pool)
	if s == nil {
		return api.Outcome{}, fmt.Errorf("pool %q: %w", a.Pool, api.ErrNotFound)
	}
	old, ok := s.State().Snapshot.Server(a.Host)
	if !ok {
		return api.Outcome{}, fmt.Errorf("server %q in pool %q: %w", a.Host, a.Pool, api.ErrNotFound)
	}
	ch := admin.Change{Host: a.Host, Op: admin.Op(a.Op), Weight: a.Weight, Actor: a.Actor, Reason: a.Reason, Force: a.Force}
	var check admin.Check
	if !a.Force {
		th := s.ThresholdCheck(a.Host)
		check = func(before, after admin.Intent) error {
			if err := th(before, after); err != nil {
				return errThreshold{err}
			}
			return nil
		}
	}
	store := s.Store()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	rc, err := store.Apply(wctx, ch, check)
	cancel()
	var refused errThreshold
	switch {
	case errors.As(err, &refused):
		return api.Outcome{}, fmt.Errorf("nothing stored: %v: %w", refused.error, api.ErrThreshold)
	case errors.Is(err, admin.ErrConflict):
		return api.Outcome{}, fmt.Errorf("nothing stored: %v: %w", err, api.ErrConflict)
	case errors.Is(err, admin.ErrUnknownOutcome):
		return api.Outcome{}, fmt.Errorf("%s: %w; check the pool before retrying", store, err)
	case err != nil:
		return api.Outcome{}, fmt.Errorf("nothing stored in %s: %w", store, err)
	}
	st, err := s.WaitAdmin(ctx, rc.Revision)
	if err != nil {
		return api.Outcome{}, fmt.Errorf("stored in %s (revision %d) and being applied, but not yet confirmed in force: %w", store, rc.Revision, err)
	}
	cur, _ := st.Snapshot.Server(a.Host)
	if a.Op == api.OpPool && !cur.Enabled {
		return api.Outcome{}, fmt.Errorf("stored in %s, but %s stays disabled by its source: %s: %w", store, a.Host, cur.Why, api.ErrConflict)
	}
	return api.Outcome{Old: old, New: cur}, nil
}
