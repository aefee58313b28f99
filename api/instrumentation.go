package api

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kubal/kubal/pool"
)

// notFound is PyBal's 404 body (instrumentation.py Resp404).
const notFound = "The desired url was not found"

// NewInstrumentation returns the read-only handler for the instrumentation listener:
// PyBal's /pools, /pools/<pool>, /pools/<pool>/<host> and /alerts, byte-compatible with
// PyBal; kubal's /v1/pools[/<pool>[/<host>]] and /v1/alerts (JSON with the "why");
// /metrics from the gatherer (404 when nil, as PyBal without prometheus_client);
// /healthz (the process serves) and /readyz (State.Ready).
func NewInstrumentation(st State, metrics prometheus.Gatherer, log *slog.Logger) http.Handler {
	h := &instrumentation{read: reader{st: st, cache: &renderCache{}}, log: log}
	if metrics != nil {
		h.metrics = promhttp.HandlerFor(metrics, promhttp.HandlerOpts{
			ErrorLog:      slogPrinter{log},
			ErrorHandling: promhttp.ContinueOnError,
		})
	}
	return h
}

type instrumentation struct {
	read    reader
	metrics http.Handler
	log     *slog.Logger
}

func (h *instrumentation) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Twisted answers 405 for a resource without render_<METHOD>.
		w.Header().Set("Allow", "GET, HEAD")
		writeBody(w, http.StatusMethodNotAllowed, "text/plain", []byte("Method Not Allowed"))
		return
	}
	switch r.URL.Path {
	case "/metrics":
		if h.metrics != nil {
			h.metrics.ServeHTTP(w, r)
			return
		}
	case "/healthz":
		writeBody(w, http.StatusOK, "text/plain", []byte("ok\n"))
		return
	case "/readyz":
		if err := h.read.st.Ready(); err != nil {
			writeBody(w, http.StatusServiceUnavailable, "text/plain", []byte("not ready: "+err.Error()+"\n"))
			return
		}
		writeBody(w, http.StatusOK, "text/plain", []byte("ready\n"))
		return
	}
	if !h.read.serve(w, r) {
		h.read.notFound(w, r)
	}
}

// reader serves the read-only endpoints; both listeners use it.
type reader struct {
	st    State
	cache *renderCache
}

// segments splits the escaped path into unescaped segments, as Twisted does. ok is
// false for an undecodable path.
func segments(r *http.Request) ([]string, bool) {
	p := strings.TrimPrefix(r.URL.EscapedPath(), "/")
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if !strings.Contains(s, "%") {
			continue
		}
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, false
		}
		segs[i] = u
	}
	return segs, true
}

// trimSlash drops one trailing empty segment: PyBal serves /pools/ like /pools.
func trimSlash(segs []string) []string {
	if len(segs) > 1 && segs[len(segs)-1] == "" {
		return segs[:len(segs)-1]
	}
	return segs
}

// serve handles a read-only GET; it returns false when the path is not one of them.
func (rd reader) serve(w http.ResponseWriter, r *http.Request) bool {
	segs, ok := segments(r)
	if !ok {
		return false
	}
	segs = trimSlash(segs)
	for _, s := range segs {
		if s == "" {
			return false
		}
	}
	switch {
	case segs[0] == "pools":
		switch len(segs) {
		case 1:
			rd.pools(w, r)
		case 2:
			return rd.pool(w, r, segs[1])
		case 3:
			return rd.server(w, r, segs[1], segs[2])
		default:
			return false
		}
		return true
	case segs[0] == "alerts" && len(segs) == 1:
		rd.alerts(w, r)
		return true
	case segs[0] == "v1" && len(segs) >= 2:
		return rd.v1(w, r, segs[1:])
	}
	return false
}

// wantJSON is PyBal's wantJson: JSON iff one raw Accept value is exactly
// "application/json" ("application/json, text/plain" gives text).
func wantJSON(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if v == "application/json" {
			return true
		}
	}
	return false
}

