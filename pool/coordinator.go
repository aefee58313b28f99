package pool

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// LevelCritical is PyBal's CRITICAL log level, slog.LevelError+4 (the logging package
// prints it as CRITICAL).
const LevelCritical = slog.LevelError + 4

// WhyPooledDown is the Why fragment of a server kept pooled only by the depool threshold.
const WhyPooledDown = "pooled down: depool threshold"

// server is the coordinator's private state of one real server (PyBal's server.Server).
type server struct {
	host     string
	addr     netip.Addr
	weight   int
	enabled  bool
	reason   string // why disabled (source or admin)
	override string // the admin override in force, for display
	ready    bool   // address known
	up       bool
	pooled   bool
	// results holds the last verdict of each configured monitor; absent = no result yet.
	results    map[string]MonitorResult
	resultsGen uint64 // bumped whenever results changes (Snapshot copies it only then)
	resolveErr string // last resolution error while not ready

	idx int // position in sortedServers

	// snap is this server's state in the last Snapshot and key what it was built from:
	// Snapshot reuses it (its Monitors map and Why string included) while the key holds,
	// so a snapshot after one change copies one server, not every server's map.
	snap ServerState
	key  snapKey
}

// snapKey is everything a server's ServerState depends on. monitorsGen covers the
// service's monitor list (Why names pending monitors in its order).
type snapKey struct {
	valid                            bool
	addr                             netip.Addr
	weight                           int
	enabled, ready, up, pooled, down bool // down: in the pooled-down set
	awaiting                         bool // awaiting its first check (Coordinator.awaiting)
	reason, override, resolveErr     string
	resultsGen, monitorsGen          uint64
}

// Coordinator is PyBal's Coordinator for one service (SPEC §4): a pure state machine
// that does no I/O, starts no goroutine and reads no clock. It is not safe for
// concurrent use: the service's goroutine owns it and reads its state through Snapshot.
//
// Semantics kept from PyBal master: new servers are pooled before any health check;
// all monitors are ANDed; one result flips state; a depool happens only while
// count(up && enabled) >= len(servers) x threshold (all known servers, disabled and
// unresolved included), otherwise the server stays pooled in the pooled-down set;
// a repool drains that set while the threshold allows; the first-check repool; after
// every update (once its new servers have resolved or failed) enabled and ready servers
// are force-pooled up to the threshold; admin disable and removal bypass the threshold.
//
// Deliberate differences (PyBal bugs, SPEC §14):
//   - #5: re-enabling a server pools it iff all its monitors are up (PyBal master
//     asserted and half-applied the update), and a service without monitors keeps its
//     servers up and pooled while enabled.
//   - #11: a removed server leaves the pooled-down set; so does a disabled one (PyBal
//     kept it, and a later drain tripped depool's assert).
//   - #10: resolution failures are not final: the caller retries, Resolved pools later.
//   - The pooled-down set drains in host order (PyBal: set.pop, arbitrary).
//   - Reconfigure (a reload; PyBal had none) also drains and re-ensures the threshold.
//   - Results for servers without an address are ignored: PyBal ran no monitor then.
type Coordinator struct {
	name       string
	threshold  float64
	monitors   []string
	monitorSet map[string]struct{}
	log        *slog.Logger

	servers map[string]*server
	// pooledDown is PyBal's pooledDownServers: servers kept pooled although down, because
	// depooling them would break the depool threshold. Invariant: s in pooledDown iff
	// s.pooled && !s.up.
	pooledDown map[string]struct{}
	// waiting holds servers added by Update whose address is not known yet (neither
	// Resolved nor ResolveFailed). PyBal runs _ensureDepoolThreshold only once the new
	// servers of an update have finished initialising; ensurePending records that one is due.
	waiting       map[string]struct{}
	ensurePending bool

	// checkFirst: a new server joins the pool only once every monitor passed (see
	// SetPoolUnchecked); false is PyBal's optimistic pooling.
	checkFirst bool

	upEnabled      int       // count(up && enabled), kept incrementally: canDepool is O(1)
	sorted         []string  // hosts in order; nil after an add or remove
	sortedServers  []*server // the servers in the order of sorted; nil with it
	monitorsGen    uint64    // bumped by setMonitors (see snapKey)
	couldNotDepool uint64

	// The last SnapshotShared and what changed since: Result names the servers it may
	// have changed (dirty); every other event may change any server (allDirty).
	last     Snapshot
	lastOK   bool
	allDirty bool
	dirty    []*server
}

