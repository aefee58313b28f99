package pool

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// logRecord is one captured log line.
type logRecord struct {
	Level  slog.Level
	Msg    string
	System string
}

// captureHandler records every log line (all levels) for assertions.
type captureHandler struct {
	recs   *[]logRecord
	system string
}

func (h captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h captureHandler) Handle(_ context.Context, r slog.Record) error {
	*h.recs = append(*h.recs, logRecord{Level: r.Level, Msg: r.Message, System: h.system})
	return nil
}

func (h captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		if a.Key == "system" {
			h.system = a.Value.String()
		}
	}
	return h
}

func (h captureHandler) WithGroup(string) slog.Handler { return h }

// harness is a coordinator plus its captured log.
type harness struct {
	t    *testing.T
	c    *Coordinator
	logs *[]logRecord
}

func newHarness(t *testing.T, threshold float64, monitors ...string) *harness {
	t.Helper()
	logs := &[]logRecord{}
	c := New("text_80", threshold, monitors, slog.New(captureHandler{recs: logs}))
	return &harness{t: t, c: c, logs: logs}
}

// addr returns a distinct address per host name.
func addr(host string) netip.Addr {
	var sum byte
	for i := range len(host) {
		sum = sum*31 + host[i]
	}
	return netip.AddrFrom4([4]byte{10, 0, 1, sum})
}

// sc is a ready, enabled server config of weight 10.
func sc(host string) ServerConfig {
	return ServerConfig{Host: host, Addr: addr(host), Weight: 10, Enabled: true}
}

func disabled(cfg ServerConfig, reason string) ServerConfig {
	cfg.Enabled = false
	cfg.Reason = reason
	return cfg
}

func unresolved(cfg ServerConfig) ServerConfig {
	cfg.Addr = netip.Addr{}
	return cfg
}

func weight(cfg ServerConfig, w int) ServerConfig {
	cfg.Weight = w
	return cfg
}

func (h *harness) update(cfgs ...ServerConfig) {
	h.t.Helper()
	h.c.Update(cfgs)
	h.check()
}

func (h *harness) up(host, monitor string) {
	h.t.Helper()
	h.c.Result(host, monitor, MonitorResult{Up: true})
	h.check()
}

func (h *harness) down(host, monitor, reason string) {
	h.t.Helper()
	h.c.Result(host, monitor, MonitorResult{Up: false, Reason: reason})
	h.check()
}

func (h *harness) state(host string) ServerState {
	h.t.Helper()
	snap := h.c.Snapshot()
	s, ok := snap.Server(host)
	if !ok {
		h.t.Fatalf("server %s not in snapshot", host)
	}
	return s
}

// status is PyBal's textStatus of host.
func (h *harness) status(host string) string {
	h.t.Helper()
	return h.state(host).TextStatus()
}

func (h *harness) wantStatus(host, want string) {
	h.t.Helper()
	if got := h.status(host); got != want {
		h.t.Errorf("%s: status %q, want %q (why %q)", host, got, want, h.state(host).Why)
	}
}

func (h *harness) pooled() []string {
	var out []string
	for _, s := range h.c.Snapshot().Servers {
		if s.Pooled {
			out = append(out, s.Host)
		}
	}
	return out
}

func (h *harness) wantPooled(want ...string) {
	h.t.Helper()
	if got := h.pooled(); !slices.Equal(got, want) {
		h.t.Errorf("pooled %v, want %v", got, want)
	}
}

func (h *harness) wantPooledDown(want ...string) {
	h.t.Helper()
	got := h.c.Snapshot().PooledDown
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(got, want) {
		h.t.Errorf("pooled down %v, want %v", got, want)
	}
}

// logged reports whether a line at level with exactly msg was logged.
func (h *harness) logged(level slog.Level, msg string) bool {
	for _, r := range *h.logs {
		if r.Level == level && r.Msg == msg {
			return true
		}
	}
	return false
}

func (h *harness) wantLogged(level slog.Level, msg string) {
	h.t.Helper()
	if !h.logged(level, msg) {
		h.t.Errorf("no %v log %q; got:\n%s", level, msg, h.dumpLogs())
	}
}

func (h *harness) wantNotLogged(substr string) {
	h.t.Helper()
	for _, r := range *h.logs {
		if strings.Contains(r.Msg, substr) {
			h.t.Errorf("unexpected log %v %q", r.Level, r.Msg)
		}
	}
}

func (h *harness) dumpLogs() string {
	var b strings.Builder
	for _, r := range *h.logs {
		fmt.Fprintf(&b, "  [%s] %v: %s\n", r.System, r.Level, r.Msg)
	}
	return b.String()
}

func (h *harness) check() {
	h.t.Helper()
	if err := invariants(h.c); err != nil {
		h.t.Fatal(err)
	}
}

// invariants checks PyBal's intended server invariants and the coordinator's own
// bookkeeping:
//
//	P0: pooled => enabled && ready
//	P1: up => pooled || !enabled || !ready
//	pooled-down set == {pooled && !up}
//	enabled && !ready => !up (a server without an address is never counted as up)
//	upEnabled == count(up && enabled); waiting servers exist and are not ready.
func invariants(c *Coordinator) error {
	upEnabled := 0
	for h, s := range c.servers {
		if h != s.host {
			return fmt.Errorf("server keyed %s has host %s", h, s.host)
		}
		if s.pooled && !(s.enabled && s.ready) {
			return fmt.Errorf("P0 broken: %s pooled but enabled=%v ready=%v", h, s.enabled, s.ready)
		}
		if s.up && !(s.pooled || !s.enabled || !s.ready) {
			return fmt.Errorf("P1 broken: %s up, enabled and ready but not pooled", h)
		}
		if s.up && s.enabled && !s.ready {
			return fmt.Errorf("%s is enabled and up but not ready: canDepool would count it", h)
		}
		_, inPD := c.pooledDown[h]
		if inPD != (s.pooled && !s.up) {
			return fmt.Errorf("%s: in pooled-down set %v, but pooled=%v up=%v", h, inPD, s.pooled, s.up)
		}
		if s.up && s.enabled {
			upEnabled++
		}
		for m := range s.results {
			if _, ok := c.monitorSet[m]; !ok {
				return fmt.Errorf("%s keeps a result of unconfigured monitor %s", h, m)
			}
		}
	}
	for h := range c.pooledDown {
		if _, ok := c.servers[h]; !ok {
			return fmt.Errorf("pooled-down set holds unknown server %s", h)
		}
	}
	for h := range c.waiting {
		s, ok := c.servers[h]
		if !ok || s.ready {
			return fmt.Errorf("waiting set holds %s (known %v)", h, ok)
		}
	}
	if upEnabled != c.upEnabled {
		return fmt.Errorf("upEnabled counter %d, recount %d", c.upEnabled, upEnabled)
	}
	return nil
}
