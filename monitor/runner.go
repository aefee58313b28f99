package monitor

import (
	"context"
	"fmt"
	"time"
)

// Checker performs one probe. It must honour ctx (cancellation and the check
// timeout) and return a verdict; the runner owns scheduling and hysteresis.
type Checker interface {
	Check(ctx context.Context) Result
}

// runner is a probe that runs until ctx ends, emitting raw results: the looping
// runner below for Checkers, or a long-lived monitor (IdleConnection, UDP) that emits
// as things happen.
type runner interface {
	Run(ctx context.Context, emit func(Result))
}

// loop runs a Checker with PyBal's LoopingCall(now=False) timing: the first check
// one interval after start (minus a start-up offset that spreads many probes over
// the interval, so never later than PyBal), then on a fixed grid of `interval`;
// a check that overruns skips the ticks it missed instead of bunching up.
type loop struct {
	clk      clock
	interval time.Duration
	timeout  time.Duration // 0: no timeout (RunCommand timeout = 0)
	offset   time.Duration // start-up spread, in [0, interval)
	check    Checker
	// hurry and promptDelay: see env; nil in a loop that is never hurried.
	hurry       <-chan struct{}
	promptDelay func(interval time.Duration) time.Duration
}

// newLoop is the loop of a Checker run in e.
func (e *env) newLoop(interval, timeout time.Duration, check Checker) *loop {
	return &loop{clk: e.clk, interval: interval, timeout: timeout, offset: e.offset(interval),
		check: check, hurry: e.hurry, promptDelay: e.promptDelay}
}

func (l *loop) Run(ctx context.Context, emit func(Result)) {
	next := l.clk.Now().Add(l.interval - l.offset)
	done := make(chan struct{})
	var ok bool
	for first := true; ; first = false {
		if first {
			next, ok = firstWait(ctx, l.clk, next, l.interval, l.hurry, l.promptDelay)
		} else {
			ok = sleep(ctx, l.clk, next.Sub(l.clk.Now()))
		}
		if !ok {
			return
		}
		// The check (and the report it leads to) runs on its own short-lived
		// goroutine: the stack it grows (HTTP, exec, DNS) is freed when it ends,
		// and this goroutine, which only waits on timers, stays small. That keeps
		// an idle looping probe at a few KiB.
		go func() {
			defer func() { done <- struct{}{} }()
			cctx, cancel := ctx, context.CancelFunc(func() {})
			if l.timeout > 0 {
				cctx, cancel = context.WithTimeout(ctx, l.timeout)
			}
			r := safeCheck(cctx, l.check)
			cancel()
			if ctx.Err() != nil {
				return // stopped mid-check: not a result (PyBal ignores CancelledError)
			}
			emit(r)
		}()
		<-done
		next = nextTick(next, l.interval, l.clk.Now())
	}
}

// firstWait sleeps until next, the first check's time, or until ctx ends (false).
// When hurry fires first, the first check moves to within promptDelay(interval) of
// then, if that is earlier; it returns the time it slept until.
func firstWait(ctx context.Context, clk clock, next time.Time, interval time.Duration, hurry <-chan struct{}, promptDelay func(time.Duration) time.Duration) (time.Time, bool) {
	if hurry == nil || promptDelay == nil {
		return next, sleep(ctx, clk, next.Sub(clk.Now()))
	}
	t := clk.NewTimer(next.Sub(clk.Now()))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return next, false
	case <-t.C():
		return next, true
	case <-hurry:
	}
	if soon := clk.Now().Add(promptDelay(interval)); soon.Before(next) {
		next = soon
	}
	return next, sleep(ctx, clk, next.Sub(clk.Now()))
}

// safeCheck runs one check; a panic is a down result, not a crashed daemon (PyBal
// restarted a loop whose check raised).
func safeCheck(ctx context.Context, c Checker) (r Result) {
	defer func() {
		if p := recover(); p != nil {
			r = Result{Reason: fmt.Sprintf("monitor check panicked: %v", p)}
		}
	}()
	return c.Check(ctx)
}

// nextTick returns the first grid point prev+k*interval (k >= 1) after now.
func nextTick(prev time.Time, interval time.Duration, now time.Time) time.Time {
	next := prev.Add(interval)
	if !next.After(now) {
		missed := now.Sub(next)/interval + 1
		next = next.Add(missed * interval)
	}
	return next
}

// hysteresis applies rise/fall to raw results. The first result is always reported
// (PyBal's firstCheck); afterwards a change needs `rise` consecutive ups or `fall`
// consecutive downs. Default 1/1 is PyBal: every change reported at once.
type hysteresis struct {
	rise, fall int
	known      bool
	up         bool
	streak     int // consecutive results disagreeing with up
}

// feed takes one raw result and reports whether the reported state changed.
func (h *hysteresis) feed(r Result) bool {
	if !h.known {
		h.known, h.up, h.streak = true, r.Up, 0
		return true
	}
	if r.Up == h.up {
		h.streak = 0
		return false
	}
	h.streak++
	need := h.fall
	if r.Up {
		need = h.rise
	}
	if h.streak < need {
		return false
	}
	h.up, h.streak = r.Up, 0
	return true
}