// New returns the coordinator of service name with PyBal's depool-threshold and monitor
// list. Log lines carry system=name, PyBal's "[name]" prefix (see package logging);
// their messages are PyBal's, without extra attributes.
func New(name string, threshold float64, monitors []string, log *slog.Logger) *Coordinator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Coordinator{
		name:       name,
		threshold:  threshold,
		log:        log.With("system", name),
		servers:    make(map[string]*server),
		pooledDown: make(map[string]struct{}),
		waiting:    make(map[string]struct{}),
	}
	c.setMonitors(monitors)
	return c
}

func (c *Coordinator) setMonitors(monitors []string) {
	c.monitors = slices.Clone(monitors)
	c.monitorsGen++
	c.monitorSet = make(map[string]struct{}, len(monitors))
	for _, m := range monitors {
		c.monitorSet[m] = struct{}{}
	}
}

// SetPoolUnchecked chooses how a new server (or one whose address became known) starts.
// true is PyBal's optimistic pooling: up, and pooled if enabled, before any check.
// false pools it only once every monitor has passed once: until its first verdict
// from each monitor it is awaiting (ServerState.Awaiting), neither up nor pooled, and
// never force-pooled by the depool threshold, which waits for its verdicts instead. A
// new service then takes no traffic to a real server nobody has checked (a Kubernetes
// node whose kube-proxy does not serve the VIP yet), and a restart keeps the kernel's
// destinations of awaiting servers as they are (plan.Pool) until they are checked.
// Servers already known keep their state; services without monitors pool at once.
func (c *Coordinator) SetPoolUnchecked(on bool) {
	if c.checkFirst == !on {
		return
	}
	c.touchAll()
	c.checkFirst = !on
	c.ensurePending = true
	c.maybeEnsure()
}

// awaiting: check-first pooling, and s has an address but not yet a verdict from
// every monitor. Such a server is not up or pooled; its first complete round of
// verdicts decides (resultUp pools it, firstRound re-ensures the threshold).
func (c *Coordinator) awaiting(s *server) bool {
	return c.checkFirst && s.ready && !s.up && !s.pooled && len(c.monitors) > 0 && !c.allReported(s)
}

// on reports whether level is logged.
func (c *Coordinator) on(level slog.Level) bool {
	return c.log.Enabled(context.Background(), level)
}

// logf logs a PyBal message. It is only formatted when level is enabled, so Debug
// lines cost nothing on large pools.
func (c *Coordinator) logf(level slog.Level, format string, args ...any) {
	ctx := context.Background()
	if c.log.Enabled(ctx, level) {
		c.log.Log(ctx, level, fmt.Sprintf(format, args...))
	}
}

// setUp and setEnabled keep upEnabled in step; nothing else may write s.up or s.enabled.
func (c *Coordinator) setUp(s *server, up bool) {
	if s.up == up {
		return
	}
	if s.enabled {
		if up {
			c.upEnabled++
		} else {
			c.upEnabled--
		}
	}
	s.up = up
}

func (c *Coordinator) setEnabled(s *server, enabled bool) {
	if s.enabled == enabled {
		return
	}
	if s.up {
		if enabled {
			c.upEnabled++
		} else {
			c.upEnabled--
		}
	}
	s.enabled = enabled
}

func enabledWord(enabled bool) string {
	if enabled {
		return "enabled"
	}
	return "disabled"
}

