package service

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/pool"
)

// Errors of Apply, besides the store's (admin.ErrConflict, admin.ErrUnknownOutcome).
var (
	ErrNoServer  = errors.New("no such server")
	ErrThreshold = errors.New("refused by depool threshold")
	// ErrNotInForce: the change is stored and being applied, but ctx ended before the
	// service published it.
	ErrNotInForce = errors.New("stored, not yet confirmed in force")
	// ErrStopped: the service stopped (a reload replaced it) before the change was in
	// force; the new service reads its own admin store.
	ErrStopped = errors.New("the service was replaced by a reload before the change was in force")
)

// storeTimeout bounds a store write, which a client going away must not cut in half.
const storeTimeout = 10 * time.Second

// Apply stores an admin change through the service's admin store - with the depool
// threshold checked against the intent it is written over, unless ch.Force - then
// waits until the service has published a state that includes it. It returns the
// server's state before and after. Every error says what was stored.
func (s *Service) Apply(ctx context.Context, ch admin.Change) (old, new pool.ServerState, err error) {
	old, ok := s.State().Snapshot.Server(ch.Host)
	if !ok {
		return old, new, fmt.Errorf("server %q in pool %q: %w", ch.Host, s.name, ErrNoServer)
	}
	var check admin.Check
	if !ch.Force {
		th := s.ThresholdCheck(ch.Host)
		check = func(before, after admin.Intent) error {
			if err := th(before, after); err != nil {
				return fmt.Errorf("%w: %w", err, ErrThreshold)
			}
			return nil
		}
	}
	store := s.deps.Store
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	rc, err := store.Apply(wctx, ch, check)
	cancel()
	switch {
	case errors.Is(err, ErrThreshold):
		return old, new, err // "refused": nothing was stored
	case errors.Is(err, admin.ErrUnknownOutcome):
		return old, new, fmt.Errorf("%s: %w; check the pool before retrying", store, err)
	case err != nil:
		return old, new, fmt.Errorf("nothing stored in %s: %w", store, err)
	}
	st, err := s.WaitAdmin(ctx, rc.Revision)
	if errors.Is(err, ErrStopped) {
		return old, new, fmt.Errorf("stored in %s (revision %d), but %w: check the pool", store, rc.Revision, err)
	}
	if err != nil {
		return old, new, fmt.Errorf("%w: in %s at revision %d, being applied (%w)", ErrNotInForce, store, rc.Revision, err)
	}
	// A pool of a server its source disables is stored and answered as such: new
	// shows it still disabled, with why (kubalctl says so and exits 1).
	new, _ = st.Snapshot.Server(ch.Host)
	return old, new, nil
}

// Alerts are the service's current problems, one line each.
func (st *State) Alerts() []string {
	var out []string
	name := st.Config.Name
	if !st.Synced {
		out = append(out, name+": waiting for the first server list and admin state: keeping the kernel's destinations as they are")
	}
	if st.SourceErr != nil {
		out = append(out, fmt.Sprintf("%s: server-list source failing, keeping last known servers: %s", name, FirstLine(st.SourceErr.Error())))
	}
	if st.Intent.Err != nil {
		out = append(out, fmt.Sprintf("%s: admin store failing, keeping last known admin state: %s", name, FirstLine(st.Intent.Err.Error())))
	}
	// A server that cannot be resolved (or only to the other address family: a v6
	// host in a v4 pool) is out of the pool: say so, not only in a log line.
	for _, sv := range st.Snapshot.Servers {
		if !sv.Ready && strings.HasPrefix(sv.Why, "resolve failed") {
			out = append(out, fmt.Sprintf("%s: %s is not pooled: %s", name, sv.Host, FirstLine(sv.Why)))
		}
	}
	// With an etcd:// source the store reads the same keys: one alert per key.
	problems := maps.Clone(st.Intent.Problems)
	if problems == nil {
		problems = map[string]string{}
	}
	maps.Copy(problems, st.Problems)
	for _, h := range slices.Sorted(maps.Keys(problems)) {
		out = append(out, fmt.Sprintf("%s: %s: %s", name, h, FirstLine(problems[h])))
	}
	return out
}

// FirstLine shortens a multi-line message (e.g. every config error) for one alert line.
func FirstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (and more)"
	}
	return s
}
