package monitor

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"
)

func TestHysteresis(t *testing.T) {
	U, D := Result{Up: true}, Result{Reason: "x"}
	cases := []struct {
		name       string
		rise, fall int
		in         []Result
		want       []bool // reported change per result
	}{
		{"pybal 1/1 every change", 1, 1, []Result{U, U, D, D, U}, []bool{true, false, true, false, true}},
		{"first down reported", 1, 1, []Result{D, D, U}, []bool{true, false, true}},
		{"fall 3", 1, 3, []Result{U, D, D, U, D, D, D, D}, []bool{true, false, false, false, false, false, true, false}},
		{"rise 2", 2, 1, []Result{D, U, D, U, U, U}, []bool{true, false, false, false, true, false}},
		{"first result ignores rise/fall", 5, 5, []Result{U}, []bool{true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := hysteresis{rise: c.rise, fall: c.fall}
			for i, r := range c.in {
				if got := h.feed(r); got != c.want[i] {
					t.Fatalf("result %d (%v): changed=%v, want %v", i, r.Up, got, c.want[i])
				}
			}
		})
	}
}

func TestNextTick(t *testing.T) {
	t0 := time.Unix(0, 0)
	s := time.Second
	cases := []struct {
		prev, now, want time.Duration
	}{
		{10 * s, 10 * s, 20 * s},     // instant check
		{10 * s, 19 * s, 20 * s},     // slow but in time
		{10 * s, 20 * s, 30 * s},     // finished exactly on the tick: that tick is missed
		{10 * s, 45 * s, 50 * s},     // 3 ticks missed, skipped
		{10 * s, 10*s + 1, 20 * s},   // tiny
		{10 * s, 1000 * s, 1010 * s}, // far behind
	}
	for _, c := range cases {
		got := nextTick(t0.Add(c.prev), 10*s, t0.Add(c.now)).Sub(t0)
		if got != c.want {
			t.Errorf("nextTick(prev=%v, now=%v) = %v, want %v", c.prev, c.now, got, c.want)
		}
	}
}

// scriptedChecker records when it runs and advances the fake clock by a scripted
// duration to simulate slow checks.
type scriptedChecker struct {
	clk       *fakeClock
	durations []time.Duration
	mu        sync.Mutex
	at        []time.Time
	ran       chan struct{}
}

func (s *scriptedChecker) Check(ctx context.Context) Result {
	s.mu.Lock()
	i := len(s.at)
	s.at = append(s.at, s.clk.Now())
	s.mu.Unlock()
	if i < len(s.durations) {
		s.clk.Advance(s.durations[i])
	}
	s.ran <- struct{}{}
	return Result{Up: true}
}

func TestLoopTiming(t *testing.T) {
	cases := []struct {
		name      string
		offset    time.Duration
		durations []time.Duration
		want      []time.Duration // check start times relative to Run start
	}{
		{"first check after one interval, fixed cadence", 0, nil, []time.Duration{10, 20, 30, 40}},
		{"overrun skips missed ticks", 0, []time.Duration{0, 25}, []time.Duration{10, 20, 50, 60}},
		{"check slower than nothing keeps grid", 0, []time.Duration{3, 9}, []time.Duration{10, 20, 30, 40}},
		{"start-up offset shifts the grid earlier", 4, nil, []time.Duration{6, 16, 26}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := newFakeClock()
			sc := &scriptedChecker{clk: clk, ran: make(chan struct{}, 10)}
			for _, d := range c.durations {
				sc.durations = append(sc.durations, d*time.Second)
			}
			l := &loop{clk: clk, interval: 10 * time.Second, offset: c.offset * time.Second, check: sc}
			start := clk.Now()
			ctx, cancel := context.WithCancel(context.Background())
			var results int
			done := make(chan struct{})
			var mu sync.Mutex
			go func() {
				l.Run(ctx, func(Result) { mu.Lock(); results++; mu.Unlock() })
				close(done)
			}()
			for range c.want {
				clk.waitTimer(t)
				clk.Advance(clk.nextTimer())
				<-sc.ran
			}
			clk.waitTimer(t)
			cancel()
			<-done
			sc.mu.Lock()
			defer sc.mu.Unlock()
			for i, w := range c.want {
				if got := sc.at[i].Sub(start); got != w*time.Second {
					t.Errorf("check %d at %v, want %v", i, got, w*time.Second)
				}
			}
			mu.Lock()
			if results != len(c.want) {
				t.Errorf("%d results emitted, want %d", results, len(c.want))
			}
			mu.Unlock()
		})
	}
}

// A check cancelled by stop is not a result (PyBal ignores CancelledError).
func TestLoopStopMidCheckEmitsNothing(t *testing.T) {
	clk := newFakeClock()
	started := make(chan struct{})
	ck := checkFunc(func(ctx context.Context) Result {
		close(started)
		<-ctx.Done()
		return Result{Reason: "cancelled"}
	})
	l := &loop{clk: clk, interval: time.Second, timeout: time.Hour, check: ck}
	ctx, cancel := context.WithCancel(context.Background())
	emitted := make(chan Result, 1)
	done := make(chan struct{})
	go func() { l.Run(ctx, func(r Result) { emitted <- r }); close(done) }()
	clk.waitTimer(t)
	clk.Advance(time.Second)
	<-started
	cancel()
	<-done
	if len(emitted) != 0 {
		t.Fatalf("emitted %+v after stop", <-emitted)
	}
}