// Update applies the full server set (source plus admin overlay) as PyBal's
// onConfigUpdate: new hosts are created (ready at once if Addr is set, else waiting for
// Resolved), existing hosts merged (refreshPreexistingServer; a re-enabled server is
// pooled iff all its monitors are up, fixing SPEC §14 #5), and hosts absent from
// servers are dropped, also from the pooled-down set (fixing §14 #11). Disabling and
// removal bypass the depool threshold, as in PyBal. Once no newly added server is
// waiting for its address, the threshold is re-ensured by force-pooling.
func (c *Coordinator) Update(servers []ServerConfig) {
	c.touchAll()
	firstConfig := len(c.servers) == 0
	want := make(map[string]ServerConfig, len(servers))
	for _, sc := range servers {
		if sc.Host == "" {
			c.logf(slog.LevelWarn, "Ignoring a server without a host name")
			continue
		}
		want[sc.Host] = sc // the last entry for a host wins
	}
	hosts := make([]string, 0, len(want))
	for h := range want {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)

	newLevel := slog.LevelInfo
	if firstConfig {
		newLevel = slog.LevelDebug // summarised below, as PyBal does at start-up
	}
	for _, h := range hosts {
		sc := want[h]
		if s, ok := c.servers[h]; ok {
			c.merge(s, sc)
			continue
		}
		c.add(sc)
		c.logf(newLevel, "New %s server %s, weight %d", enabledWord(sc.Enabled), h, sc.Weight)
	}
	if firstConfig && len(c.servers) > 0 {
		enabled := 0
		for _, s := range c.servers {
			if s.enabled {
				enabled++
			}
		}
		c.logf(slog.LevelInfo, "Added %d server(s): %d enabled server(s) and %d disabled server(s)",
			len(c.servers), enabled, len(c.servers)-enabled)
	}

	var gone []string
	for h := range c.servers {
		if _, ok := want[h]; !ok {
			gone = append(gone, h)
		}
	}
	slices.Sort(gone)
	for _, h := range gone {
		c.logf(slog.LevelInfo, "Removing server %s (no longer found in new configuration)", h)
		c.remove(h)
	}

	c.ensurePending = true
	c.maybeEnsure()
}

func (c *Coordinator) add(sc ServerConfig) {
	s := &server{host: sc.Host, weight: sc.Weight, enabled: sc.Enabled, reason: sc.Reason, override: sc.Override}
	c.servers[sc.Host] = s
	c.sorted, c.sortedServers = nil, nil
	if sc.Addr.IsValid() {
		c.becomeReady(s, sc.Addr)
		return
	}
	c.waiting[sc.Host] = struct{}{}
}

func (c *Coordinator) remove(h string) {
	s := c.servers[h]
	c.setUp(s, false)
	delete(c.servers, h)
	c.sorted, c.sortedServers = nil, nil
	delete(c.pooledDown, h) // PyBal leaves it there: a stale /alerts CRITICAL (§14 #11)
	delete(c.waiting, h)
}

// becomeReady is PyBal's Server._ready: optimistic pooling before any health check
// (up, and pooled if enabled). Monitors have no results yet: Result ignores servers
// that are not ready. With check-first pooling the server waits for its first
// verdicts instead (awaiting), unless the service has no monitors.
func (c *Coordinator) becomeReady(s *server, addr netip.Addr) {
	s.addr = addr
	s.ready = true
	s.resolveErr = ""
	if c.checkFirst && len(c.monitors) > 0 {
		if c.allReported(s) { // verdicts kept from an earlier address
			up := c.calcStatus(s)
			c.setUp(s, up)
			s.pooled = up && s.enabled
		}
		return
	}
	c.setUp(s, true)
	s.pooled = s.enabled
}

// merge is Server.merge (+ maintainState) followed by refreshPreexistingServer.
func (c *Coordinator) merge(s *server, sc ServerConfig) {
	changed := s.weight != sc.Weight || s.enabled != sc.Enabled || s.reason != sc.Reason ||
		(sc.Addr.IsValid() && sc.Addr != s.addr)
	s.weight = sc.Weight
	s.reason, s.override = sc.Reason, sc.Override
	c.setEnabled(s, sc.Enabled)
	switch {
	case sc.Addr.IsValid() && !s.ready:
		delete(c.waiting, s.host)
		c.becomeReady(s, sc.Addr)
	default:
		if sc.Addr.IsValid() {
			s.addr = sc.Addr
		}
		c.refresh(s)
	}
	level := slog.LevelDebug
	if changed {
		level = slog.LevelInfo
	}
	c.logf(level, "Merged %s server %s, weight %d", enabledWord(s.enabled), s.host, s.weight)
}

