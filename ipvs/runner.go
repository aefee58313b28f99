package ipvs

import (
	"context"
	"log/slog"
	"time"
)

// runLoop is the bounded-frequency runner both reconcilers (IPVS and VIP addresses)
// use: the first pass at once; then a pass when kicked, at most one per minInterval;
// when the last pass asked for one (want: a resync, a drain poll); and after a failure,
// with exponential backoff up to maxBackoff. Errors are logged and retried, never
// returned. It returns when ctx is done.
func runLoop(ctx context.Context, log *slog.Logger, what string, kick <-chan struct{},
	minInterval, maxBackoff time.Duration, pass func(ctx context.Context) (want time.Time, err error)) {
	timer := time.NewTimer(0) // the first pass at once
	defer timer.Stop()
	deadline := time.Now()
	var notBefore time.Time
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
			// Coalesce: at most one pass per minInterval (or per backoff step).
			at := later(notBefore, time.Now())
			if at.Before(deadline) {
				deadline = at
				timer.Reset(time.Until(at))
			}
			continue
		case <-timer.C:
		}
		want, err := pass(ctx)
		if ctx.Err() != nil {
			return
		}
		done := time.Now()
		notBefore = done.Add(minInterval)
		next := want
		if err != nil {
			failures++
			retry := done.Add(backoff(failures, minInterval, maxBackoff))
			log.Warn(what+" failed; retrying", "retry_in", retry.Sub(done).Round(time.Millisecond), "error", err)
			notBefore = later(notBefore, retry)
			next = retry
		} else {
			failures = 0
		}
		next = later(next, notBefore)
		deadline = next
		timer.Reset(time.Until(next))
	}
}