// The check timeout reaches the Checker's context.
func TestLoopTimeout(t *testing.T) {
	clk := newFakeClock()
	got := make(chan time.Duration, 1)
	ck := checkFunc(func(ctx context.Context) Result {
		dl, ok := ctx.Deadline()
		if !ok {
			got <- -1
		} else {
			got <- time.Until(dl)
		}
		return Result{Up: true}
	})
	l := &loop{clk: clk, interval: time.Second, timeout: 3 * time.Second, check: ck}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx, func(Result) {})
	clk.waitTimer(t)
	clk.Advance(time.Second)
	if d := <-got; d <= 2*time.Second || d > 3*time.Second {
		t.Fatalf("check deadline in %v, want ~3s", d)
	}
}

type checkFunc func(ctx context.Context) Result

func (f checkFunc) Check(ctx context.Context) Result { return f(ctx) }

func TestBackoffSequence(t *testing.T) {
	b := backoff{max: 300 * time.Second, norm: func() float64 { return 0 }}
	b.reset()
	want := []float64{2.718, 7.389, 20.09, 54.60, 148.4, 300, 300}
	for i, w := range want {
		got := b.next().Seconds()
		if math.Abs(got-w)/w > 0.001 {
			t.Errorf("delay %d = %.3fs, want %.3fs", i, got, w)
		}
	}
	b.reset()
	if got := b.next().Seconds(); math.Abs(got-math.E) > 0.001 {
		t.Errorf("after reset: %.3fs, want e", got)
	}
	// Jitter: one sigma is ~12% of the delay, never above max-delay.
	jb := backoff{max: 10 * time.Second, norm: func() float64 { return 3 }}
	jb.reset()
	if got := jb.next().Seconds(); math.Abs(got-math.E*(1+3*backoffJitter)) > 0.001 {
		t.Errorf("jittered delay %.3f, want %.3f", got, math.E*(1+3*backoffJitter))
	}
	for range 5 {
		if d := jb.next(); d > 10*time.Second {
			t.Fatalf("delay %v above max-delay", d)
		}
	}
}

// A panicking check is a down result and the loop goes on.
func TestLoopCheckPanicIsDown(t *testing.T) {
	clk := newFakeClock()
	calls := 0
	ck := checkFunc(func(ctx context.Context) Result {
		calls++
		if calls == 1 {
			panic("boom")
		}
		return Result{Up: true}
	})
	l := &loop{clk: clk, interval: time.Second, check: ck}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Result, 2)
	go l.Run(ctx, func(r Result) { got <- r })
	for _, want := range []Result{{Reason: "monitor check panicked: boom"}, {Up: true}} {
		clk.waitTimer(t)
		clk.Advance(time.Second)
		if r := <-got; r != want {
			t.Fatalf("got %+v, want %+v", r, want)
		}
	}
}

type panicRunner struct{ start, runs chan struct{} }

func (p panicRunner) Run(ctx context.Context, emit func(Result)) {
	<-p.start // the test attaches its watcher first
	p.runs <- struct{}{}
	panic("long-lived boom")
}

// A panicking long-lived monitor reports down and is restarted.
func TestManagerRestartsPanickedRunner(t *testing.T) {
	m, _ := newTestManager(t)
	clk := newFakeClock()
	m.clk = clk
	pr := panicRunner{start: make(chan struct{}), runs: make(chan struct{}, 10)}
	r := newReports()
	p := m.startProbe("Test", "k", fixedSpec{pr}, false)
	p.mu.Lock()
	p.watchers = append(p.watchers, &watcher{service: "s", host: "h", report: r.report})
	p.mu.Unlock()
	close(pr.start)
	<-pr.runs
	if res := r.next(t, time.Second); res.Up || res.Reason != "monitor Test panicked: long-lived boom" {
		t.Fatalf("%+v", res)
	}
	clk.waitTimer(t)
	clk.Advance(time.Second)
	select {
	case <-pr.runs:
	case <-time.After(time.Second):
		t.Fatal("not restarted")
	}
}

type fixedSpec struct{ r runner }

func (f fixedSpec) key() string           { return "fixed" }
func (f fixedSpec) hyst() (int, int)      { return 1, 1 }
func (f fixedSpec) newRunner(*env) runner { return f.r }

// offsetSpec records the start-up offset its runner would get for a 10 s interval.
type offsetSpec struct{ got chan time.Duration }

func (o offsetSpec) key() string      { return "offset" }
func (o offsetSpec) hyst() (int, int) { return 1, 1 }
func (o offsetSpec) newRunner(e *env) runner {
	o.got <- e.offset(10 * time.Second)
	return idleRunner{}
}

type idleRunner struct{}

func (idleRunner) Run(ctx context.Context, _ func(Result)) { <-ctx.Done() }

// Target.Prompt: a loop's first check comes within PromptWindow of the start (the
// loop waits interval - offset), not somewhere in the first interval.
func TestPromptFirstCheck(t *testing.T) {
	for _, tt := range []struct {
		prompt    bool
		wantFirst time.Duration // interval - offset
	}{
		{prompt: false, wantFirst: 5 * time.Second}, // half the 10 s interval
		{prompt: true, wantFirst: PromptWindow / 2}, // half the prompt window
	} {
		m, _ := newTestManager(t)
		m.offset = func(iv time.Duration) time.Duration { return iv / 2 }
		sp := offsetSpec{got: make(chan time.Duration, 1)}
		m.mu.Lock()
		m.startProbe("Test", "offset", sp, tt.prompt)
		m.mu.Unlock()
		if first := 10*time.Second - <-sp.got; first != tt.wantFirst {
			t.Errorf("prompt %v: first check %s after start, want %s", tt.prompt, first, tt.wantFirst)
		}
	}
}