// refresh recomputes pooled (and up) of a pre-existing server after a config merge.
func (c *Coordinator) refresh(s *server) {
	if !s.enabled || !s.ready {
		// Disabling bypasses the depool threshold (PyBal). A disabled server leaves the
		// pooled-down set too: PyBal kept it there and later tripped depool's assert.
		if s.pooled {
			c.logf(slog.LevelInfo, "Depooling %s server %s", enabledWord(s.enabled), s.host)
		}
		s.pooled = false
		delete(c.pooledDown, s.host)
		if s.enabled { // maintainState: not pooled and enabled => not up
			c.setUp(s, false)
		}
		return
	}
	if s.pooled {
		if s.up {
			return
		}
		if _, ok := c.pooledDown[s.host]; ok {
			return // stays pooled while enabled (pooled down by the threshold)
		}
		s.pooled = false // unreachable while pooledDown == pooled && !up
		return
	}
	// Enabled, ready, not pooled: PyBal's maintainState sets up=False here and
	// refreshPreexistingServer then asserts up == calcStatus(), which fails for a
	// re-enabled server with healthy monitors and for monitor-less services (§14 #5).
	// The intended semantics ([1.15]): pooled iff all monitors are up (or there are none).
	up := c.healthy(s)
	c.setUp(s, up)
	s.pooled = up
	if up {
		c.logf(slog.LevelInfo, "Pooling enabled server %s: all monitors up", s.host)
	}
}

func (c *Coordinator) maybeEnsure() {
	if !c.ensurePending || len(c.waiting) > 0 {
		return
	}
	c.ensurePending = false
	c.logf(slog.LevelDebug, "Initialization complete")
	c.ensureDepoolThreshold()
}

// ensureDepoolThreshold force-pools enabled and ready servers (in host order, up or
// not) until at least len(servers) x threshold are pooled. Forced servers join the
// pooled-down set. It reports whether the threshold is met.
func (c *Coordinator) ensureDepoolThreshold() bool {
	need := float64(len(c.servers)) * c.threshold
	pooled := 0
	for _, s := range c.servers {
		if s.pooled {
			pooled++
		}
	}
	if float64(pooled) >= need {
		return true
	}
	awaiting := 0
	for _, h := range c.sortedHosts() {
		s := c.servers[h]
		if !s.enabled || !s.ready || s.pooled {
			continue
		}
		if c.awaiting(s) {
			awaiting++ // its first verdicts re-ensure the threshold (firstRound)
			continue
		}
		c.logf(slog.LevelWarn, "Forcing %s to be pooled to meet depool threshold", h)
		s.pooled = true
		if !s.up {
			c.pooledDown[h] = struct{}{}
		}
		pooled++
		if float64(pooled) >= need {
			return true
		}
	}
	if float64(pooled+awaiting) >= need {
		c.logf(slog.LevelInfo, "Depool threshold not met yet: %d server(s) awaiting their first check", awaiting)
		return false
	}
	c.logf(LevelCritical, "Could not ensure depool threshold; insufficient enabled & ready servers.")
	return false
}

// sortedHosts returns the hosts in order. The slice is shared: callers must not
// modify it, and must not hold it across an add or remove.
func (c *Coordinator) sortedHosts() []string {
	if c.sorted == nil {
		c.sorted = make([]string, 0, len(c.servers))
		for h := range c.servers {
			c.sorted = append(c.sorted, h)
		}
		slices.Sort(c.sorted)
	}
	return c.sorted
}

// sortedServerList returns the servers in host order (shared like sortedHosts).
func (c *Coordinator) sortedServerList() []*server {
	if c.sortedServers == nil {
		hosts := c.sortedHosts()
		c.sortedServers = make([]*server, len(hosts))
		for i, h := range hosts {
			c.sortedServers[i] = c.servers[h]
			c.sortedServers[i].idx = i
		}
	}
	return c.sortedServers
}