func (rd reader) notFound(w http.ResponseWriter, r *http.Request) {
	if wantJSON(r) {
		writeBody(w, http.StatusNotFound, "application/json", []byte(`{"error": "`+notFound+`"}`))
		return
	}
	writeBody(w, http.StatusNotFound, "text/plain", []byte(notFound))
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func (rd reader) pools(w http.ResponseWriter, r *http.Request) {
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	names := rd.st.Pools()
	if wantJSON(r) {
		b = append(b, '[')
		for i, n := range names {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPyString(b, n)
		}
		b = append(b, ']')
		writeBody(w, http.StatusOK, "application/json", b)
	} else {
		for i, n := range names {
			if i > 0 {
				b = append(b, '\n')
			}
			b = append(b, n...)
		}
		b = append(b, '\n')
		writeBody(w, http.StatusOK, "text/plain", b)
	}
	*bp = b
	bufPool.Put(bp)
}

func (rd reader) pool(w http.ResponseWriter, r *http.Request, name string) bool {
	snap, ok := rd.st.Snapshot(name)
	if !ok {
		rd.cache.forget(name)
		return false
	}
	asJSON := wantJSON(r)
	ctype := "text/plain"
	if asJSON {
		ctype = "application/json"
	}
	if body, ok := rd.cache.get(name, asJSON, snap.Servers); ok {
		writeBody(w, http.StatusOK, ctype, body)
		return true
	}
	bp := bufPool.Get().(*[]byte)
	b := (*bp)[:0]
	if asJSON {
		b = append(b, '{')
		for i := range snap.Servers {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = appendPyString(b, snap.Servers[i].Host)
			b = append(b, ": "...)
			b = appendDumpState(b, &snap.Servers[i])
		}
		b = append(b, '}')
	} else {
		// PyBal prints dict order; kubal sorts by host (Snapshot.Servers is sorted).
		for i := range snap.Servers {
			b = append(b, snap.Servers[i].Host...)
			b = append(b, ":\t"...)
			b = appendTextStatus(b, &snap.Servers[i])
			b = append(b, '\n')
		}
	}
	body := rd.cache.put(name, asJSON, snap.Servers, b)
	writeBody(w, http.StatusOK, ctype, body)
	*bp = b
	bufPool.Put(bp)
	return true
}

// renderCache keeps the last rendered /pools/<pool> body per pool and format. The
// daemon publishes immutable snapshots, so the same Servers backing array means the
// same content; the entry holds that array, so its address cannot be reused by a
// newer snapshot while cached. Under load most requests between two state changes
// are then a copy of bytes.
type renderCache struct {
	m sync.Map // cacheKey -> *rendered
}

type cacheKey struct {
	pool   string
	asJSON bool
}

type rendered struct {
	servers []pool.ServerState
	body    []byte
}

func (c *renderCache) get(name string, asJSON bool, servers []pool.ServerState) ([]byte, bool) {
	if c == nil || len(servers) == 0 {
		return nil, false
	}
	v, ok := c.m.Load(cacheKey{name, asJSON})
	if !ok {
		return nil, false
	}
	e := v.(*rendered)
	if len(e.servers) != len(servers) || &e.servers[0] != &servers[0] {
		return nil, false
	}
	return e.body, true
}

// put caches a copy of body (which the caller reuses) and returns the copy.
func (c *renderCache) put(name string, asJSON bool, servers []pool.ServerState, body []byte) []byte {
	out := append([]byte(nil), body...)
	if c != nil && len(servers) > 0 {
		c.m.Store(cacheKey{name, asJSON}, &rendered{servers: servers, body: out})
	}
	return out
}

func (c *renderCache) forget(name string) {
	if c != nil {
		c.m.Delete(cacheKey{name, false})
		c.m.Delete(cacheKey{name, true})
	}
}

func (rd reader) server(w http.ResponseWriter, r *http.Request, poolName, host string) bool {
	snap, ok := rd.st.Snapshot(poolName)
	if !ok {
		return false
	}
	sv, ok := findServer(&snap, host)
	if !ok {
		return false
	}
	if wantJSON(r) {
		writeBody(w, http.StatusOK, "application/json", appendDumpState(nil, &sv))
		return true
	}
	writeBody(w, http.StatusOK, "text/plain", append(appendTextStatus(nil, &sv), '\n'))
	return true
}

// findServer is Snapshot.Server by binary search (Servers is sorted by host), with a
// linear fallback should a snapshot ever not be sorted.
func findServer(snap *pool.Snapshot, host string) (pool.ServerState, bool) {
	ss := snap.Servers
	i := sort.Search(len(ss), func(i int) bool { return ss[i].Host >= host })
	if i < len(ss) && ss[i].Host == host {
		return ss[i], true
	}
	return snap.Server(host)
}

// Problems lists every current problem, pools in config order first, then kubal's own
// alerts (State.Alerts) as given. A pool has at most one problem, in PyBal's order of
// precedence: servers marked down but pooled (critical, PyBal's), no server pooled
// although the pool has servers (critical, kubal's: every host unresolvable, of the
// wrong family, disabled or down - PyBal said OK), too small to allow depooling
// (warning, PyBal's). A pool without servers is not a problem (as in PyBal).
func Problems(st State) []Alert {
	var out []Alert
	for _, name := range st.Pools() {
		snap, ok := st.Snapshot(name)
		if !ok {
			continue
		}
		total := float64(len(snap.Servers))
		switch {
		case len(snap.PooledDown) > 0:
			out = append(out, Alert{Level: LevelCritical, Pool: name,
				Msg: name + ": Servers " + strings.Join(snap.PooledDown, ", ") + " are marked down but pooled"})
		case len(snap.Servers) > 0 && pooledCount(&snap) == 0:
			out = append(out, Alert{Level: LevelCritical, Pool: name, Msg: name + ": no server is pooled (" + whyNonePooled(&snap) + ")"})
		case total > 1 && total < total*snap.Threshold+1:
			out = append(out, Alert{Level: LevelWarning, Pool: name, Msg: "Pool " + name + " is too small to allow depooling."})
		}
	}
	return append(out, st.Alerts()...)
}

func pooledCount(s *pool.Snapshot) int {
	n := 0
	for i := range s.Servers {
		if s.Servers[i].Pooled {
			n++
		}
	}
	return n
}

// whyNonePooled summarises a pool without pooled servers: "3 servers: 2 without an
// address, 1 disabled".
func whyNonePooled(s *pool.Snapshot) string {
	var noAddr, disabled, down int
	for i := range s.Servers {
		sv := &s.Servers[i]
		switch {
		case !sv.Enabled:
			disabled++
		case !sv.Ready:
			noAddr++
		default:
			down++
		}
	}
	parts := []string{}
	for _, p := range []struct {
		n    int
		what string
	}{{noAddr, "without an address (not resolved, or not of the VIP's family)"}, {disabled, "disabled"}, {down, "down"}} {
		if p.n > 0 {
			parts = append(parts, strconv.Itoa(p.n)+" "+p.what)
		}
	}
	noun := "servers"
	if len(s.Servers) == 1 {
		noun = "server"
	}
	return fmt.Sprintf("%d %s: %s", len(s.Servers), noun, strings.Join(parts, ", "))
}

// alertStatus computes PyBal's /alerts (instrumentation.py Alerts.render_GET) from
// Problems: the critical ones are "; "-joined and replace every warning (as in PyBal);
// warnings are concatenated like PyBal's "Pool X is too small to allow depooling. ".
func alertStatus(problems []Alert) (status, msg string) {
	var crit []string
	var warn strings.Builder
	for _, a := range problems {
		if a.Level == LevelWarning {
			warn.WriteString(a.Msg)
			if !strings.HasSuffix(a.Msg, ".") {
				warn.WriteString(".")
			}
			warn.WriteString(" ")
			continue
		}
		crit = append(crit, a.Msg) // an unknown level is treated as critical
	}
	switch {
	case len(crit) > 0:
		return LevelCritical, strings.Join(crit, "; ")
	case warn.Len() > 0:
		return LevelWarning, warn.String()
	}
	return "ok", "All pools are healthy"
}

func (rd reader) alerts(w http.ResponseWriter, r *http.Request) {
	status, msg := alertStatus(Problems(rd.st))
	if wantJSON(r) {
		b := append([]byte(`{"status": `), appendPyString(nil, status)...)
		b = append(b, `, "msg": `...)
		b = appendPyString(b, msg)
		b = append(b, '}')
		writeBody(w, http.StatusOK, "application/json", b)
		return
	}
	// PyBal: "%s - %s" % (status.upper(), msg), no trailing newline.
	writeBody(w, http.StatusOK, "text/plain", []byte(strings.ToUpper(status)+" - "+msg))
}

// --- kubal's /v1 read model (not PyBal; consumers of PyBal's paths never see it) ---

// PoolStatus is /v1/pools/<pool>.
type PoolStatus struct {
	Name           string         `json:"name"`
	Threshold      float64        `json:"depool_threshold"`
	CanDepool      bool           `json:"can_depool"`
	CouldNotDepool uint64         `json:"could_not_depool"`
	PooledDown     []string       `json:"pooled_down"`
	Servers        []ServerStatus `json:"servers"`
}

// ServerStatus is one server in the /v1 model and in admin responses. Status is
// PyBal's textStatus; Why says why it is not enabled, up or pooled.
type ServerStatus struct {
	Host     string                   `json:"host"`
	Addr     string                   `json:"addr,omitempty"`
	Weight   int                      `json:"weight"`
	Enabled  bool                     `json:"enabled"`
	Ready    bool                     `json:"ready"`
	Up       bool                     `json:"up"`
	Pooled   bool                     `json:"pooled"`
	Status   string                   `json:"status"`
	Why      string                   `json:"why,omitempty"`
	Override string                   `json:"override,omitempty"` // the admin override in force
	Monitors map[string]MonitorStatus `json:"monitors,omitempty"`
}

// MonitorStatus is one monitor's last verdict.
type MonitorStatus struct {
	Up     bool   `json:"up"`
	Reason string `json:"reason,omitempty"`
}

// PoolsStatus is /v1/pools: every pool in config order.
type PoolsStatus struct {
	Pools []PoolStatus `json:"pools"`
}

// AlertsStatus is /v1/alerts: PyBal's one-line summary (what /alerts says) plus every
// current problem (Problems), none hidden by a more severe one.
type AlertsStatus struct {
	Status string  `json:"status"`
	Msg    string  `json:"msg"`
	Alerts []Alert `json:"alerts"`
}

// NewServerStatus converts a coordinator server state to the /v1 model.
func NewServerStatus(s pool.ServerState) ServerStatus {
	out := ServerStatus{
		Host: s.Host, Weight: s.Weight, Enabled: s.Enabled, Ready: s.Ready, Up: s.Up,
		Pooled: s.Pooled, Status: s.TextStatus(), Why: s.Why, Override: s.Override,
	}
	if s.Addr.IsValid() {
		out.Addr = s.Addr.String()
	}
	if len(s.Monitors) > 0 {
		out.Monitors = make(map[string]MonitorStatus, len(s.Monitors))
		for k, m := range s.Monitors {
			out.Monitors[k] = MonitorStatus(m)
		}
	}
	return out
}

// NewPoolStatus converts a coordinator snapshot to the /v1 model.
func NewPoolStatus(s pool.Snapshot) PoolStatus {
	out := PoolStatus{
		Name: s.Name, Threshold: s.Threshold, CanDepool: s.CanDepool,
		CouldNotDepool: s.CouldNotDepool, PooledDown: append([]string{}, s.PooledDown...),
		Servers: make([]ServerStatus, len(s.Servers)),
	}
	for i, sv := range s.Servers {
		out.Servers[i] = NewServerStatus(sv)
	}
	return out
}

func (rd reader) v1(w http.ResponseWriter, r *http.Request, segs []string) bool {
	switch {
	case segs[0] == "alerts" && len(segs) == 1:
		alerts := Problems(rd.st)
		status, msg := alertStatus(alerts)
		if alerts == nil {
			alerts = []Alert{}
		}
		writeJSON(w, http.StatusOK, AlertsStatus{Status: status, Msg: msg, Alerts: alerts})
		return true
	case segs[0] != "pools":
		return false
	}
	switch len(segs) {
	case 1:
		out := PoolsStatus{Pools: []PoolStatus{}}
		for _, name := range rd.st.Pools() {
			if snap, ok := rd.st.Snapshot(name); ok {
				ps := NewPoolStatus(snap)
				ps.Name = name
				out.Pools = append(out.Pools, ps)
			}
		}
		writeJSON(w, http.StatusOK, out)
	case 2:
		snap, ok := rd.st.Snapshot(segs[1])
		if !ok {
			return false
		}
		ps := NewPoolStatus(snap)
		ps.Name = segs[1]
		writeJSON(w, http.StatusOK, ps)
	case 3:
		snap, ok := rd.st.Snapshot(segs[1])
		if !ok {
			return false
		}
		sv, ok := snap.Server(segs[2])
		if !ok {
			return false
		}
		writeJSON(w, http.StatusOK, NewServerStatus(sv))
	default:
		return false
	}
	return true
}

// alertJSON is an Alert on the wire.
type alertJSON struct {
	Level string `json:"level"`
	Pool  string `json:"pool,omitempty"`
	Msg   string `json:"msg"`
}

// MarshalJSON writes an Alert as {"level": ..., "pool": ..., "msg": ...}.
func (a Alert) MarshalJSON() ([]byte, error) {
	return json.Marshal(alertJSON(a))
}

// UnmarshalJSON reads what MarshalJSON writes.
func (a *Alert) UnmarshalJSON(b []byte) error {
	var v alertJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*a = Alert(v)
	return nil
}

func writeBody(w http.ResponseWriter, code int, ctype string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only our own types are marshalled; they always encode
		b = []byte(`{"error":"internal: cannot encode response"}`)
		code = http.StatusInternalServerError
	}
	writeBody(w, code, "application/json", append(b, '\n'))
}

// slogPrinter adapts slog to promhttp's ErrorLog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	if p.log != nil {
		p.log.Error("serving /metrics", "error", strings.TrimSpace(fmt.Sprintln(v...)))
	}
}
