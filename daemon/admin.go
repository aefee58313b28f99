package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kubal/kubal/adminstate"
	"github.com/kubal/kubal/api"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/conftool"
	"github.com/kubal/kubal/pool"
)

// tlsFiles is the admin listener's TLS setup (mTLS when admin-client-ca is set).
type tlsFiles struct{ cfg *tls.Config }

// adminHandler builds the admin API when it is configured: a token file, or TLS with a
// client CA. Without either, no admin listener runs (an unauthenticated admin API is
// never offered).
func (d *Daemon) adminHandler(g config.Global) (http.Handler, *tlsFiles, error) {
	var tlsOn *tlsFiles
	if g.AdminTLSCert != "" || g.AdminTLSKey != "" || g.AdminClientCA != "" {
		c, err := api.TLSConfig(g.AdminTLSCert, g.AdminTLSKey, g.AdminClientCA)
		if err != nil {
			return nil, nil, fmt.Errorf("admin TLS: %w", err)
		}
		tlsOn = &tlsFiles{cfg: c}
	}
	if g.AdminTokenFile == "" && (tlsOn == nil || g.AdminClientCA == "") {
		d.log.Warn("admin API disabled: set admin-token-file (or admin-tls-* with admin-client-ca) to enable it")
		return nil, nil, nil
	}
	auth, err := api.LoadAuth(g.AdminTokenFile)
	if err != nil {
		return nil, nil, fmt.Errorf("admin-token-file: %w", err)
	}
	return api.NewAdmin(d, d, auth, d.log.With("system", "admin"), api.WithMetrics(api.NewAdminMetrics(d.reg))), tlsOn, nil
}

// openState opens the local admin state file (services without conftool).
func (d *Daemon) openState(g config.Global) error {
	d.extMu.Lock()
	defer d.extMu.Unlock()
	if d.state != nil {
		return nil
	}
	st, err := adminstate.Open(g.StateFile, d.log.With("system", "adminstate"))
	if err != nil {
		return fmt.Errorf("state-file: %w", err)
	}
	d.state = st
	return nil
}

// localOverrides returns the state file's overrides of one pool.
func (d *Daemon) localOverrides(name string) map[string]override {
	d.extMu.Lock()
	st := d.state
	d.extMu.Unlock()
	out := map[string]override{}
	if st == nil {
		return out
	}
	for host, o := range st.Overrides(name) {
		out[host] = override{Enabled: o.Enabled, Weight: o.Weight, Reason: o.Reason}
	}
	return out
}

// Apply implements api.Admin: validate against the pool, check the depool threshold
// (unless forced), write durably (etcd or the state file), then wait until the pool
// shows the change.
func (d *Daemon) Apply(ctx context.Context, a api.Action) (api.Outcome, error) {
	d.mu.Lock()
	rs, ok := d.services[a.Pool]
	cfg := d.cfg
	d.mu.Unlock()
	if !ok {
		return api.Outcome{}, fmt.Errorf("pool %q: %w", a.Pool, api.ErrNotFound)
	}
	svc, _ := cfg.Service(a.Pool)
	old, ok := rs.snap.Load().Server(a.Host)
	if !ok {
		return api.Outcome{}, fmt.Errorf("server %q in pool %q: %w", a.Host, a.Pool, api.ErrNotFound)
	}
	if a.Op == api.OpDepool && !a.Force {
		var verr error
		if err := rs.call(ctx, func() { verr = rs.coord.DepoolAllowed(a.Host) }); err != nil {
			return api.Outcome{}, err
		}
		if verr != nil {
			return api.Outcome{}, fmt.Errorf("%v: %w", verr, api.ErrThreshold)
		}
	}

	cli, prefix, viaEtcd, err := d.conftoolTarget(svc)
	if err != nil {
		return api.Outcome{}, err
	}
	want := func(s pool.ServerState) bool { return true }
	switch a.Op {
	case api.OpDepool:
		want = func(s pool.ServerState) bool { return !s.Enabled }
	case api.OpPool:
		want = func(s pool.ServerState) bool { return s.Enabled }
	case api.OpWeight:
		want = func(s pool.ServerState) bool { return s.Weight == a.Weight }
	}
	if viaEtcd {
		var ch conftool.Change
		switch a.Op {
		case api.OpDepool:
			no := "no"
			ch.Pooled = &no
		case api.OpPool:
			yes := "yes"
			ch.Pooled = &yes
		case api.OpWeight:
			w := a.Weight
			ch.Weight = &w
		}
		if _, _, err := d.conftoolWriter(cli).Apply(ctx, prefix, a.Host, ch, a.Actor, a.Reason); err != nil {
			if errors.Is(err, conftool.ErrConflict) {
				return api.Outcome{}, fmt.Errorf("%v: %w", err, api.ErrConflict)
			}
			return api.Outcome{}, err
		}
	} else {
		if err := d.applyLocal(ctx, rs, a); err != nil {
			return api.Outcome{}, err
		}
	}
	// The effect shows in /pools within 100 ms normally (etcd watch round trip or a
	// local event); wait up to 2 s before answering with the new state.
	deadline := time.Now().Add(2 * time.Second)
	for {
		cur, ok := rs.snap.Load().Server(a.Host)
		if ok && want(cur) || time.Now().After(deadline) {
			return api.Outcome{Old: old, New: cur}, nil
		}
		select {
		case <-ctx.Done():
			return api.Outcome{Old: old, New: cur}, nil
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// applyLocal records an admin action in the fsync'd state file and applies it.
func (d *Daemon) applyLocal(ctx context.Context, rs *runningService, a api.Action) error {
	d.extMu.Lock()
	st := d.state
	d.extMu.Unlock()
	if st == nil {
		return errors.New("no state file open")
	}
	cur := st.Overrides(a.Pool)[a.Host]
	next := cur
	switch a.Op {
	case api.OpDepool:
		f := false
		next.Enabled = &f
	case api.OpPool:
		// Pooling removes the override: the source's word counts again.
		next.Enabled = nil
	case api.OpWeight:
		w := a.Weight
		next.Weight = &w
	}
	next.Reason, next.Actor, next.Time = a.Reason, a.Actor, time.Now().UTC()
	if _, err := st.Set(a.Pool, a.Host, next, adminstate.Audit{Actor: a.Actor, Action: string(a.Op), Reason: a.Reason}); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	ov := d.localOverrides(a.Pool)
	return rs.call(ctx, func() { rs.setOverrides(ov) })
}