// Resolved marks a server ready with its address: optimistic pooling (up, and pooled if
// enabled). For a server already ready it only records a changed address.
func (c *Coordinator) Resolved(host string, addr netip.Addr) {
	c.touchAll() // the threshold may force-pool any server
	s, ok := c.servers[host]
	if !ok {
		c.logf(slog.LevelDebug, "Ignoring resolution of unknown server %s", host)
		return
	}
	if s.ready {
		if addr != s.addr {
			c.logf(slog.LevelInfo, "Server %s address changed from %s to %s", host, s.addr, addr)
			s.addr = addr
		}
		return
	}
	if s.resolveErr != "" {
		c.logf(slog.LevelInfo, "Resolved %s to %s after earlier failures", host, addr)
	} else {
		c.logf(slog.LevelDebug, "Resolved %s to %s", host, addr)
	}
	c.becomeReady(s, addr)
	delete(c.waiting, host)
	c.maybeEnsure()
}

// ResolveFailed records why a server is not ready. Unlike PyBal (§14 #10) this is not
// final: the caller keeps retrying and calls Resolved on success. A failure of an
// already ready server (re-resolution) keeps its last address.
func (c *Coordinator) ResolveFailed(host string, err error) {
	c.touchAll()
	s, ok := c.servers[host]
	if !ok {
		return
	}
	msg := "unknown error"
	if err != nil {
		msg = err.Error()
	}
	if s.ready {
		c.logf(slog.LevelDebug, "Re-resolving %s failed, keeping %s: %s", host, s.addr, msg)
		return
	}
	level := slog.LevelError
	if msg == s.resolveErr {
		level = slog.LevelDebug // the caller retries; log each new error once
	}
	c.logf(level, "Initialization failed for server %s: %s", host, msg)
	s.resolveErr = msg
	delete(c.waiting, host)
	c.maybeEnsure()
}

// Result applies one monitor's verdict on host (PyBal's resultUp/resultDown). Results
// of unknown hosts or of monitors not configured are ignored.
func (c *Coordinator) Result(host, monitor string, r MonitorResult) {
	s, ok := c.servers[host]
	if !ok {
		if c.on(slog.LevelDebug) { // no formatting or boxing when not logged: Result is hot
			c.logf(slog.LevelDebug, "Ignoring %s result for unknown server %s", monitor, host)
		}
		return
	}
	if _, ok := c.monitorSet[monitor]; !ok {
		if c.on(slog.LevelDebug) {
			c.logf(slog.LevelDebug, "Ignoring result of unconfigured monitor %s for %s", monitor, host)
		}
		return
	}
	if !s.ready {
		// PyBal runs no monitors before an address is known: a server without one is
		// never up (counted by canDepool), and becomes ready with optimistic pooling.
		if c.on(slog.LevelDebug) {
			c.logf(slog.LevelDebug, "Ignoring %s result for %s, which has no address yet", monitor, host)
		}
		return
	}
	wasAwaiting := c.awaiting(s)
	prev, had := s.results[monitor]
	if s.results == nil {
		s.results = make(map[string]MonitorResult, len(c.monitors))
	}
	if !had || prev != r {
		s.results[monitor] = r
		s.resultsGen++
	}
	// A verdict changes s and, through a repool's drain, at most the servers in the
	// pooled-down set before it (a depool adds only s to it).
	c.touchPooledDown(s)
	if r.Up {
		c.resultUp(s, !had)
	} else {
		c.resultDown(s, monitor, r.Reason, !had || prev.Up || prev.Reason != r.Reason)
	}
	if wasAwaiting && !c.awaiting(s) {
		c.firstRound(s)
	}
}

// firstRound: an awaiting server has its first verdict from every monitor. If it is
// down, the depool threshold, which could not count on it before, is ensured now: a
// health checker wrong about every server of a restarted service must not empty it.
func (c *Coordinator) firstRound(s *server) {
	if s.pooled {
		return
	}
	c.touchAll() // the threshold may force-pool any server
	if len(c.waiting) == 0 {
		c.ensureDepoolThreshold()
	}
}

