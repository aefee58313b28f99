package ipvs

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/utils/clock"
)

// loop is the bounded-frequency runner both reconcilers (IPVS and VIP addresses) use:
// the first pass at once; then a pass when kicked, at most one per minInterval; when
// the last pass asked for one (want: a resync, a drain poll, a pool's retry); and after
// a pass that failed as a whole (the backend unreachable), with exponential backoff up
// to maxBackoff. Errors are logged and retried, never returned.
//
// Failures of single objects are not the loop's business: a pass reports them itself
// and asks for its retry through want, so one object's backoff never delays another's
// change (see Reconciler).
type loop struct {
	clock       clock.Clock
	log         *slog.Logger
	what        string
	kick        <-chan struct{}
	minInterval time.Duration
	maxBackoff  time.Duration
	// idle, if set, is called each time the loop is about to wait, with the time of
	// its next pass (zero: none until kicked); tests synchronise with a fake clock
	// through it instead of sleeping.
	idle func(due time.Time)
}

// run runs pass until ctx is done. A zero want means "only when kicked".
func (l *loop) run(ctx context.Context, pass func(ctx context.Context) (want time.Time, err error)) {
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	due := l.clock.Now() // the first pass at once
	var notBefore time.Time
	failures := 0
	for {
		now := l.clock.Now()
		if !due.IsZero() && !due.After(now) {
			want, err := pass(ctx)
			if ctx.Err() != nil {
				return
			}
			done := l.clock.Now()
			notBefore = done.Add(l.minInterval)
			due = want
			if err != nil {
				failures++
				retry := done.Add(backoff(failures, l.minInterval, l.maxBackoff))
				l.log.Warn(l.what+" failed; retrying", "retry_in", retry.Sub(done).Round(time.Millisecond), "error", err)
				notBefore = later(notBefore, retry)
				due = retry
			} else {
				failures = 0
			}
			if !due.IsZero() {
				due = later(due, notBefore)
			}
			continue
		}
		var timerC <-chan time.Time
		if !due.IsZero() {
			if timer == nil {
				timer = l.clock.NewTimer(due.Sub(now))
			} else {
				timer.Reset(due.Sub(now))
			}
			timerC = timer.C()
		}
		if l.idle != nil {
			l.idle(due)
		}
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
			// Coalesce: at most one pass per minInterval (or per backoff step).
			at := later(notBefore, l.clock.Now())
			if due.IsZero() || at.Before(due) {
				due = at
			}
		case <-timerC:
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// earliest returns the earlier of two times, a zero time meaning "never".
func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero() || a.Before(b):
		return a
	}
	return b
}

// backoff is the delay before retry n (1-based): base, 2*base, 4*base ... capped.
func backoff(n int, base, limit time.Duration) time.Duration {
	base = max(base, 10*time.Millisecond)
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}
