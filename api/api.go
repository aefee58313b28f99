// Package api serves kubal over HTTP: PyBal's read-only instrumentation endpoints
// (byte-compatible with PyBal's text and JSON), /metrics, /healthz and /readyz, a
// kubal-only /v1 read model with the "why" of each server, and the authenticated admin
// endpoints (pool, depool, weight) that SREs and kubalctl use.
//
// The package holds no state of its own: it reads everything through State and changes
// things only through Admin, both implemented by the daemon.
package api

import (
	"context"
	"errors"

	"github.com/kubal/kubal/pool"
)

// State is the daemon's read model.
type State interface {
	// Pools returns the pool (service section) names in config order.
	Pools() []string
	// Snapshot returns the current state of one pool. A returned snapshot must never
	// be modified afterwards (publish a new one instead): /pools/<pool> caches its
	// rendering per Servers array.
	Snapshot(pool string) (pool.Snapshot, bool)
	// Alerts returns kubal's own alerts (a source down, a failed reload, an etcd
	// outage), shown in /alerts next to PyBal's pool alerts.
	Alerts() []Alert
	// Ready returns nil once the config is loaded and the sources have synced.
	Ready() error
}

// Alert levels.
const (
	LevelWarning  = "warning"
	LevelCritical = "critical"
)

// Alert is one problem. Level is LevelWarning or LevelCritical; Pool names the pool
// it is about, when there is one.
type Alert struct {
	Level string
	Pool  string
	Msg   string
}

// Op is an admin operation.
type Op string

// Admin operations.
const (
	OpPool   Op = "pool"
	OpDepool Op = "depool"
	OpWeight Op = "weight"
	// OpClear removes an admin override (the source's word counts again).
	OpClear Op = "clear"
	// OpConfirmRemoval applies a held server-list update (see RemovalConfirmer).
	OpConfirmRemoval Op = "confirm-removal"
)

// Action is one validated admin request. Weight is set only for OpWeight. Actor is the
// authenticated identity: the token name from admin-token-file, or "cert:<subject CN>"
// for an mTLS client.
type Action struct {
	Pool, Host string
	Op         Op
	Weight     int
	Reason     string
	Force      bool
	Actor      string
}

// Outcome is the server's state before and after an applied Action.
type Outcome struct {
	Old, New pool.ServerState
}

// Sentinel errors an Admin wraps (fmt.Errorf("...: %w", api.ErrThreshold)) so that the
// handler picks the HTTP status; the wrapped message is shown to the client.
var (
	ErrNotFound  = errors.New("not found")                   // 404
	ErrThreshold = errors.New("refused by depool threshold") // 409 unless force
	ErrConflict  = errors.New("conflict")                    // 409 (e.g. a concurrent etcd change)
)

// Admin applies admin actions durably (conftool in etcd, or the state file). On error
// nothing may have changed.
type Admin interface {
	Apply(ctx context.Context, a Action) (Outcome, error)
}

// RemovalConfirmer is implemented by an Admin that can apply, on an admin's word, a
// server-list update held back for removing too many servers at once
// (source.Guard.Confirm). held is false when the pool has no held update.
type RemovalConfirmer interface {
	ConfirmRemoval(ctx context.Context, pool, actor string) (held bool, err error)
}