// touchAll: any server may have changed (SnapshotShared compares them all).
func (c *Coordinator) touchAll() {
	c.allDirty = true
	c.dirty = c.dirty[:0]
}

// touchPooledDown records s and the pooled-down servers as possibly changed since the
// last SnapshotShared.
func (c *Coordinator) touchPooledDown(s *server) {
	if c.allDirty {
		return
	}
	if len(c.dirty)+len(c.pooledDown) >= len(c.servers) {
		c.touchAll() // as cheap to compare them all; bounds the list
		return
	}
	c.dirty = append(c.dirty, s)
	for h := range c.pooledDown {
		c.dirty = append(c.dirty, c.servers[h])
	}
}

func (c *Coordinator) resultDown(s *server, monitor, reason string, news bool) {
	if reason == "" {
		reason = "(reason unknown)"
	}
	level := slog.LevelError
	if !news {
		level = slog.LevelDebug // a repeated verdict: PyBal's monitors would not report it
	}
	if c.on(level) {
		c.logf(level, "Monitoring instance %s reports server %s (%s) down: %s", monitor, s.host, c.textStatus(s), reason)
	}
	if s.up {
		c.setUp(s, false)
		if s.pooled {
			c.depool(s)
		}
	}
}

func (c *Coordinator) resultUp(s *server, first bool) {
	// PyBal master: when the last monitor delivers its first result, repool even an up
	// server, which drains the pooled-down set if the threshold now allows it.
	firstChecksCompleted := first && c.allReported(s)
	if (!s.up || firstChecksCompleted) && c.calcStatus(s) {
		if c.on(slog.LevelInfo) {
			c.logf(slog.LevelInfo, "Server %s (%s) is up", s.host, c.textStatus(s))
		}
		c.setUp(s, true)
		if s.enabled && s.ready {
			c.repool(s)
		}
	}
}

func (c *Coordinator) canDepool() bool {
	return float64(c.upEnabled) >= float64(len(c.servers))*c.threshold
}

// depool removes a pooled server, unless that would break the depool threshold: then
// it stays pooled, in the pooled-down set.
func (c *Coordinator) depool(s *server) {
	if !s.pooled {
		return
	}
	if c.canDepool() {
		s.pooled = false
		delete(c.pooledDown, s.host)
		if c.on(slog.LevelInfo) {
			c.logf(slog.LevelInfo, "Depooling server %s", s.host)
		}
		return
	}
	c.pooledDown[s.host] = struct{}{}
	c.couldNotDepool++
	if c.on(slog.LevelError) {
		c.logf(slog.LevelError, "Could not depool server %s because of too many down!", s.host)
	}
}

// repool pools an up server, then depools pooled-down servers (in host order, where
// PyBal pops an arbitrary one) while the threshold allows.
func (c *Coordinator) repool(s *server) {
	if !s.pooled {
		s.pooled = true
		if c.on(slog.LevelInfo) {
			c.logf(slog.LevelInfo, "Repooling server %s", s.host)
		}
	} else if _, ok := c.pooledDown[s.host]; ok {
		if c.on(slog.LevelInfo) {
			c.logf(slog.LevelInfo, "Leaving previously pooled but down server %s pooled", s.host)
		}
	} else {
		if c.on(slog.LevelDebug) {
			c.logf(slog.LevelDebug, "Leaving previously pooled server %s pooled", s.host)
		}
	}
	delete(c.pooledDown, s.host)
	c.drain()
}

func (c *Coordinator) drain() {
	for len(c.pooledDown) > 0 && c.canDepool() {
		first := ""
		for h := range c.pooledDown {
			if first == "" || h < first {
				first = h
			}
		}
		s, ok := c.servers[first]
		if !ok || !s.pooled {
			delete(c.pooledDown, first)
			continue
		}
		c.depool(s)
	}
}

// calcStatus is Server.calcStatus: at least one monitor, and all monitors up.
func (c *Coordinator) calcStatus(s *server) bool {
	if len(c.monitors) == 0 {
		return false
	}
	for _, m := range c.monitors {
		if r, ok := s.results[m]; !ok || !r.Up {
			return false
		}
	}
	return true
}

