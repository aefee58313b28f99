package daemon

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/service"
)

func (d *Daemon) service(name string) *service.Service { return d.services.Get(name) }

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
	if d.Config().K8sServices != nil && d.declared.Load() == nil {
		waiting = append(waiting, "["+config.K8sServicesSection+"] (the Kubernetes Services)")
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
	reloadErr, keys, listenErr, ls := d.reloadErr, d.restartKeys, d.listenErr, d.listeners
	d.mu.RUnlock()
	if reloadErr != nil {
		warn("config reload failed, running the previous config: %s", service.FirstLine(reloadErr.Error()))
	}
	if listenErr != nil {
		warn("HTTP listeners of the reloaded config could not start: %s", service.FirstLine(listenErr.Error()))
	}
	if err := ls.TokenErr(); err != nil {
		warn("admin-token-file cannot be read, the tokens read before stay in force: %s", service.FirstLine(err.Error()))
	}
	if len(keys) > 0 {
		warn("restart kubal to apply changed [global] settings: %s", strings.Join(keys, ", "))
	}
	if d.ipvs != nil {
		for _, msg := range d.ipvs.Alerts() {
			warn("%s", msg)
		}
	}
	for _, msg := range d.declared.Load().Alerts() {
		warn("%s", msg)
	}
	for _, svc := range d.Config().Services {
		s := d.service(svc.Name)
		if s == nil {
			warn("%s: service not running (see the log: its source could not be built)", svc.Name)
			continue
		}
		for _, msg := range s.State().Alerts() {
			warn("%s", msg)
		}
	}
	return out
}

// Apply implements api.Admin through the pool's service (service.Apply): the store
// checks the depool threshold and writes durably, then the service publishes it.
func (d *Daemon) Apply(ctx context.Context, a api.Action) (api.Outcome, error) {
	s := d.service(a.Pool)
	if s == nil {
		return api.Outcome{}, fmt.Errorf("pool %q: %w", a.Pool, api.ErrNotFound)
	}
	old, cur, err := s.Apply(ctx, admin.Change{Host: a.Host, Op: admin.Op(a.Op), Weight: a.Weight, Actor: a.Actor, Reason: a.Reason, Force: a.Force})
	for from, to := range map[error]error{
		service.ErrNoServer: api.ErrNotFound, service.ErrThreshold: api.ErrThreshold,
		admin.ErrConflict: api.ErrConflict, service.ErrStopped: api.ErrConflict,
	} {
		if errors.Is(err, from) {
			return api.Outcome{}, kindOf{err, to}
		}
	}
	if err != nil {
		return api.Outcome{}, err
	}
	return api.Outcome{Old: old, New: cur}, nil
}

// ConfirmRemoval implements api.RemovalConfirmer: apply a pool's held server-list
// update now.
func (d *Daemon) ConfirmRemoval(_ context.Context, pool, actor string) (bool, error) {
	s := d.service(pool)
	if s == nil {
		return false, fmt.Errorf("pool %q: %w", pool, api.ErrNotFound)
	}
	held := s.ConfirmRemoval()
	d.log.Info("admin: held server-list update confirmed", "system", pool, "actor", actor, "held", held)
	return held, nil
}

// kindOf gives an error the api's kind (for the HTTP status) without changing its text.
type kindOf struct{ err, kind error }

func (e kindOf) Error() string   { return e.err.Error() }
func (e kindOf) Unwrap() []error { return []error{e.err, e.kind} }