// healthy is the up status a re-enabled server gets: calcStatus, or true for a service
// without monitors (whose servers stay up while enabled, SPEC §4.7).
func (c *Coordinator) healthy(s *server) bool {
	return len(c.monitors) == 0 || c.calcStatus(s)
}

func (c *Coordinator) allReported(s *server) bool {
	for _, m := range c.monitors {
		if _, ok := s.results[m]; !ok {
			return false
		}
	}
	return true
}

func (c *Coordinator) textStatus(s *server) string {
	return ServerState{Enabled: s.enabled, Ready: s.ready, Up: s.up, Pooled: s.pooled, Monitors: s.results}.TextStatus()
}

// Reconfigure applies a reloaded config's threshold and monitor list. Results of
// monitors no longer configured are dropped; a server whose remaining monitors are all
// up (or which now has none) comes up and is repooled; pooled-down servers are depooled
// if the new threshold allows; then the threshold is re-ensured.
func (c *Coordinator) Reconfigure(threshold float64, monitors []string) {
	c.touchAll()
	if threshold != c.threshold || !slices.Equal(monitors, c.monitors) {
		c.logf(slog.LevelInfo, "Reconfigured: depool threshold %s, monitors %v",
			formatFloat(threshold), monitors)
	}
	c.threshold = threshold
	c.setMonitors(monitors)
	hosts := c.sortedHosts()
	for _, h := range hosts {
		s := c.servers[h]
		for m := range s.results {
			if _, ok := c.monitorSet[m]; !ok {
				delete(s.results, m)
				s.resultsGen++
			}
		}
	}
	for _, h := range hosts {
		s := c.servers[h]
		if s.up || !s.ready || !c.healthy(s) {
			continue
		}
		c.logf(slog.LevelInfo, "Server %s (%s) is up", h, c.textStatus(s))
		c.setUp(s, true)
		if s.enabled {
			c.repool(s)
		}
	}
	c.drain()
	c.ensurePending = true
	c.maybeEnsure()
}

// formatFloat prints a float for humans: 2 rather than 2.0000000000000004.
func formatFloat(f float64) string {
	return strconv.FormatFloat(math.Round(f*1e6)/1e6, 'f', -1, 64)
}

// Snapshot returns a deep copy of the state, servers sorted by host: the caller may
// modify it. It costs a map per server; SnapshotShared does not.
func (c *Coordinator) Snapshot() Snapshot {
	snap := c.SnapshotShared()
	snap.Servers, snap.PooledDown = slices.Clone(snap.Servers), slices.Clone(snap.PooledDown)
	for i := range snap.Servers {
		snap.Servers[i].Monitors = maps.Clone(snap.Servers[i].Monitors)
	}
	return snap
}

// SnapshotShared is Snapshot for callers that treat it as read-only (a published,
// immutable state): a server that did not change since the previous snapshot keeps the
// very Monitors map (and Why) it had there, and with no change at all since the previous
// SnapshotShared the same Servers and PooledDown slices are returned (see Unchanged).
// After one monitor verdict it builds that server's state and copies one slice of
// len(servers) values, nothing per server. The coordinator never modifies a map or
// slice it handed out; callers must not either.
func (c *Coordinator) SnapshotShared() Snapshot {
	var servers []ServerState // nil: the last snapshot's
	if !c.lastOK || c.allDirty || c.sortedServers == nil {
		servers = make([]ServerState, 0, len(c.servers))
		changed := !c.lastOK || len(c.last.Servers) != len(c.servers)
		for i, s := range c.sortedServerList() {
			st, ch := c.serverState(s)
			servers = append(servers, st)
			changed = changed || ch || c.last.Servers[i].Host != st.Host
		}
		if !changed {
			servers = nil
		}
	} else {
		for _, s := range c.dirty {
			st, ch := c.serverState(s)
			if !ch {
				continue
			}
			if servers == nil {
				servers = slices.Clone(c.last.Servers)
			}
			servers[s.idx] = st
		}
	}
	c.allDirty, c.dirty = false, c.dirty[:0]
	pooledDown := c.last.PooledDown
	if !c.lastOK || !samePooledDown(pooledDown, c.pooledDown) {
		pooledDown = make([]string, 0, len(c.pooledDown))
		for h := range c.pooledDown {
			pooledDown = append(pooledDown, h)
		}
		slices.Sort(pooledDown)
	}
	if servers == nil {
		servers = c.last.Servers
	}
	c.last = Snapshot{
		Name:           c.name,
		Threshold:      c.threshold,
		Servers:        servers,
		PooledDown:     pooledDown,
		CanDepool:      c.canDepool(),
		CouldNotDepool: c.couldNotDepool,
	}
	c.lastOK = true
	return c.last
}

func samePooledDown(list []string, set map[string]struct{}) bool {
	if len(list) != len(set) {
		return false
	}
	for _, h := range list {
		if _, ok := set[h]; !ok {
			return false
		}
	}
	return true
}

// Unchanged reports in O(1) whether b holds what a holds because nothing changed
// between the two SnapshotShared calls that made them (they share their slices). false
// does not mean different: a change that was undone, or a deep copy, reads as changed.
func Unchanged(a, b *Snapshot) bool {
	return a.Name == b.Name && a.Threshold == b.Threshold && a.CanDepool == b.CanDepool &&
		a.CouldNotDepool == b.CouldNotDepool && sameSlice(a.Servers, b.Servers) && sameSlice(a.PooledDown, b.PooledDown)
}

func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// serverState is s's ServerState, rebuilt only when something it depends on changed
// (then changed is true).
func (c *Coordinator) serverState(s *server) (st ServerState, changed bool) {
	_, down := c.pooledDown[s.host]
	k := snapKey{
		valid: true, addr: s.addr, weight: s.weight,
		enabled: s.enabled, ready: s.ready, up: s.up, pooled: s.pooled, down: down,
		reason: s.reason, override: s.override, resolveErr: s.resolveErr,
		resultsGen: s.resultsGen, monitorsGen: c.monitorsGen, awaiting: c.awaiting(s),
	}
	if k == s.key {
		return s.snap, false
	}
	awaiting := k.awaiting
	mons := s.snap.Monitors
	if !s.key.valid || s.key.resultsGen != k.resultsGen || mons == nil {
		mons = make(map[string]MonitorResult, len(s.results))
		for m, r := range s.results {
			mons[m] = r
		}
	}
	s.snap = ServerState{
		Host:     s.host,
		Addr:     s.addr,
		Weight:   s.weight,
		Enabled:  s.enabled,
		Ready:    s.ready,
		Up:       s.up,
		Pooled:   s.pooled,
		Monitors: mons,
		Why:      c.why(s),
		Override: s.override,
		Awaiting: awaiting,
	}
	s.key = k
	return s.snap, true
}

// why explains, for an SRE, why a server is not enabled/up/pooled.
func (c *Coordinator) why(s *server) string {
	if s.enabled && s.ready && s.up && s.pooled {
		return "" // pooled and up: no failing monitor (up needs all up), not pooled down
	}
	var parts []string
	if !s.enabled {
		if s.reason != "" {
			parts = append(parts, s.reason)
		} else {
			parts = append(parts, "disabled")
		}
	}
	if !s.ready {
		if s.resolveErr != "" {
			parts = append(parts, "resolve failed: "+s.resolveErr)
		} else {
			parts = append(parts, "resolving")
		}
	}
	var pending []string
	failing := false
	for _, m := range c.monitors {
		r, ok := s.results[m]
		switch {
		case !ok:
			pending = append(pending, m)
		case !r.Up:
			reason := r.Reason
			if reason == "" {
				reason = "(reason unknown)"
			}
			parts = append(parts, m+": "+reason)
			failing = true
		}
	}
	// A down server with no failing monitor waits for a monitor's first result (a
	// re-enabled server, or a monitor added by a reload).
	if s.enabled && s.ready && !s.up && !failing && len(pending) > 0 {
		parts = append(parts, "waiting for first check: "+strings.Join(pending, ", "))
	}
	if _, ok := c.pooledDown[s.host]; ok {
		parts = append(parts, WhyPooledDown)
	}
	return strings.Join(parts, "; ")
}
